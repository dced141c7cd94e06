"""Qwen2.5-VL backbone: VisualFeatures come out in raster order, whatever the window order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import noise_image
from PIL import Image
from torch import nn

import padt_core


@pytest.fixture(scope="module")
def identity_tower_model():
    model = padt_core.build(recipe="tiny_qwen").eval()
    # With no blocks the pre-merger states are exactly the patch embeddings, in the tower's order.
    model.backbone.hf_model.model.visual.blocks = nn.ModuleList()
    return model


def patch_colour_image(rows: int, cols: int, patch: int = 14, seed: int = 0) -> np.ndarray:
    """An image whose every 14-px patch has its own flat colour."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (rows, cols, 3), dtype=np.uint8)
    return colours.repeat(patch, 0).repeat(patch, 1)


@pytest.mark.parametrize(("rows", "cols"), [(10, 16), (18, 14), (4, 24)])
def test_fine_features_are_raster_ordered(identity_tower_model, rows, cols):
    model = identity_tower_model
    pixels = patch_colour_image(rows, cols)
    batch = model.prepare([Image.fromarray(pixels)], ["describe"])
    (features,) = model.encode(batch).features
    assert features.fine_grid == (rows, cols)
    assert features.grid == (rows // 2, cols // 2)
    assert features.image_size == (rows * 14, cols * 14)

    # Direct patch embedding of the image itself, patch (r, c) at raster row r * cols + c.
    proc = model.backbone.processor.image_processor
    mean = torch.tensor(proc.image_mean).view(3, 1, 1)
    std = torch.tensor(proc.image_std).view(3, 1, 1)
    image = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    patches = image.unfold(1, 14, 14).unfold(2, 14, 14)  # [3, rows, cols, 14, 14]
    patches = patches.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, 1, 14, 14).expand(-1, -1, 2, -1, -1)
    embed = model.backbone.hf_model.model.visual.patch_embed
    with torch.no_grad():
        expected = embed(patches.reshape(rows * cols, -1))
    torch.testing.assert_close(features.fine, expected, atol=1e-4, rtol=1e-4)


def test_merged_tokens_match_the_llm_image_tokens(tiny_model):
    """Merged tokens are the ones the stock model scatters into the prompt (raster order)."""
    batch = tiny_model.prepare([noise_image(140, 252)], ["hi"])
    (features,) = tiny_model.encode(batch).features
    hf = tiny_model.backbone.hf_model
    with torch.no_grad():
        stock = hf.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output[0]
    torch.testing.assert_close(features.tokens, stock)
    assert features.grid == (5, 9)


def test_tiny_and_mixed_images(tiny_model):
    batch = tiny_model.prepare([noise_image(12, 40), noise_image(300, 100), None], ["a", "b", "c"])
    encoded = tiny_model.encode(batch)
    assert encoded.image_index == [0, 1, -1]
    (
        small,
        tall,
    ) = encoded.features
    assert min(small.image_size) >= 28  # upscaled, not a crash
    assert tall.grid[0] > tall.grid[1]
    assert encoded.bank.valid.sum(1).tolist() == [small.num_cells, tall.num_cells, 0]

"""Where things land: layout, 2-D rotary, and masks hot exactly where the features are hot."""

from __future__ import annotations

import padt_plugins.decoders as decoders
import pytest
import torch
from padt_plugins.decoders.layers import apply_rotary, vision_rotary

from padt_core.decoder import DecoderInputs, PaDTDecoder
from padt_core.features import VisualFeatures
from padt_core.layout import RasterLayout
from padt_core.plugins import list_plugins, register_plugin
from padt_core.recipe import DecoderConfig

D = 32  # LLM, vision and decoder width alike: fine features enter the trunk unprojected


@pytest.fixture(scope="module", autouse=True)
def _decoder_plugins() -> None:
    if "padt" not in list_plugins("trunks")["trunks"]:
        register_plugin(decoders)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- layout ---------------------------------------------------------------------------------------------


def test_raster_layout_maps_fine_rows_to_cells_and_positions():
    layout = RasterLayout()
    assert layout.fine_to_cell((2, 3), (4, 6)).tolist() == [
        0, 0, 1, 1, 2, 2,
        0, 0, 1, 1, 2, 2,
        3, 3, 4, 4, 5, 5,
        3, 3, 4, 4, 5, 5,
    ]  # fmt: skip
    assert layout.cell_positions((2, 3), 2).tolist() == [[0, 0], [0, 2], [0, 4], [2, 0], [2, 2], [2, 4]]
    assert layout.fine_positions((2, 3))[4].tolist() == [1, 1]
    with pytest.raises(ValueError, match="not an integer, isotropic refinement"):
        layout.fine_to_cell((2, 3), (4, 9))


def test_place_patches_raster_per_object_grid():
    layout = RasterLayout()
    values = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).view(2, 6, 2, 2)  # 6 rows, 2x2 blocks
    canvas = layout.place_patches(values, torch.tensor([[2, 3], [3, 1]]))
    assert tuple(canvas.shape) == (2, 6, 6)
    # object 0, grid 2x3: row k = 4 (second grid row, middle column) fills canvas rows 2-3, cols 2-3
    assert canvas[0, 2:4, 2:4].tolist() == values[0, 4].tolist()
    assert canvas[0, 4:].abs().sum() == 0  # below its 2 grid rows
    # object 1, grid 3x1: rows stack vertically, columns beyond 1 are empty
    assert canvas[1, 4:6, 0:2].tolist() == values[1, 2].tolist()
    assert canvas[1, :, 2:].abs().sum() == 0


def test_cell_centres_normalised():
    centres = RasterLayout().cell_centres(torch.tensor([[2, 4]]), 8)
    assert centres[0, 0].tolist() == [0.125, 0.25] and centres[0, 7].tolist() == [0.875, 0.75]


# --- rotary ------------------------------------------------------------------------------------------------


def test_rotary_matches_qwen2_5_vl_vision_tower():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VLVisionRotaryEmbedding,
        apply_rotary_pos_emb_vision,
    )

    rotary = Qwen2_5_VLVisionRotaryEmbedding(Qwen2_5_VLVisionConfig(hidden_size=1280, num_heads=16))
    pos = RasterLayout().fine_positions((6, 18))
    cos_ref, sin_ref = rotary(torch.zeros(1), pos)
    cos, sin = vision_rotary(pos, head_dim=80)
    assert tuple(cos.shape) == (108, 80)  # 20 row + 20 column frequencies, duplicated
    torch.testing.assert_close(cos, cos_ref)
    torch.testing.assert_close(sin, sin_ref)
    x = torch.randn(108, 16, 80)
    expected, _ = apply_rotary_pos_emb_vision(x, x, cos_ref, sin_ref)
    torch.testing.assert_close(apply_rotary(x.transpose(0, 1), cos, sin).transpose(0, 1), expected)


def test_rotary_scores_depend_on_relative_position_only():
    q, k = torch.randn(8), torch.randn(8)
    pos = torch.tensor([[3, 5], [7, 2], [4, 6], [8, 3]])  # pairs 0-1 and 2-3 have the same offset
    cos, sin = vision_rotary(pos, head_dim=8)
    rq, rk = apply_rotary(q.expand(4, 8), cos, sin), apply_rotary(k.expand(4, 8), cos, sin)
    torch.testing.assert_close(rq[0] @ rk[1], rq[2] @ rk[3])


# --- masks land on the hot patch ---------------------------------------------------------------------------


def copy_decoder(memory: str) -> PaDTDecoder:
    """A decoder whose mask path copies the memory: mask logit of a patch > 0 iff its feature is on."""
    torch.manual_seed(0)
    config = DecoderConfig(
        trunk={"name": "padt", "hidden_size": D, "intermediate_size": 64, "num_heads": 4, "memory": memory},
        heads=["box", "mask"],
    )
    decoder = PaDTDecoder.from_config(config, llm_hidden_size=D, vision_hidden_size=D).eval()
    trunk, mask = decoder.trunk, decoder.heads["mask"]
    eye = torch.eye(D)
    with torch.no_grad():
        for linear in (trunk.input_projection[1], trunk.input_projection[3], mask.upscale1):
            linear.weight.copy_(eye)  # prototypes enter the memory as GELU(RMSNorm(p))
            linear.bias.zero_()
        mask.upscale2.weight.copy_(torch.eye(D // 4))
        mask.upscale2.bias.zero_()
        for block in (trunk.low_res_transformer, trunk.high_res_transformer1, trunk.high_res_transformer2):
            block.cross_attn_image_to_query.proj.weight.zero_()  # no object writes into its memory
            block.cross_attn_image_to_query.proj.bias.zero_()
        mask.object_mlp[-1].weight.zero_()
        mask.object_mlp[-1].bias.copy_(torch.eye(D // 16)[0])  # v = e_0: reads channel 0 of each sub-cell
    return decoder


def image(grid: tuple[int, int], hot_cell: tuple[int, int] | None, hot_patch: tuple[int, int] | None):
    """A 28-px-cell image (fine factor 2) whose prototype at ``hot_cell`` or fine feature at ``hot_patch`` is on."""
    h, w = grid
    protos, fine = torch.zeros(h * w, D), torch.zeros(4 * h * w, D)
    if hot_cell is not None:
        protos[hot_cell[0] * w + hot_cell[1]] = 1
    if hot_patch is not None:
        fine[hot_patch[0] * 2 * w + hot_patch[1]] = 1
    feats = VisualFeatures(protos, (h, w), 28, (28 * h, 28 * w), fine=fine, fine_grid=(2 * h, 2 * w))
    return feats, protos


def batch(images) -> DecoderInputs:
    n = len(images)
    return DecoderInputs(
        features=[f for f, _ in images],
        prototypes=[p for _, p in images],
        image_index=torch.arange(n),
        vrt_states=torch.randn(2 * n, D),
        vrt_cells=torch.zeros(2 * n, dtype=torch.long),
        counts=torch.full((n,), 2),
        original_sizes=[f.image_size for f, _ in images],  # = resized size: pixels map 1:1 to cells
    )


# fine grids 10x16 and 18x14 are wider than the 8-patch Qwen2.5-VL window; hot spots in corners and inside
HOT_PATCHES = [((5, 8), (0, 15)), ((5, 8), (9, 0)), ((5, 8), (3, 11)), ((9, 7), (17, 13)), ((9, 7), (10, 2))]
HOT_CELLS = [((5, 8), (0, 7)), ((5, 8), (4, 0)), ((9, 7), (8, 6)), ((9, 7), (3, 5))]


@pytest.mark.parametrize("memory", ["factored", "dense"])
def test_hot_fine_patch_gives_mask_at_that_patch(memory):
    decoder = copy_decoder(memory)
    inputs = batch([image(grid, None, patch) for grid, patch in HOT_PATCHES])  # one batch, mixed sizes
    with torch.no_grad():
        out = decoder(inputs)
    results = decoder.postprocess(out, inputs)
    for o, (_, (r, c)) in enumerate(HOT_PATCHES):
        hot = out["mask"][o] > 0
        assert hot.nonzero().min(0).values.tolist() == [4 * r, 4 * c]  # exactly the 4x4 block of patch (r, c)
        assert hot.nonzero().max(0).values.tolist() == [4 * r + 3, 4 * c + 3] and int(hot.sum()) == 16
        _assert_mask_on_pixels(results[o]["mask"], 14 * r, 14 * c, 14)


@pytest.mark.parametrize("memory", ["factored", "dense"])
def test_hot_vrt_cell_gives_mask_at_that_cell(memory):
    decoder = copy_decoder(memory)
    inputs = batch([image(grid, cell, None) for grid, cell in HOT_CELLS])
    with torch.no_grad():
        out = decoder(inputs)
    results = decoder.postprocess(out, inputs)
    for o, (_, (r, c)) in enumerate(HOT_CELLS):
        hot = out["mask"][o] > 0
        assert hot.nonzero().min(0).values.tolist() == [8 * r, 8 * c] and int(hot.sum()) == 64
        _assert_mask_on_pixels(results[o]["mask"], 28 * r, 28 * c, 28)


def _assert_mask_on_pixels(mask, top: int, left: int, size: int) -> None:
    """The mask covers the ``size``-px square at (top, left) and nothing beyond a 2-px resize blur."""
    assert mask[top + 2 : top + size - 2, left + 2 : left + size - 2].all()
    ys, xs = mask.nonzero()
    assert ys.min() >= top - 2 and ys.max() < top + size + 2
    assert xs.min() >= left - 2 and xs.max() < left + size + 2

"""Test helpers shared by several test files."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import padt_core


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def sharpen(model: padt_core.PaDTModel, seed: int = 0) -> None:
    """Give a random model non-zero prototypes and larger weights, so it emits VRTs and logits differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.projection.norm.weight.copy_(torch.randn(model.projection.norm.weight.shape, generator=gen))
        model.projection.norm.bias.copy_(torch.randn(model.projection.norm.bias.shape, generator=gen))
        for p in model.backbone.hf_model.parameters():
            p.mul_(3)

"""Shared fixtures: the tiny random Qwen2.5-VL model."""

from __future__ import annotations

import pytest
import torch
from helpers import sharpen

import padt_core


@pytest.fixture(scope="session")
def tiny_model() -> padt_core.PaDTModel:
    torch.manual_seed(0)
    model = padt_core.build(recipe="tiny_qwen").eval()
    sharpen(model)
    return model

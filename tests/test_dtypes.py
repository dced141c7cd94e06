"""The one dtype table: names to torch dtypes, a miss names the choices, recipes and flags use it."""

from __future__ import annotations

import pytest
import torch

from padt_core.dtypes import DTYPES, torch_dtype
from padt_core.recipe import RecipeError, load_recipe


def test_names_map_to_torch_dtypes_and_a_miss_lists_them():
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    assert list(DTYPES) == ["float32", "bfloat16", "float16"]
    with pytest.raises(ValueError, match="unknown dtype 'bf16'; expected one of float32, bfloat16, float16"):
        torch_dtype("bf16")


def test_backbone_dtype_field_is_the_table():
    assert load_recipe("tiny_qwen", ["backbone.dtype=bfloat16"]).backbone.dtype == "bfloat16"
    with pytest.raises(RecipeError, match=r"backbone: invalid options .*dtype"):
        load_recipe("tiny_qwen", ["backbone.dtype=float64"])

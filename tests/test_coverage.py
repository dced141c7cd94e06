"""The foreground-cell rule comes from the backbone (one pixel row of its cell); the recipe overrides it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from padt_core.backbone import Backbone
from padt_core.data.sample import ObjectAnn, object_cells
from padt_core.model import PaDTModel
from padt_core.recipe import load_recipe
from padt_core.rle import encode
from padt_core.train.collator import PaDTCollator


def test_qwen_default_is_one_28th_and_the_recipe_overrides_it(tiny_model):
    assert tiny_model.backbone.cell_size == 28
    assert tiny_model.backbone.default_coverage == pytest.approx(1 / 28)  # released checkpoints: unchanged
    assert tiny_model.recipe.data.coverage is None and tiny_model.coverage == pytest.approx(1 / 28)
    assert PaDTCollator(tiny_model).coverage == pytest.approx(1 / 28)
    assert PaDTCollator(tiny_model, coverage=0.25).coverage == 0.25
    overridden = SimpleNamespace(recipe=load_recipe("tiny_qwen", ["data.coverage=0.5"]), backbone=tiny_model.backbone)
    assert PaDTModel.coverage.fget(overridden) == 0.5


def test_the_rule_is_one_pixel_row_of_the_backbones_cell():
    """A 32-px cell: a full 32-px row of it is foreground, 31 px are not (at 28 px cells 28 px would be)."""
    coverage = Backbone.default_coverage.fget(SimpleNamespace(cell_size=32))
    assert coverage == pytest.approx(1 / 32)
    image = np.zeros((64, 64), dtype=bool)
    image[40, 32:64] = True  # one row of cell (1, 1) of a 2 x 2 grid

    def cells(mask: np.ndarray) -> list[int]:
        obj = ObjectAnn(label="line", box=(0.5, 0.6, 1.0, 0.65), mask=encode(mask))
        return object_cells(obj, (2, 2), (64, 64), coverage)

    assert cells(image) == [3]
    image[40, 32] = False
    assert cells(image) == []


def test_relative_coverage_drops_cells_a_small_object_barely_touches(tiny_model):
    """A box over all of cell 0 and a fifth of cell 1: one pixel row keeps both, relative 0.5 only cell 0."""
    obj = ObjectAnn(label="box", box=(0.0, 0.0, 0.6, 0.5))
    assert object_cells(obj, (2, 2), (64, 64), 1 / 32) == [0, 1]
    assert object_cells(obj, (2, 2), (64, 64), 1 / 32, relative=0.5) == [0]
    assert object_cells(obj, (2, 2), (64, 64), 1 / 32, relative=0.2) == [0, 1]  # inclusive: 0.2 of cell 0's 1.0
    with pytest.raises(ValueError, match=r"relative coverage must be in \[0, 1\], got 1.5"):
        object_cells(obj, (2, 2), (64, 64), 1 / 32, relative=1.5)
    assert PaDTCollator(tiny_model).relative_coverage == 0.0
    recipe = load_recipe("tiny_qwen", ["data.relative_coverage=0.5"])
    model = SimpleNamespace(**{k: getattr(tiny_model, k) for k in ("backbone", "codec", "answer_format", "prepare")})
    model.recipe, model.coverage = recipe, 1 / 28
    assert PaDTCollator(model).relative_coverage == 0.5
    assert PaDTCollator(model, relative_coverage=0.25).relative_coverage == 0.25

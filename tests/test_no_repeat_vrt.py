"""No-repeat VRT logits processor: unit behaviour and inside generate (greedy, sampling, beams)."""

from __future__ import annotations

import pytest
import torch
from helpers import noise_image

import padt_core
from padt_core.plugins import get_plugin

V = 10


def test_forbids_cells_of_the_current_run_only():
    proc = get_plugin("logits_processors", "no_repeat_vrt")(V)
    ids = torch.tensor([[1, V + 2, 3, V + 4, V + 6], [V + 1, V + 1, 5, 6, 7]])
    scores = torch.zeros(2, V + 8)
    out = proc(ids, scores)
    assert torch.isinf(out[0, [V + 4, V + 6]]).all()
    assert torch.isfinite(out[0, [V + 2, V + 0, 3]]).all()  # an earlier run's cell is allowed again
    assert torch.isfinite(out[1]).all()  # no run in progress
    capped = get_plugin("logits_processors", "no_repeat_vrt")(V, max_run=2)(ids, scores)
    assert torch.isinf(capped[0, V:]).all() and torch.isfinite(capped[0, :V]).all()


@pytest.mark.parametrize("kwargs", [{}, {"do_sample": True, "top_k": 4}, {"num_beams": 2}])
def test_generate_has_no_repeats_within_runs(tiny_model, kwargs):
    recipe = tiny_model.recipe.model_copy(deep=True)
    model = padt_core.PaDTModel(recipe, tiny_model.backbone)
    model.projection = tiny_model.projection
    model.recipe = padt_core.load_recipe(recipe, {"generation.logits_processors": [{"name": "no_repeat_vrt"}]})
    batch = model.prepare([noise_image(140, 252, 1), noise_image(90, 60, 2)], ["find the red circle", "hi"])
    plain = tiny_model.generate(batch, max_new_tokens=8)
    assert any(len(set(r.tolist())) < len(r) for r in plain), "without the processor the sharpened model repeats"
    out = model.generate(batch, max_new_tokens=8, **kwargs)
    vocab = model.backbone.vocab_rows
    for row in out.tolist():
        run: list[int] = []
        for token in [*row, 0]:
            if token >= vocab:
                assert token not in run, f"VRT {token - vocab} repeated within a run: {row}"
                run.append(token)
            else:
                run = []

"""``train.init_from``: a run starts from a saved model's weights; new tables are listed, misfits refused.

Tiny ``tiny_qwen_shapes`` models (random tiny Qwen2.5-VL + the PaDT decoder), single-threaded; the
training runs take one or two steps on a few generated 112-px shapes images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback, set_seed

from padt_core.model import PaDTModel
from padt_core.recipe import load_recipe
from padt_core.train.run import init_weights, train
from padt_core.weights import WeightsError

RECIPE = "tiny_qwen_shapes"

pytestmark = pytest.mark.usefixtures("one_thread")


def saved_model(directory: Path, seed: int, overrides: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Save a freshly built tiny model (``seed`` sets its random weights) to ``directory``; its state."""
    set_seed(seed)
    model = PaDTModel.from_recipe(load_recipe(RECIPE, overrides))
    model.save_pretrained(directory)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_run(data: Path, **train_settings: Any) -> dict[str, Any]:
    """Overrides for a tiny run: 4 generated 112-px REC images, batch 2, a loss log every step."""
    section = {"name": "shapes", "root": str(data), "split": "train", "tasks": ["rec"]}
    section.update(n_train=4, n_val=2, image_size=112)
    settings = {"batch_size": 2, "prototype_warmup_steps": 0, "logging_steps": 1, "save_steps": 100}
    settings.update(train_settings)
    return {"data.train": [section], "data.val": [], **{f"train.{k}": v for k, v in settings.items()}}


class FirstState(TrainerCallback):
    """Keeps the model's weights as training begins (after init_from, before the first step)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_run_starts_from_the_saved_weights(tmp_path):
    source = saved_model(tmp_path / "source", seed=1)
    first = FirstState()
    summary = train(
        RECIPE,
        tiny_run(tmp_path / "data", max_steps=1, seed=7),
        output_dir=tmp_path / "run",
        init_from=tmp_path / "source",
        callbacks=[first],
    )
    assert summary["init_from"] == {"dir": str(tmp_path / "source"), "new": []}
    assert first.state.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(first.state[key], value), key
    # without init_from the same recipe and seed start elsewhere (the check above can fail)
    fresh = FirstState()
    train(RECIPE, tiny_run(tmp_path / "data", max_steps=1, seed=7), output_dir=tmp_path / "fresh", callbacks=[fresh])
    assert not all(torch.equal(fresh.state[k], v) for k, v in source.items())


def test_a_table_the_recipe_adds_is_reported_new_and_keeps_its_initialisation(tmp_path):
    source = saved_model(tmp_path / "source", seed=1)
    set_seed(3)
    model = PaDTModel.from_recipe(load_recipe(RECIPE, {"vrt.max_images": 2}))
    built = model.state_dict()["projection.image_embed"].clone()
    report = init_weights(model, tmp_path / "source")
    assert report == {"dir": str(tmp_path / "source"), "new": ["projection.image_embed"]}
    state = model.state_dict()
    assert torch.equal(state["projection.image_embed"], built)
    for key, value in source.items():
        assert torch.equal(state[key], value), key


def test_misfits_are_one_error_naming_the_directory_and_nothing_is_loaded(tmp_path):
    saved_model(tmp_path / "rank8", seed=1, overrides={"vrt.rank": 8})
    model = PaDTModel.from_recipe(load_recipe(RECIPE))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        init_weights(model, tmp_path / "rank8")
    text = str(err.value)
    assert text.startswith(f"train.init_from={tmp_path / 'rank8'}: ")
    assert "tensors do not fit (shape)" in text
    assert "projection.up.weight [256, 8] in the file, [256, 16] in the model" in text  # tiny_qwen: rank 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    saved_model(tmp_path / "two_images", seed=1, overrides={"vrt.max_images": 2})
    with pytest.raises(WeightsError, match=r"1 file tensors are not in the model: projection\.image_embed"):
        init_weights(model, tmp_path / "two_images")
    with pytest.raises(FileNotFoundError, match=r"train\.init_from: .*nowhere is not a padt model directory"):
        init_weights(model, tmp_path / "nowhere")


def test_resume_ignores_init_from(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    train(RECIPE, tiny_run(data, max_steps=1, save_steps=1), output_dir=run)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere is not a padt model directory"):
        train(RECIPE, tiny_run(data, max_steps=1), output_dir=tmp_path / "fresh", init_from=missing)
    # a resumed run restores its checkpoint: the (here missing) init_from directory is not read
    summary = train(RECIPE, tiny_run(data, max_steps=2, save_steps=1), output_dir=run, resume=True, init_from=missing)
    assert summary["global_step"] == 2 and "init_from" not in summary
    assert summary["resumed_from"].endswith("checkpoint-1")

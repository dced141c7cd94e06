"""Corrupt or mismatched weights: one ``WeightsError`` line naming the file and what does not fit.

A saved model's ``model.safetensors`` empty, cut short, overwritten with garbage, or a ``recipe.yaml``
edited so its widths no longer fit the weights: ``padt_core.load`` raises ``WeightsError`` (a
``ValueError``), and the CLI prints it as one ``padt: error:`` line with exit status 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import noise_image
from safetensors.torch import load_file, save_file

import padt_core
from padt_core.cli import main
from padt_core.weights import WeightsError, load_weights

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = "model.safetensors"
DROPPED = "backbone.hf_model.model.visual.blocks.0."  # one vision block: more tensors than a message lists


@pytest.fixture(scope="module")
def saved(tiny_models, tmp_path_factory) -> Path:
    return tiny_models("tiny_qwen").save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00not a safetensors file" * 100)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        pytest.param(lambda p: p.write_bytes(b""), "is empty (0 bytes)", id="empty"),
        pytest.param(_truncate, "not a complete safetensors file", id="truncated"),
        pytest.param(_garbage, "not a complete safetensors file", id="garbage"),
    ],
)
def test_a_damaged_weights_file_is_one_clear_error(saved, tmp_path, damage, expected):
    model_dir = _copy(saved, tmp_path)
    damage(model_dir / WEIGHTS)
    with pytest.raises(WeightsError) as exc:
        padt_core.load(model_dir)
    message = str(exc.value)
    assert str(model_dir / WEIGHTS) in message and expected in message
    assert "\n" not in message and len(message) < 400


def test_a_recipe_whose_widths_no_longer_fit_names_the_tensors(saved, tmp_path):
    model_dir = _copy(saved, tmp_path)
    recipe = yaml.safe_load((model_dir / "recipe.yaml").read_text())
    recipe["vrt"]["rank"] = recipe["vrt"]["rank"] * 2  # the projection's width, edited by hand
    (model_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(WeightsError) as exc:
        padt_core.load(model_dir)
    message = str(exc.value)
    assert str(model_dir / WEIGHTS) in message and str(model_dir / "recipe.yaml") in message
    assert "2 tensors do not fit (shape): projection.down.weight" in message
    assert "\n" not in message


def test_missing_and_extra_tensors_are_counted_and_listed(saved, tmp_path):
    model_dir = _copy(saved, tmp_path)
    tensors = load_file(model_dir / WEIGHTS)
    dropped = sorted(k for k in tensors if k.startswith(DROPPED))
    kept = {k: v for k, v in tensors.items() if not k.startswith(DROPPED)}
    save_file({**kept, "extra.weight": torch.zeros(2)}, str(model_dir / WEIGHTS))
    with pytest.raises(WeightsError) as exc:
        padt_core.load(model_dir)
    message = str(exc.value)
    assert f"{len(dropped)} model tensors are not in the file: {DROPPED}" in message
    assert f"and {len(dropped) - 5} more" in message  # long lists are cut, not dumped
    assert "1 file tensors are not in the model: extra.weight" in message


def test_tied_copies_must_agree(tiny_models, tmp_path):
    model = tiny_models("tiny_qwen")
    tied = next(keys for keys in _tied(model) if len(keys) > 1)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    file = tmp_path / WEIGHTS
    save_file(state, str(file))  # every name of the tied group stored, equal: fine
    load_weights(model, file)
    state[tied[1]] = state[tied[1]] + 1
    save_file(state, str(file))
    with pytest.raises(WeightsError, match=f"{tied[1]} differs from {tied[0]}, but the model ties them"):
        load_weights(model, file)


def _tied(model) -> list[list[str]]:
    from padt_core.weights import tied_groups

    return list(tied_groups(model).values())


def test_cli_prints_one_line_and_exits_2(saved, tmp_path, capsys):
    model_dir = _copy(saved, tmp_path)
    _truncate(model_dir / WEIGHTS)
    image = tmp_path / "x.png"
    noise_image(56, 56).save(image)
    assert main(["predict", str(model_dir), "--image", str(image), "--prompt", "Find it."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padt: error: ") and str(model_dir / WEIGHTS) in err[0]

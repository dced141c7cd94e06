"""The real (hub-backed) recipes: they validate offline, and building them offline fails clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import noise_image

import padt_core
from padt_core.backbone import HubUnreachableError
from padt_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
REAL = {
    "qwen_padt_pro": ("Qwen/Qwen2.5-VL-3B-Instruct", 4),
    "qwen_padt_pro_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", 6),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recipe_validates(name):
    model_id, epochs = REAL[name]
    recipe = padt_core.load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.name == name
    assert recipe.backbone.pretrained == model_id
    assert (recipe.backbone.dtype, recipe.backbone.attn_implementation) == ("bfloat16", "sdpa")
    assert (recipe.backbone.min_pixels, recipe.backbone.max_pixels) == (3136, 12845056)
    assert (recipe.vrt.projection, recipe.vrt.rank) == (True, 64)
    assert (recipe.generation.max_new_tokens, recipe.generation.do_sample) == (1024, False)
    train = recipe.train
    assert train.epochs == epochs
    assert (train.lr, train.batch_size, train.precision, train.gradient_checkpointing) == (2e-5, 16, "bf16", True)
    assert (train.max_grad_norm, train.seed, train.save_steps, train.logging_steps) == (1.0, 42, 100, 1)
    assert (train.vrt_per_object, train.prototype_warmup_steps, train.token_loss) == (5, 300, "per_sample")


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recipe_validates_from_the_cli(name, capsys):
    assert main(["recipe", "validate", name]) == 0
    assert capsys.readouterr().out.strip() == f"OK {name}"


def test_building_offline_raises_the_hub_error(monkeypatch):
    """No hub here: the error says so and how to use a local copy (offline mode makes it fail fast)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    with pytest.raises(HubUnreachableError) as exc:
        padt_core.build(recipe="qwen_padt_pro")
    message = str(exc.value)
    assert "hub" in message
    assert "local" in message
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in message


def test_cli_reports_the_hub_error_in_one_line(tmp_path):
    """Through the CLI (a fresh process, so HF_HUB_OFFLINE is read at import): exit 2, no traceback."""
    image = tmp_path / "x.png"
    noise_image(28, 28).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "padt_core.cli", "predict", "qwen_padt_pro_7b", "--image", str(image), "--prompt", "x"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in proc.stderr
    assert "local" in proc.stderr

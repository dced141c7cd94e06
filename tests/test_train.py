"""Training on the tiny recipe: exact resume, resume/overwrite refusals, gradients of the full PaDT step.

Every run trains ``tiny_qwen_shapes`` (a random tiny Qwen2.5-VL + the PaDT decoder) on a few generated
112-px shapes images, single-threaded, for a handful of steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from padt_core.data.sample import Sample
from padt_core.model import PaDTModel
from padt_core.recipe import load_recipe
from padt_core.train.collator import PaDTCollator
from padt_core.train.dataset import SampleDataset
from padt_core.train.run import load_readers, train
from padt_core.train.step import compute_losses

RECIPE = "tiny_qwen_shapes"
ALL_TASKS = ["rec", "res", "ovd", "ric"]
LOSS_TERMS = ("token", "box_giou", "box_l1", "score", "mask_dice", "mask_focal")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Folder for generated shapes data (one sub-folder per parameter set, generated on first use)."""
    return tmp_path_factory.mktemp("shapes")


def tiny(data: Path, tasks: list[str] = ALL_TASKS, n_train: int = 8, **train: Any) -> dict[str, Any]:
    """Overrides for a tiny run: generated 112-px shapes, batch 2, warm-up 2, a loss log every step."""
    root = data / f"{'-'.join(tasks)}-{n_train}"
    section = {"name": "shapes", "root": str(root), "split": "train", "tasks": tasks}
    section.update(n_train=n_train, n_val=2, image_size=112)
    settings = {"batch_size": 2, "prototype_warmup_steps": 2, "logging_steps": 1, "save_steps": 100, **train}
    return {"data.train": [section], "data.val": [], **{f"train.{k}": v for k, v in settings.items()}}


def losses_by_step(summary: dict[str, Any]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in summary["log_history"] if "loss" in h}


# --- resume -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "n_train"),
    [
        pytest.param(ALL_TASKS, 8, id="all-tasks-resume-in-epoch-0"),
        # 4 samples = 2 steps per epoch: the run resumes in the middle of epoch 1 and crosses into epoch 2,
        # so per-epoch VRT targets and COCO category prompts must follow the resumed epoch.
        pytest.param(["ovd"], 4, id="ovd-resume-mid-epoch-1"),
    ],
)
def test_resume_matches_uninterrupted_run(tmp_path, data_dir, tasks, n_train):
    # warm-up 2 < resume point 3: the resumed run must know (from global_step) that warm-up is over.
    # The LR schedule is in its 50-step linear warm-up, so it does not depend on max_steps (3 vs 6).
    full = train(RECIPE, tiny(data_dir, tasks, n_train, max_steps=6), output_dir=tmp_path / "full")
    first = train(RECIPE, tiny(data_dir, tasks, n_train, max_steps=3, save_steps=3), output_dir=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint-3" / "optimizer.pt").is_file()
    resumed = train(
        RECIPE, tiny(data_dir, tasks, n_train, max_steps=6, save_steps=3), output_dir=tmp_path / "run", resume=True
    )
    assert first["global_step"] == 3 and resumed["global_step"] == full["global_step"] == 6

    expected, got = losses_by_step(full), losses_by_step(resumed)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    logged = next(h for h in full["log_history"] if "loss" in h)
    assert {f"loss_{t}" for t in LOSS_TERMS} <= set(logged)
    # objects per step each head had no targets for: counts, logged without the loss_ prefix
    assert {"skipped_box", "skipped_score", "skipped_mask"} <= set(logged) and logged["skipped_box"] == 0

    # Every parameter (backbone, projection, decoder) of the resumed run equals the uninterrupted run's;
    # on one thread and the same kernels they are in fact bit-identical.
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_resume_and_overwrite_rules(tmp_path, data_dir):
    run = tmp_path / "run"
    train(RECIPE, tiny(data_dir, max_steps=2, save_steps=1), output_dir=run)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    with pytest.raises(ValueError, match=r"cannot resume .*checkpoint-2.*vrt section"):
        train(RECIPE, {**tiny(data_dir, max_steps=4), "vrt.rank": 8}, output_dir=run, resume=True)
    with pytest.raises(FileExistsError, match=r"already holds a training run; pass --overwrite"):
        train(RECIPE, tiny(data_dir, max_steps=1), output_dir=run)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(RECIPE, tiny(data_dir, max_steps=1), output_dir=tmp_path / "empty", resume=True)
    model_only = tmp_path / "model_only"
    model_only.mkdir()
    (model_only / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite"):
        train(RECIPE, tiny(data_dir, max_steps=1), output_dir=model_only)

    # overwrite replaces the run: the old checkpoints go, so a later resume cannot pick a stale one
    summary = train(RECIPE, tiny(data_dir, max_steps=1), output_dir=run, overwrite=True)
    assert summary["global_step"] == 1
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]


def test_activation_checkpointing_trains(tmp_path, data_dir):
    summary = train(RECIPE, tiny(data_dir, max_steps=1, gradient_checkpointing=True), output_dir=tmp_path / "gc")
    assert summary["global_step"] == 1


# --- gradients of the full step -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def step_setup(data_dir):
    """A tiny PaDT model whose zero-initialised parameters are randomised, a collator and one sample per task."""
    spec = load_recipe(RECIPE, tiny(data_dir))
    torch.manual_seed(0)
    model = PaDTModel.from_recipe(spec).train()
    # Zero-initialised weights (prototype LayerNorm, some output projections) give exactly-zero gradients
    # to their neighbours at step 0; randomise them so "gradient is zero" can only mean "not connected".
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    readers, _ = load_readers(spec.data.train, spec.data.templates)
    dataset = SampleDataset(readers, seed=0)
    by_task: dict[str, Any] = {}
    for i in range(len(dataset)):
        by_task.setdefault(dataset[i]["sample"].task, dataset[i])
    assert sorted(by_task) == sorted(ALL_TASKS)
    return model, PaDTCollator(model, seed=0), [by_task[t] for t in ALL_TASKS]


def _grads(model: PaDTModel, loss: torch.Tensor, retain_graph: bool = False) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=retain_graph)
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("step", [0, 5], ids=["warm-up", "after-warm-up"])
def test_every_parameter_gets_a_gradient(step_setup, step):
    model, collator, items = step_setup
    batch = collator(items)  # REC, RES, OVD and RIC in one batch
    assert model.recipe.train.prototype_warmup_steps == 2
    losses = compute_losses(model, batch, step=step)
    assert set(LOSS_TERMS) <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    grads = _grads(model, losses["loss"], retain_graph=True)
    groups = ("backbone.hf_model.model.visual.", "backbone.hf_model.model.language_model.", "projection.", "decoder.")
    for prefix in groups:
        assert any(n.startswith(prefix) for n in grads), f"no trainable parameter under {prefix}"
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient: {missing}"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradient: {bad}"
    zero = [n for n, g in grads.items() if not g.any()]
    assert not zero, f"zero gradient: {zero}"

    # Warm-up feeds the decoder the emitted cells' prototypes, not the LLM's states: the decoder's losses
    # then reach the vision tower (through the prototypes) but no LLM layer.
    decoder_only = losses["loss"] - model.recipe.train.token_loss_weight * losses["token"]
    grads = _grads(model, decoder_only)
    llm = [g for n, g in grads.items() if ".language_model.layers." in n]
    vision = [g for n, g in grads.items() if ".visual." in n]
    assert any(g is not None and g.any() for g in vision)
    reached_llm = any(g is not None and g.any() for g in llm)
    assert reached_llm == (step >= model.recipe.train.prototype_warmup_steps)


@pytest.mark.parametrize("step", [0, 5], ids=["warm-up", "after-warm-up"])
def test_batch_without_objects_touches_every_decoder_parameter(step_setup, step):
    model, collator, items = step_setup
    templates = model.recipe.data.templates
    image = items[2]["sample"].image
    prompt = "Please find these objects in the image: red circle, blue star."
    empty = Sample(id="none/0", image=image, task="ovd", prompt=prompt, answer=templates.ovd_none, objects=[])
    batch = collator([empty, empty])
    assert batch.objects.num_objects == 0
    losses = compute_losses(model, batch, step=step)
    assert torch.isfinite(losses["loss"])
    for term in LOSS_TERMS[1:]:
        assert float(losses[term].detach()) == 0.0
    grads = _grads(model, losses["loss"])
    # DDP (find_unused_parameters=False) and ZeRO-3 wait for every parameter: none may be left out
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient: {missing}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(n.startswith("decoder.") for n in grads)

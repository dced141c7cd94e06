"""``padt train``: recipe → datasets → ``PaDTTrainer`` → a model directory ``padt_core.load`` reads."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from ..atomic import DirectoryLock, atomic_path
from ..data.reader import build_dataset
from ..data.templates import TaskTemplates
from ..model import WEIGHTS_NAME, PaDTModel
from ..recipe import Recipe, load_recipe, parse_overrides
from ..weights import WeightsError, load_weights
from .checkpoints import checkpoint_dirs, delete_checkpoint, newest_complete, remove_staging
from .collator import PaDTCollator
from .dataset import SampleDataset
from .trainer import PaDTTrainer, check_resumable, training_arguments

__all__ = ["apply_freezing", "init_weights", "load_readers", "train"]

logger = logging.getLogger(__name__)


def load_readers(sections: Sequence[Any], templates: TaskTemplates | None = None) -> tuple[list, Counter]:
    """One dataset reader per recipe section, and the records they skipped while reading."""
    readers, skipped = [], Counter()
    for spec in sections:
        reader = build_dataset(spec, templates=templates)
        len(reader)  # readers read (and count their skips) on first use: read now, or `skipped` is empty
        readers.append(reader)
        skipped.update(getattr(reader, "skipped", {}))
    return readers, skipped


def apply_freezing(model: PaDTModel, recipe: Recipe) -> None:
    """``train.freeze_vision`` / ``freeze_llm`` / ``lora``: choose what the optimiser updates."""
    cfg = recipe.train
    freeze_llm = cfg.freeze_llm or cfg.lora is not None
    if cfg.freeze_vision or freeze_llm:
        vision = {id(p) for m in model.backbone.vision_modules() for p in m.parameters()}
        for p in model.backbone.hf_model.parameters():
            p.requires_grad_(not cfg.freeze_vision if id(p) in vision else not freeze_llm)
    if cfg.lora is not None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as err:
            raise ImportError("train.lora needs the `peft` package: pip install peft") from err
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
        )
        inject_adapter_in_model(lora, model.backbone.hf_model)


def init_weights(model: PaDTModel, directory: str | os.PathLike) -> dict[str, Any]:
    """Fill ``model`` with the weights of the padt model ``directory`` (``train.init_from``).

    Every tensor of the directory's weights file must exist in ``model`` with the same shape (else one
    ``WeightsError`` naming the directory and the first mismatches, nothing loaded); model tensors the
    file lacks keep their initialisation and are returned (and logged) as ``new``.

    Args:
        model: the freshly built model of the recipe being trained.
        directory: a model directory written by ``save_pretrained`` / ``padt train``.

    Example:
        >>> init_weights(model, "runs/tiny_shapes_pretrained")["new"]  # doctest: +SKIP
        ['embedding.image_embed.weight']
    """
    path = Path(directory)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"train.init_from: {path} is not a padt model directory (no {WEIGHTS_NAME})")
    try:
        new = load_weights(model, weights, built_from="this recipe (train.init_from)", allow_missing=True)
    except WeightsError as err:
        raise WeightsError(f"train.init_from={path}: {err}") from None
    if new:
        logger.warning("train.init_from %s: %d new tensor(s) keep their initialisation: %s", path, len(new), new)
    return {"dir": str(path), "new": new}


def train(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Train a recipe; returns a summary (output dir, steps, last logged losses, skipped samples).

    A directory that already holds checkpoints or a model is never overwritten unless
    ``overwrite``; ``resume`` continues the newest complete checkpoint of the same recipe (newer,
    incomplete ones, left by a killed save, are skipped and listed in the summary's
    ``skipped_checkpoints``). One run at a time per output directory: a second one raises
    ``DirectoryLockedError`` (a ``FileExistsError``) while the first is alive. ``callbacks`` are
    Hugging Face ``TrainerCallback`` objects added to the Trainer (logging, early stopping, …).
    ``init_from`` sets ``train.init_from`` (start from a trained model directory's weights).
    """
    if init_from is not None:
        overrides = {**parse_overrides(overrides), "train.init_from": str(init_from)}
    spec = load_recipe(recipe, overrides)
    out = Path(output_dir or spec.train.output_dir or Path("runs") / spec.name)
    main_process = int(os.environ.get("RANK", "0")) == 0
    created = not out.exists()
    # The main process holds the directory for the whole run (the other ranks of a job share it).
    lock = DirectoryLock(out, "padt train") if main_process else contextlib.nullcontext()
    try:
        with lock:
            return _train(spec, out, overwrite, resume, callbacks, main_process)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused before anything was written: leave no empty directory behind


def _resume_point(out: Path, spec: Recipe) -> tuple[Path, dict[str, str]]:
    """The newest complete checkpoint of ``out`` (checked against ``spec``) and the newer ones it skips."""
    previous, skipped = newest_complete(out)
    if previous is None:
        why = "".join(f"; {name}: {reason}" for name, reason in skipped.items())
        raise FileNotFoundError(f"nothing to resume in {out}: no complete checkpoint-* directory{why}")
    check_resumable(previous, spec)
    for name, reason in skipped.items():
        logger.warning("resume: skipping %s (%s)", out / name, reason)
    logger.warning("resuming from %s", previous)
    return previous, skipped


def _train(
    spec: Recipe,
    out: Path,
    overwrite: bool,
    resume: bool,
    callbacks: Sequence[TrainerCallback] | None,
    main_process: bool,
) -> dict[str, Any]:
    previous, skipped_checkpoints = None, {}
    existing = checkpoint_dirs(out)
    has_model = (out / "model.safetensors").exists()
    if resume:
        previous, skipped_checkpoints = _resume_point(out, spec)
    elif (existing or has_model) and not overwrite:
        raise FileExistsError(
            f"{out} already holds a training run; pass --overwrite to replace it, --resume to continue it, "
            "or choose another train.output_dir"
        )
    elif overwrite and existing and main_process:
        # A later --resume must not pick up a stale checkpoint of the replaced run (nor the Trainer's
        # rotation count it): the replaced run's checkpoints go. Only the main process deletes.
        for stale in existing:
            delete_checkpoint(stale)
    if main_process:
        remove_staging(out)  # interrupted saves of an earlier run; the lock says none is in progress
    if spec.data.train == []:
        raise ValueError(f"recipe {spec.name!r} has no data.train datasets")

    readers, skipped = load_readers(spec.data.train, spec.data.templates)
    train_set = SampleDataset(readers, seed=spec.train.seed, task_weights=spec.data.task_weights)
    if not len(train_set):
        raise ValueError(f"the data.train datasets of recipe {spec.name!r} yielded no samples")
    # The backbone seeds its own initialisation; the projection and decoder draw from the global RNG, so
    # seed it here: the same recipe and train.seed give the same initial weights (and resumable runs).
    set_seed(spec.train.seed)
    model = PaDTModel.from_recipe(spec)
    init = None
    if spec.train.init_from is not None and resume:
        logger.warning("resume: train.init_from=%s ignored (the checkpoint restores the weights)", spec.train.init_from)
    elif spec.train.init_from is not None:
        init = init_weights(model, spec.train.init_from)  # before LoRA renames the LLM's modules
    apply_freezing(model, spec)
    collator = PaDTCollator(
        model,
        vrt_per_object=spec.train.vrt_per_object,
        vrt_sampling=spec.train.vrt_sampling,
        coverage=spec.data.coverage,
        seed=spec.train.seed,
        templates=spec.data.templates,
    )
    trainer = PaDTTrainer(
        model=model,
        args=training_arguments(spec.train, str(out)),
        train_dataset=train_set,
        data_collator=collator,
        callbacks=list(callbacks) if callbacks else None,
        sampling=spec.train.sampling,
    )
    result = trainer.train(resume_from_checkpoint=str(previous) if resume else None)
    if trainer.is_world_process_zero():
        model.save_pretrained(out, overwrite=True)
        with atomic_path(out / TRAINER_STATE_NAME) as tmp:  # the log history, at the top of the run directory
            trainer.state.save_to_json(str(tmp))
    skipped.update(trainer.data_skipped)  # not collator.skipped: DataLoader workers count in their own copies
    history = trainer.state.log_history
    summary = {
        "output_dir": str(out),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "samples": len(train_set),
        "skipped": dict(skipped),
        "log_history": history,
    }
    if init is not None:
        summary["init_from"] = init
    if resume:
        summary["resumed_from"] = str(previous)
        summary["skipped_checkpoints"] = skipped_checkpoints
    if skipped:
        logger.warning("skipped samples: %s", dict(skipped))
    return summary

"""``PaDTTrainer``: Hugging Face ``Trainer`` with PaDT's losses, checkpoints and resume rules.

DDP/FSDP/DeepSpeed, gradient accumulation, mixed precision, schedules and logging all come from
``Trainer``/accelerate; this module only supplies the loss, the logging of each loss term, and
padt-format checkpoints (``save_pretrained`` directories) that appear complete or not at all and
are rotated without ever losing the newest complete one (``checkpoints.py``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..decoder import SKIPPED_PREFIX
from ..recipe import Recipe, TrainConfig
from ..weights import load_weights
from .batch import TrainBatch
from .checkpoints import publish_checkpoint, rotate, staging_dir
from .dataset import SampleDataset
from .sampler import EpochLengthSampler
from .step import compute_losses

__all__ = ["DatasetEpochCallback", "PaDTTrainer", "check_resumable", "training_arguments"]

# Sections that define the model: a checkpoint from a recipe that differs here cannot be resumed.
_MODEL_SECTIONS = ("backbone", "answer_format", "vrt", "decoder")
# What a section missing from an older checkpoint's recipe.yaml meant (written before the section existed).
_SECTION_DEFAULTS = {"answer_format": {"name": "vrt"}}
# transformers 5.x renamed `gradient_checkpointing` (deprecated alias, removed in v6) to `activation_checkpointing`.
_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def training_arguments(cfg: TrainConfig, output_dir: str, **extra: Any) -> TrainingArguments:
    """``TrainingArguments`` from a recipe's ``train:`` section (``extra`` adds or overrides arguments).

    ``ddp_find_unused_parameters`` is False: the decoder runs on the LLM's outputs *outside* the
    DDP-wrapped forward, so DDP's search for unused parameters (at the end of that forward) would
    wrongly mark the decoder's parameters ready before backward ("Expected to mark a variable ready
    only once"). Every trainable parameter takes part in every step's loss instead (zero-object
    batches decode a dummy object; ``tests/test_train.py`` checks this).
    """
    settings: dict[str, Any] = {
        # pinned (the transformers default today): `padt bench train` times this optimiser
        "optim": "adamw_torch_fused",
        "ddp_find_unused_parameters": False,
        _CHECKPOINTING: cfg.gradient_checkpointing,
        **extra,
    }
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=cfg.num_workers,
        deepspeed=cfg.deepspeed,
        fsdp=cfg.fsdp or "",
        fsdp_config=cfg.fsdp_config,
        use_cpu=not torch.cuda.is_available(),
        **settings,
    )


def check_resumable(checkpoint: str | os.PathLike, recipe: Recipe) -> None:
    """Refuse to resume from a checkpoint written for a different model recipe."""
    saved_file = Path(checkpoint) / "recipe.yaml"
    if not saved_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a padt checkpoint (no recipe.yaml)")
    saved = yaml.safe_load(saved_file.read_text())
    current = recipe.model_dump(mode="json")
    differing = [s for s in _MODEL_SECTIONS if saved.get(s, _SECTION_DEFAULTS.get(s)) != current.get(s)]
    if differing:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was trained with recipe {saved.get('name')!r} whose "
            f"{', '.join(differing)} section(s) differ from recipe {recipe.name!r}. "
            "Start a new run in another output_dir (or pass --overwrite to replace this one)."
        )


class DatasetEpochCallback(TrainerCallback):
    """Tell the training dataset which epoch begins, whatever dataloader wrapper is in between.

    accelerate's ``DataLoaderShard.set_epoch`` forwards the epoch to the dataset only when the batch
    sampler is not itself wrapped: after ``skip_first_batches`` (a resumed run) and under
    ``BatchSamplerShard`` (every multi-process run) it sets the sampler's epoch but not the dataset's.
    ``SampleDataset`` then kept epoch 0: wrong VRT targets and COCO category prompts after a mid-epoch
    resume (diverging from the uninterrupted run) and the same draws every epoch under DDP.
    """

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        dataset = getattr(kwargs.get("train_dataloader"), "dataset", None)
        if hasattr(dataset, "set_epoch"):
            # state.epoch = completed epochs (+ fraction of the current one when resuming mid-epoch); the
            # Trainer's own loop starts at global_step // steps_per_epoch, the same integer.
            dataset.set_epoch(math.floor(state.epoch or 0))


class PaDTTrainer(Trainer):
    """Trainer for :class:`~padt_core.model.PaDTModel`; the batch comes from ``PaDTCollator``."""

    def __init__(self, *args: Any, sampling: str = "random", **kwargs: Any):
        self._staging: str | None = None  # set while a checkpoint is being written (_save_checkpoint)
        self._sampling = sampling  # recipe train.sampling
        super().__init__(*args, **kwargs)
        self.add_callback(DatasetEpochCallback())
        self._loss_sums: dict[str, float] = defaultdict(float)
        self._loss_count = 0
        self.data_skipped: Counter[str] = Counter()  # the collator's skips of the batches trained on

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimiser, with each group split by the backbone's ``parameter_lr_scales``."""
        optimizer = super().create_optimizer(model)
        module = self.accelerator.unwrap_model(model or self.model)
        scales = {id(p): s for m, s in module.backbone.parameter_lr_scales() for p in m.parameters()}
        if scales:
            groups: list[dict] = []
            for group in optimizer.param_groups:
                by_scale: dict[float, list] = defaultdict(list)
                for p in group["params"]:
                    by_scale[scales.get(id(p), 1.0)].append(p)
                groups += [{**group, "params": ps, "lr": group["lr"] * s, "lr_scale": s} for s, ps in by_scale.items()]
            optimizer.param_groups.clear()  # nothing stepped yet: no state to keep
            # Unscaled groups first: the Trainer logs the first group's learning rate.
            for group in sorted(groups, key=lambda g: g["lr_scale"] != 1.0):
                optimizer.add_param_group(group)
        return optimizer

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self._sampling == "length" and isinstance(dataset, SampleDataset):
            return EpochLengthSampler(dataset, self.args.per_device_train_batch_size, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _prepare_inputs(self, inputs: TrainBatch) -> TrainBatch:
        # Overridden -- the batch is a typed TrainBatch, which Trainer's generic rebuild of a mapping
        # (``type(data)({...})``) cannot construct; it moves itself.
        return inputs.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        module = self.accelerator.unwrap_model(model)
        losses = compute_losses(module, inputs, step=self.state.global_step, forward=model)
        if model.training:
            self.data_skipped.update(inputs.skipped)
            for key, value in losses.items():
                if key != "loss":
                    self._loss_sums[key] += float(value.detach())
            self._loss_count += 1
        return (losses["loss"], losses) if return_outputs else losses["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._loss_count and "loss" in logs:
            keys = list(self._loss_sums)
            means = torch.tensor([self._loss_sums[k] / self._loss_count for k in keys], device=self.args.device)
            if self.args.world_size > 1:
                # Like "loss" (gathered by the Trainer), each term is the mean over processes, not rank 0's
                # share. Every rank logs at the same steps with the same keys, so this collective matches.
                means = self.accelerator.reduce(means, reduction="mean")
            for key, value in zip(keys, means.tolist()):
                # skipped_<head>: objects per step a head had no targets for (a count, not a loss)
                logs[key if key.startswith(SKIPPED_PREFIX) else f"loss_{key}"] = round(value, 6)
            self._loss_sums.clear()
            self._loss_count = 0
        super().log(logs, start_time)

    # --- checkpoints: complete or invisible (checkpoints.py) -------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        # While _save_checkpoint runs, the Trainer's "run directory" is the staging directory: every file
        # of the checkpoint lands there, and the Trainer's own rotation (which would count an incomplete
        # checkpoint and could delete the last complete one) sees nothing to rotate.
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, written into a hidden staging directory, then published whole.

        All processes write into the staging directory (DeepSpeed/FSDP shard files); the main process
        publishes it (manifest, fsync, rename) once every process is done, then rotates.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = staging_dir(run_dir, self.state.global_step)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_checkpoint(staging / name, run_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
            keep = [self.state.best_model_checkpoint] if self.state.best_model_checkpoint else []
            rotate(run_dir, self.args.save_total_limit, keep=keep)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:  # as Trainer._save: one writer (the others would race its directory swap)
            return
        target = output_dir or self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(target, overwrite=True)
        torch.save(self.args, os.path.join(target, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        module = self.accelerator.unwrap_model(model or self.model)
        check_resumable(resume_from_checkpoint, module.recipe)
        weights = os.path.join(resume_from_checkpoint, "model.safetensors")
        load_weights(module, weights, built_from="the recipe of this run")

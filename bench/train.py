"""Training-step benchmark: a PaDT step against a plain next-token SFT step of the same backbone.

Both sides train on the same collated batch (generated shapes images, every task of the recipe's data
mix, ``batch_size`` samples) and are timed as one optimiser step each: forward, backward, AdamW step
(fused, the Trainer's default ``adamw_torch_fused``; ``zero_grad(set_to_none=True)`` included).

- **PaDT**: :func:`padt_core.train.step.compute_losses` — vision once, the VRT hooks (prototype
  bank in, VRT logits out), robust per-token CE over text + VRT logits, and the decoder trunk with
  every head's loss — then AdamW over all parameters (backbone, projection, decoder). ``step`` picks
  the phase: ``"main"`` (decoder fed the LLM's states, the default) or ``"warmup"`` (fed prototypes).
- **plain**: ``backbone.hf_model`` on the same prompt + completion ids with every VRT id replaced by
  one text id, pixels encoded inside its forward, standard causal-LM cross-entropy over the
  completion tokens (logits for the same ``L + 1`` positions as PaDT), AdamW over the backbone's
  parameters. No hooks, no bank, no decoder.

Timing (``bench/timing.py``): ``warmup`` untimed steps per side, then ``steps`` interleaved pairs
(``AB BA …``: drift and slow spells hit both members of a pair), the garbage collector paused.
``ratio`` = the median of the per-pair PaDT / plain step-time ratios, with its spread
(``ratio_spread``: quartiles, extremes, bootstrap 95 % interval); ``padt.step_ms`` / ``plain.step_ms``
are each side's median. Defaults: one torch thread, this process's CPU time on a CPU. Collation (the
PaDT collator, and the processor alone for the plain side) is timed apart.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one step (above the memory held
before it: weights, optimiser state). On CPU torch's allocations are invisible to ``tracemalloc``, so
the resident set size is sampled every ~0.2 ms during a separate, untimed step, after returning
freed heap pages to the OS (``malloc_trim``); reported as the peak RSS increase over the step — an
estimate of activations + gradients + temporaries.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from padt_core.dtypes import torch_dtype
from padt_core.runtime import release_free_memory

from .generate import _jsonable_overrides, check_run_options, machine_info, model_summary, torch_threads
from .timing import CLOCKS, DEFAULT_THREADS, interleaved_pairs, paired_ratio, resolve_clock, timer

__all__ = ["bench_train"]

DEFAULT_RECIPE = "recipes/tiny_qwen_shapes.yaml"


def bench_train(
    recipe: Any = DEFAULT_RECIPE,
    batch_size: int = 8,
    steps: int = 11,
    device: str = "cpu",
    dtype: str | None = None,
    seed: int = 0,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    warmup: int = 2,
    step: Literal["main", "warmup"] = "main",
    data_root: str | os.PathLike | None = None,
    n_images: int | None = None,
    threads: int | None = DEFAULT_THREADS,
    clock: Literal["auto", "wall", "cpu"] = "auto",
    memory: bool = True,
) -> dict[str, Any]:
    """Samples/s and peak memory of a PaDT training step vs a plain SFT step; a JSON-serialisable dict.

    ``recipe`` is anything ``padt_core.build`` accepts, with dotted ``overrides``; its first
    ``data.train`` section must be a ``shapes`` section (its tasks and image size are used). The data
    is generated into ``data_root`` (default: a temporary folder) with ``n_images`` train images
    (default: enough for one batch). ``steps`` timed pairs (one step per side each, interleaved) after
    ``warmup`` untimed steps per side. ``threads`` (default 1; ``None``: torch's) and ``clock``
    (default ``auto``: CPU time on a CPU, wall time on an accelerator) as in
    :func:`padt_bench.generate.bench_generate`.
    """
    import padt_core
    from padt_core.recipe import load_recipe

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if step not in ("main", "warmup"):
        raise ValueError(f"step {step!r} is not one of main, warmup")
    dev = check_run_options(device, dtype, clock)
    clock = resolve_clock(clock, dev)

    spec = load_recipe(recipe, overrides)
    if spec.decoder is None:
        raise ValueError(f"recipe {spec.name!r} has no decoder: nothing PaDT-specific to compare")
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="padt-bench-train-") as tmp:
        items = _samples(spec, Path(data_root) if data_root else Path(tmp) / "shapes", batch_size, n_images)
        torch.manual_seed(seed)
        model = padt_core.build(spec)
        model.to(device=dev, dtype=torch_dtype(dtype) if dtype else None)
        model.train()
        result = _bench(model, items, steps, warmup, step, CLOCKS[clock], memory)
        info = machine_info(dev, model.dtype)

    return {
        "benchmark": "train",
        "recipe": spec.name,
        "overrides": _jsonable_overrides(overrides),
        "machine": info,
        "model": model_summary(model),
        "settings": {
            "batch_size": batch_size,
            "steps": steps,
            "warmup": warmup,
            "step": step,
            "seed": seed,
            "clock": clock,
            "threads": threads,
            "optimizer": "AdamW fused (the Trainer's adamw_torch_fused), lr 1e-5",
            "method": "steps interleaved PaDT/plain pairs (AB BA ...) of optimiser steps (forward + backward + "
            "AdamW step) after warmup steps per side; ratio = median of the per-pair ratios (ratio_spread: "
            "quartiles, extremes, bootstrap 95% interval)",
        },
        **result,
    }


def _samples(spec: Any, root: Path, batch_size: int, n_images: int | None) -> list[dict[str, Any]]:
    """``batch_size`` dataset items, tasks interleaved (the recipe's shapes section, ``n_images`` images)."""
    from padt_core.train.dataset import SampleDataset
    from padt_core.train.run import load_readers

    sections = spec.data.train
    if not sections or sections[0].name != "shapes":
        raise ValueError("bench_train generates its data: the recipe's first data.train section must be `shapes`")
    images = n_images or max(2, batch_size)
    section = sections[0].model_copy(update={"root": str(root), "n_train": images, "n_val": 0, "split": "train"})
    readers, _ = load_readers([section], spec.data.templates)
    dataset = SampleDataset(readers, seed=spec.train.seed)
    by_task: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        by_task.setdefault(dataset[i]["sample"].task, []).append(i)
    order = [i for group in zip(*by_task.values()) for i in group]  # round-robin over tasks
    order += [i for i in range(len(dataset)) if i not in set(order)]
    if len(order) < batch_size:
        raise ValueError(f"{len(order)} samples generated, fewer than batch_size {batch_size}; raise n_images")
    return [dataset[i] for i in order[:batch_size]]


def _bench(model: Any, items: list, steps: int, warmup: int, phase: str, clock: Callable[[], float], memory: bool):
    cfg = model.recipe.train
    collator = make_collator(model)
    dev = model.device
    timed = timer(dev, clock)
    collate_ms = [timed(lambda: collator(items))[0] * 1e3 for _ in range(3)]
    samples = [it["sample"] for it in items]
    prepare_ms = [
        timed(lambda: model.prepare([s.image for s in samples], [s.prompt for s in samples]))[0] * 1e3 for _ in range(3)
    ]
    batch = _to_device(collator(items), dev)
    length = batch["completion_ids"].shape[1]
    if phase == "warmup" and cfg.prototype_warmup_steps == 0:
        raise ValueError("step='warmup' but the recipe's train.prototype_warmup_steps is 0")
    losses: dict[str, float] = {}
    runs = train_steps(model, batch, phase, losses)
    if warmup:  # both sides, alternating: lazy set-up and allocator growth land on neither side's timing
        interleaved_pairs(runs, pairs=warmup, warmup=0, collect=False)
    peak = {name: _peak_memory(run, dev) for name, run in runs.items()} if memory else {}
    sides = {name: (lambda run=run: timed(run)[0] * 1e3) for name, run in runs.items()}
    times = interleaved_pairs(sides, pairs=steps, warmup=0)
    ratio = paired_ratio(times["padt"], times["plain"])

    bs = batch["completion_ids"].shape[0]
    padt_ms, plain_ms = statistics.median(times["padt"]), statistics.median(times["plain"])
    result: dict[str, Any] = {
        "padt": {
            "step_ms": round(padt_ms, 2),
            "samples_per_s": round(bs * 1e3 / padt_ms, 3),
            "step_ms_runs": [round(t, 2) for t in times["padt"]],
            "loss": round(losses["padt"], 4),
        },
        "plain": {
            "step_ms": round(plain_ms, 2),
            "samples_per_s": round(bs * 1e3 / plain_ms, 3),
            "step_ms_runs": [round(t, 2) for t in times["plain"]],
            "loss": round(losses["plain"], 4),
        },
        "ratio": ratio["median"],
        "ratio_spread": ratio,
        "ratio_of_medians": round(padt_ms / plain_ms, 4),
        "collate_ms": round(statistics.median(collate_ms), 2),
        "prepare_ms": round(statistics.median(prepare_ms), 2),
        "batch": {
            "samples": bs,
            "tasks": sorted({s.task for s in samples}),
            "objects": batch.objects.num_objects,
            "vrt_targets": int(batch.objects.counts.sum()),
            "prompt_tokens": int(batch["prompt"]["input_ids"].shape[1]),
            "completion_tokens": int(length),
            "image_cells": [int(h * w) for h, w in batch["prompt"]["image_grids"]][:1],
        },
    }
    if memory:
        result["padt"]["peak_memory_mb"] = peak["padt"]
        result["plain"]["peak_memory_mb"] = peak["plain"]
        result["memory_method"] = (
            "torch.cuda.max_memory_allocated above the pre-step allocation"
            if dev.type == "cuda"
            else "peak RSS increase during one step (sampled ~0.2 ms, after gc + malloc_trim)"
        )
    return result


def make_collator(model: Any) -> Any:
    """The collator ``padt train`` builds from the recipe (fixed seed)."""
    from padt_core.train.collator import PaDTCollator

    cfg = model.recipe.train
    return PaDTCollator(model, vrt_per_object=cfg.vrt_per_object, vrt_sampling=cfg.vrt_sampling, seed=0)


def train_steps(
    model: Any, batch: dict[str, Any], phase: str = "main", losses: dict[str, float] | None = None
) -> dict[str, Callable[[], None]]:
    """``{"padt": fn, "plain": fn}``: one optimiser step each on ``batch`` (module docstring); each step
    writes its loss into ``losses`` when given. Used by the benchmark and ``tools/profile_train_step.py``."""
    from padt_core.train.step import compute_losses

    plain_inputs, plain_targets = _plain_inputs(model, batch)
    length = batch["completion_ids"].shape[1]
    step_index = 0 if phase == "warmup" else model.recipe.train.prototype_warmup_steps
    hf = model.backbone.hf_model
    opt_padt = _adamw([p for p in model.parameters() if p.requires_grad])
    opt_plain = _adamw([p for p in hf.parameters() if p.requires_grad])
    losses = {} if losses is None else losses

    def padt() -> None:
        opt_padt.zero_grad(set_to_none=True)
        out = compute_losses(model, batch, step=step_index)
        out["loss"].backward()
        opt_padt.step()
        losses["padt"] = float(out["loss"].detach())

    def plain() -> None:
        opt_plain.zero_grad(set_to_none=True)
        logits = hf(**plain_inputs, use_cache=False, logits_to_keep=length + 1).logits[:, :length]
        loss = F.cross_entropy(logits.float().flatten(0, 1), plain_targets.flatten(), ignore_index=-100)
        loss.backward()
        opt_plain.step()
        losses["plain"] = float(loss.detach())

    return {"padt": padt, "plain": plain}


def _adamw(params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    """The optimiser ``padt train`` runs: the Trainer's default ``adamw_torch_fused`` (one kernel per
    parameter instead of a dozen ops; the decoder's many small tensors make that matter)."""
    return torch.optim.AdamW(params, lr=1e-5, fused=True)


def _plain_inputs(model: Any, batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """The backbone's own inputs for prompt + completion (VRT ids -> one text id) and the CE targets."""
    backbone = model.backbone
    prompt = batch["prompt"]
    text_id = backbone.tokenizer.encode("x", add_special_tokens=False)[0]
    completion = batch["completion_ids"]
    completion = completion.masked_fill(completion >= backbone.vocab_rows, text_id)
    mask = batch["completion_mask"]
    inputs: dict[str, Any] = {
        "input_ids": torch.cat([prompt["input_ids"], completion], dim=1),
        "attention_mask": torch.cat([prompt["attention_mask"], mask.to(prompt["attention_mask"])], dim=1),
    }
    if prompt.get("pixel_values") is not None:
        inputs["pixel_values"] = prompt["pixel_values"]
    inputs.update(backbone.extend_model_inputs(prompt, completion))
    return inputs, completion.masked_fill(mask == 0, -100)


def _to_device(batch: Any, dev: torch.device) -> Any:
    return batch.to(dev)  # a TrainBatch moves itself (objects and targets included)


def _peak_memory(run: Callable[[], None], device: torch.device) -> float | None:
    """Peak memory (MiB) that one call of ``run`` adds to what is held before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 2)
    rss = _rss_reader()
    if rss is None:
        return None
    release_free_memory()  # RSS growth then reflects what a step really needs
    before = rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], rss())
    return round((peak[0] - before) / 2**20, 2)


def _rss_reader() -> Callable[[], int] | None:
    """A cheap reader of this process's resident set size in bytes (Linux /proc, else psutil, else None)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        page = os.sysconf("SC_PAGE_SIZE")
        return lambda: int(statm.read_text().split()[1]) * page
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process()
    return lambda: process.memory_info().rss

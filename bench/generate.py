"""Decode-speed benchmark: PaDT generation against the plain backbone on the same weights.

Both sides run Hugging Face ``generate`` greedily on the same processed batch (random-noise images,
one fixed prompt) and are forced to produce exactly ``N`` new tokens (``min_new_tokens =
max_new_tokens = N``; checked on both sides after every call). The PaDT side is ``PaDTModel.generate``
with the vision features encoded beforehand (the VRT input/output of ``padt_core/vrt_io.py``
active); the plain side is ``backbone.hf_model.generate`` with the raw pixel values. Per-token
*decode* time excludes prefill and vision encoding, measured two ways:

- ``ms_per_token``: per call, the median of its decode-step intervals, timestamped by a pass-through
  logits processor on both sides (one slow step does not move a median of many);
- ``ms_per_token_diff``: per call pair, ``(time(N tokens) - time(1 token)) / (N - 1)``, a cross-check.

Timing (``bench/timing.py``): both sides warmed up, then ``repeats`` interleaved pairs (``AB BA …``);
``ratio`` is the median of the per-pair PaDT / plain ratios, with its spread (quartiles, extremes,
bootstrap 95 % interval) in ``ratio_spread``. On a CPU the default clock is process CPU time and
one torch thread, which is what stays steady on a machine other jobs share.

Prototypes start at exactly zero (zero-init LayerNorm), so an untrained model never emits a VRT.
With ``vrt_mode="random"`` (the default) the projection's LayerNorm weight is set to one, which makes
prototypes random and greedy decoding emits VRTs at (almost) every step: the VRT-embedding path, an
upper bound on PaDT's cost. ``vrt_mode="init"`` keeps the built weights.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from padt_core.dtypes import torch_dtype
from padt_core.runtime import allocator_settings

from .timing import CLOCKS, DEFAULT_THREADS, interleaved_pairs, paired_ratio, resolve_clock, spread, timer

__all__ = ["bench_generate", "check_run_options", "machine_info", "model_summary", "torch_threads"]

PROMPT = "Please locate every object in this image and answer with their labels and visual reference tokens."
_CLOCKS = CLOCKS  # the name train.py and older callers import
#: Timed pairs per batch size by default. At 15 the median ratio moved by ±0.7 % from run to run of one
#: commit (95 % intervals ±1-1.5 %), as much as the overhead being measured at batch 8; 40 pairs narrow
#: that by √(40/15) ≈ 1.6 for ~70 s per recipe on the tiny recipes (2 cores, 1 thread).
DEFAULT_REPEATS = 40


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU count, torch version, device name and dtype."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_name()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "allocator": allocator_settings() or "default",  # padt commands tune glibc's (padt_core/runtime.py)
    }


def check_run_options(device: str, dtype: str | None, clock: str) -> torch.device:
    """The device of a timed run, after checking the options every benchmark shares.

    Args:
        device: torch device string; ``cuda`` must be available.
        dtype: ``None`` (the recipe's) or a name of :data:`padt_core.dtypes.DTYPES`.
        clock: ``wall``, ``cpu`` (host CPU time: only for a CPU device) or ``auto`` (``cpu`` on a CPU).
    """
    if dtype is not None:
        torch_dtype(dtype)  # a miss names the choices
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    clock = resolve_clock(clock, dev)
    if clock not in _CLOCKS:
        raise ValueError(f"clock {clock!r} is not one of {', '.join(_CLOCKS)}")
    if clock == "cpu" and dev.type != "cpu":
        raise ValueError(f"clock 'cpu' measures host CPU time; it cannot time device {device!r} (use 'wall')")
    return dev


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the block (``None``: left as is), then restored."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_summary(model: Any) -> dict[str, Any]:
    """Sizes of a benchmarked ``PaDTModel``: the LLM's width and depth, vocabulary rows, parameter counts."""
    text = model.backbone.hf_model.config.get_text_config()
    return {
        "hidden_size": getattr(text, "hidden_size", None),
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
        "vocab_rows": model.backbone.vocab_rows,
        "parameters": sum(p.numel() for p in model.parameters()),
        "backbone_parameters": sum(p.numel() for p in model.backbone.hf_model.parameters()),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _noise_images(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def bench_generate(
    recipe: Any,
    batch_sizes: Sequence[int] = (1, 8),
    new_tokens: int = 32,
    repeats: int = DEFAULT_REPEATS,
    device: str = "cpu",
    dtype: str | None = None,
    seed: int = 0,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    image_size: int = 224,
    vrt_mode: Literal["random", "init"] = "random",
    threads: int | None = DEFAULT_THREADS,
    clock: Literal["auto", "wall", "cpu"] = "auto",
    warmup: int = 2,
) -> dict[str, Any]:
    """Per-token decode time of PaDT generation vs the plain backbone; a JSON-serialisable dict.

    Args:
        recipe: anything ``padt_core.build`` accepts (path, bundled name, mapping, ``Recipe``).
        batch_sizes: one row of the result per batch size.
        new_tokens: tokens per timed generation (both sides are forced to exactly this many).
        repeats: timed PaDT / plain pairs per batch size (interleaved ``AB BA …``).
        device: torch device.
        dtype: ``float32``/``bfloat16``/``float16`` casts the built model; ``None`` keeps the recipe's.
        seed: weights and noise images.
        overrides: dotted recipe overrides.
        image_size: side of the noise images.
        vrt_mode: ``random`` (VRTs emitted at every step) or ``init`` (weights as built: text only).
        threads: torch's CPU thread count for the run (default 1; ``None``: torch's own).
        clock: ``cpu`` (this process's CPU seconds: the work done, not the wait for a core), ``wall``,
            or ``auto`` (``cpu`` on a CPU device, ``wall`` on an accelerator).
        warmup: untimed calls per side and batch size before the timed pairs.

    The result's top-level ``ratio`` is the worst PaDT / plain ratio over ``batch_sizes`` and
    ``ratio_ci95`` its bootstrap interval.

    Example:
        >>> result = bench_generate("tiny_qwen", batch_sizes=(1,), repeats=5)  # doctest: +SKIP
        >>> result["ratio"], result["ratio_ci95"]  # doctest: +SKIP
    """
    import padt_core

    if new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 (decode time is a difference), got {new_tokens}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if vrt_mode not in ("random", "init"):
        raise ValueError(f"vrt_mode {vrt_mode!r} is not one of random, init")
    dev = check_run_options(device, dtype, clock)
    clock = resolve_clock(clock, dev)

    with torch_threads(threads):
        torch.manual_seed(seed)
        model = padt_core.build(recipe, overrides)
        model.to(device=dev, dtype=torch_dtype(dtype) if dtype else None)
        model.eval()
        if vrt_mode == "random" and getattr(model.projection, "enabled", False):
            with torch.no_grad():
                model.projection.norm.weight.fill_(1.0)  # non-zero prototypes: VRTs win greedy decoding
        results = {
            str(bs): _bench_batch(model, bs, new_tokens, repeats, warmup, image_size, seed, _CLOCKS[clock])
            for bs in batch_sizes
        }
        info = machine_info(dev, model.dtype)

    worst = max(results.values(), key=lambda r: r["ratio"])
    return {
        "benchmark": "generate",
        "recipe": model.recipe.name,
        "overrides": _jsonable_overrides(overrides),
        "machine": info,
        "model": model_summary(model),
        "settings": {
            "new_tokens": new_tokens,
            "repeats": repeats,
            "warmup": warmup,
            "image_size": image_size,
            "seed": seed,
            "vrt_mode": vrt_mode,
            "clock": clock,
            "threads": threads,
            "method": "repeats interleaved PaDT/plain pairs (AB BA ...) after warmup calls per side; per call the "
            "median decode-step interval; ratio = median of the per-pair ratios (ratio_spread: quartiles, "
            "extremes, bootstrap 95% interval); ratio_diff the same of (t(N) - t(1)) / (N - 1); greedy, exactly "
            "N new tokens on both sides",
        },
        "batch_sizes": results,
        "ratio": worst["ratio"],
        "ratio_ci95": worst["ratio_spread"]["ci95"],
    }


class _StepClock:
    """A pass-through logits processor that timestamps every generation step.

    Hugging Face calls it once per step, right after the forward pass, so consecutive timestamps are
    one full decode iteration apart (forward + search bookkeeping); the first comes after the prefill.
    """

    def __init__(self, device: torch.device, clock: Callable[[], float]):
        self.cuda = device.type == "cuda"
        self.clock = clock
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()  # kernels are async: wait for this step before reading the clock
        self.times.append(self.clock())
        return scores

    def step_ms(self) -> list[float]:
        return [(b - a) * 1e3 for a, b in zip(self.times, self.times[1:])]


@torch.no_grad()
def _bench_batch(
    model: Any,
    batch_size: int,
    new_tokens: int,
    repeats: int,
    warmup: int,
    image_size: int,
    seed: int,
    clock: Callable[[], float],
) -> dict:
    """Time both generators on one processed batch of ``batch_size`` noise images, in interleaved pairs."""
    from transformers import LogitsProcessorList

    dev = model.device
    hf = model.backbone.hf_model
    batch = model.prepare(_noise_images(batch_size, image_size, seed), [PROMPT] * batch_size)
    batch = type(batch)({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    encoded = model.encode(batch)
    prompt_len = batch["input_ids"].shape[1]
    # The backbone's own inputs with raw pixels: plain HF generate encodes the images inside its prefill.
    plain_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if batch.get("pixel_values") is not None:
        plain_inputs["pixel_values"] = batch["pixel_values"]
    plain_inputs.update(model.backbone.model_inputs(batch))

    def padt(n: int, steps: _StepClock) -> torch.Tensor:
        return model.generate(
            batch,
            encoded=encoded,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            logits_processor=LogitsProcessorList([steps]),
        )

    def plain(n: int, steps: _StepClock) -> torch.Tensor:
        config = model.generation_config(max_new_tokens=n, min_new_tokens=n, do_sample=False)
        out = hf.generate(**plain_inputs, generation_config=config, logits_processor=LogitsProcessorList([steps]))
        return out[:, prompt_len:]

    timed = timer(dev, clock)
    last: dict[str, torch.Tensor] = {}

    def call(name: str, run: Callable[[int, _StepClock], torch.Tensor]) -> Callable[[], dict[str, Any]]:
        def one_pair_member() -> dict[str, Any]:
            steps = _StepClock(dev, clock)
            t_long, ids = timed(lambda: run(new_tokens, steps))
            t_one, _ = timed(lambda: run(1, _StepClock(dev, clock)))
            if ids.shape[1] != new_tokens:  # min_new_tokens makes this impossible; fail rather than mislead
                raise RuntimeError(f"{name} generation produced {ids.shape[1]} tokens instead of {new_tokens}")
            last[name] = ids
            diff_ms = (t_long - t_one) * 1e3 / (new_tokens - 1)
            step_ms = statistics.median(steps.step_ms())
            return {"step": step_ms, "diff": diff_ms, "long": t_long * 1e3, "one": t_one * 1e3}

        return one_pair_member

    runs = interleaved_pairs({"padt": call("padt", padt), "plain": call("plain", plain)}, repeats, warmup)

    def column(name: str, key: str) -> list[float]:
        return [r[key] for r in runs[name]]

    ratio = paired_ratio(column("padt", "step"), column("plain", "step"))
    ratio_diff = paired_ratio(column("padt", "diff"), column("plain", "diff"))
    padt_ids = last["padt"]
    return {
        "padt_ms_per_token": round(statistics.median(column("padt", "step")), 4),
        "plain_ms_per_token": round(statistics.median(column("plain", "step")), 4),
        "ratio": ratio["median"],
        "ratio_spread": ratio,
        "ratio_pairs": [round(a / b, 4) for a, b in zip(column("padt", "step"), column("plain", "step"))],
        "padt_ms_per_token_spread": spread(column("padt", "step")),
        "plain_ms_per_token_spread": spread(column("plain", "step")),
        "padt_ms_per_token_diff": round(statistics.median(column("padt", "diff")), 4),
        "plain_ms_per_token_diff": round(statistics.median(column("plain", "diff")), 4),
        "ratio_diff": ratio_diff["median"],
        "ratio_diff_ci95": ratio_diff["ci95"],
        "padt_first_token_ms": round(statistics.median(column("padt", "one")), 3),
        "plain_first_token_ms": round(statistics.median(column("plain", "one")), 3),
        "new_tokens_each_side": [int(padt_ids.shape[1]), int(last["plain"].shape[1])],
        "padt_vrt_fraction": round(float((padt_ids >= model.backbone.vocab_rows).float().mean()), 4),
        "prompt_tokens": int(prompt_len),
        "image_cells": encoded.cells(0),
        "padt_total_ms_runs": [round(x, 3) for x in column("padt", "long")],
        "plain_total_ms_runs": [round(x, 3) for x in column("plain", "long")],
    }


def _jsonable_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return [str(o) for o in overrides]

"""Decode-speed benchmark: PaDT generation against the plain backbone on the same weights.

Both sides run Hugging Face ``generate`` greedily on the same processed batch (random-noise images,
one fixed prompt) and are forced to produce exactly ``N`` new tokens (``min_new_tokens =
max_new_tokens = N``). The PaDT side is ``PaDTModel.generate`` with the vision features encoded
beforehand (the VRT hooks of ``PaDTModel.vrt_io`` active); the plain side is
``backbone.hf_model.generate`` with the raw pixel values. Per-token *decode* time excludes prefill
and vision encoding, measured two ways:

- ``ms_per_token``: the median of every decode-step interval, timestamped by a pass-through logits
  processor on both sides (robust on a busy machine: one slow step does not move a median of many);
- ``ms_per_token_diff``: ``(median time(N tokens) - median time(1 token)) / (N - 1)``, a cross-check.

Each batch size gets one warm-up, then ``repeats`` rounds with PaDT and plain runs interleaved so
that machine drift hits both alike; the garbage collector is paused while timing.

Prototypes start at exactly zero (zero-init LayerNorm), so an untrained model never emits a VRT.
With ``vrt_mode="random"`` (the default) the projection's LayerNorm weight is set to one, which makes
prototypes random and greedy decoding emits VRTs at (almost) every step: the slower, VRT-embedding
path of the hooks, i.e. an upper bound on their cost. ``vrt_mode="init"`` keeps the built weights.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from padt_core.dtypes import torch_dtype
from padt_core.runtime import allocator_settings

__all__ = ["bench_generate", "check_run_options", "machine_info", "model_summary", "torch_threads"]

PROMPT = "Please locate every object in this image and answer with their labels and visual reference tokens."
_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


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
        clock: ``wall`` or ``cpu`` (host CPU time: only for a CPU device).
    """
    if dtype is not None:
        torch_dtype(dtype)  # a miss names the choices
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
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


def _timer(device: torch.device, clock: Callable[[], float]) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are async: wait before reading the clock
        return clock() - start, out

    return timed


def bench_generate(
    recipe: Any,
    batch_sizes: Sequence[int] = (1, 8),
    new_tokens: int = 32,
    repeats: int = 3,
    device: str = "cpu",
    dtype: str | None = None,
    seed: int = 0,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    image_size: int = 224,
    vrt_mode: Literal["random", "init"] = "random",
    threads: int | None = None,
    clock: Literal["wall", "cpu"] = "wall",
) -> dict[str, Any]:
    """Per-token decode time of PaDT generation vs the plain backbone; a JSON-serialisable dict.

    ``recipe`` is anything ``padt_core.build`` accepts (path, bundled name, mapping, ``Recipe``), with
    dotted ``overrides``. ``dtype`` (``float32``/``bfloat16``/``float16``) casts the built model;
    ``None`` keeps the recipe's. ``threads`` sets torch's CPU thread count for the run (default: torch's).
    ``clock="cpu"`` times CPU seconds of this process instead of wall time (CPU device only): on a
    machine shared with other jobs it measures the work done, not the wait for a core; use it with
    ``threads=1``. The result's top-level ``ratio`` is the worst PaDT/plain ratio over ``batch_sizes``.
    """
    import padt_core

    if new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 (decode time is a difference), got {new_tokens}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if vrt_mode not in ("random", "init"):
        raise ValueError(f"vrt_mode {vrt_mode!r} is not one of random, init")
    dev = check_run_options(device, dtype, clock)

    with torch_threads(threads):
        torch.manual_seed(seed)
        model = padt_core.build(recipe, overrides)
        model.to(device=dev, dtype=torch_dtype(dtype) if dtype else None)
        model.eval()
        if vrt_mode == "random" and getattr(model.projection, "enabled", False):
            with torch.no_grad():
                model.projection.norm.weight.fill_(1.0)  # non-zero prototypes: VRTs win greedy decoding
        results = {
            str(bs): _bench_batch(model, bs, new_tokens, repeats, image_size, seed, _CLOCKS[clock])
            for bs in batch_sizes
        }
        info = machine_info(dev, model.dtype)

    return {
        "benchmark": "generate",
        "recipe": model.recipe.name,
        "overrides": _jsonable_overrides(overrides),
        "machine": info,
        "model": model_summary(model),
        "settings": {
            "new_tokens": new_tokens,
            "repeats": repeats,
            "image_size": image_size,
            "seed": seed,
            "vrt_mode": vrt_mode,
            "clock": clock,
            "method": "median decode-step interval over repeats (ratio); (median t(N) - median t(1)) / (N - 1) "
            "as a cross-check (ratio_diff); greedy, exactly N new tokens",
        },
        "batch_sizes": results,
        "ratio": max(r["ratio"] for r in results.values()),
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
    model: Any, batch_size: int, new_tokens: int, repeats: int, image_size: int, seed: int, clock: Callable[[], float]
) -> dict:
    """Time both generators on one processed batch of ``batch_size`` noise images."""
    from transformers import LogitsProcessorList

    dev = model.device
    hf = model.backbone.hf_model
    batch = model.prepare(_noise_images(batch_size, image_size, seed), [PROMPT] * batch_size)
    batch = type(batch)({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    encoded = model.encode(batch)
    # The backbone's own inputs with raw pixels: plain HF generate encodes the images inside its prefill.
    plain_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if batch.get("pixel_values") is not None:
        plain_inputs["pixel_values"] = batch["pixel_values"]
    plain_inputs.update(model.backbone.model_inputs(batch))

    def padt(n: int, clock: _StepClock) -> torch.Tensor:
        return model.generate(
            batch,
            encoded=encoded,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
        )

    def plain(n: int, clock: _StepClock) -> torch.Tensor:
        config = model.generation_config(max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return hf.generate(**plain_inputs, generation_config=config, logits_processor=LogitsProcessorList([clock]))

    runs: dict[str, Callable[[int, _StepClock], torch.Tensor]] = {"padt": padt, "plain": plain}
    for run in runs.values():  # warm-up: allocator, kernels, lazy initialisation
        run(new_tokens, _StepClock(dev, clock))
        run(1, _StepClock(dev, clock))
    timed = _timer(dev, clock)
    long_ms: dict[str, list[float]] = {name: [] for name in runs}
    one_ms: dict[str, list[float]] = {name: [] for name in runs}
    step_ms: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, torch.Tensor] = {}
    gc.collect()
    gc.disable()  # as timeit does: a collection inside one run would be charged to it
    try:
        for _ in range(repeats):
            for name, run in runs.items():  # interleaved, so drift hits both sides alike
                steps = _StepClock(dev, clock)
                t_long, last[name] = timed(lambda r=run, c=steps: r(new_tokens, c))
                t_one, _ = timed(lambda r=run: r(1, _StepClock(dev, clock)))
                long_ms[name].append(t_long * 1e3)
                one_ms[name].append(t_one * 1e3)
                step_ms[name] += steps.step_ms()
    finally:
        gc.enable()
    padt_ids = last["padt"]
    if padt_ids.shape[1] != new_tokens:  # min_new_tokens should make this impossible; fail rather than mislead
        raise RuntimeError(f"PaDT generation produced {padt_ids.shape[1]} tokens instead of {new_tokens}")

    # Primary: the median of all (N - 1) x repeats decode-step intervals, robust to a busy machine.
    # Cross-check: (median t(N tokens) - median t(1 token)) / (N - 1), prefill cancelled out.
    padt_ms, plain_ms = statistics.median(step_ms["padt"]), statistics.median(step_ms["plain"])
    diff = {
        name: (statistics.median(long_ms[name]) - statistics.median(one_ms[name])) / (new_tokens - 1) for name in runs
    }
    return {
        "padt_ms_per_token": round(padt_ms, 4),
        "plain_ms_per_token": round(plain_ms, 4),
        "ratio": round(padt_ms / plain_ms, 4),
        "padt_ms_per_token_diff": round(diff["padt"], 4),
        "plain_ms_per_token_diff": round(diff["plain"], 4),
        "ratio_diff": round(diff["padt"] / diff["plain"], 4),
        "padt_first_token_ms": round(statistics.median(one_ms["padt"]), 3),
        "plain_first_token_ms": round(statistics.median(one_ms["plain"]), 3),
        "padt_vrt_fraction": round(float((padt_ids >= model.backbone.vocab_rows).float().mean()), 4),
        "prompt_tokens": int(batch["input_ids"].shape[1]),
        "image_cells": encoded.cells(0),
        "padt_total_ms_runs": [round(x, 3) for x in long_ms["padt"]],
        "plain_total_ms_runs": [round(x, 3) for x in long_ms["plain"]],
    }


def _jsonable_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return [str(o) for o in overrides]

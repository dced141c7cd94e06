"""Decode-speed benchmark: PaDT generation against the plain backbone on the same weights.

Both sides run Hugging Face ``generate`` greedily on the same processed batch (random-noise images,
one fixed prompt) and are forced to produce exactly ``N`` new tokens (``min_new_tokens =
max_new_tokens = N``). Per-token *decode* time excludes prefill and vision encoding::

    ms_per_token = (median time(N new tokens) - median time(1 new token)) / (N - 1)

The PaDT side is ``PaDTModel.generate`` with the vision features encoded beforehand (the VRT hooks of
``PaDTModel.vrt_io`` active); the plain side is ``backbone.hf_model.generate`` with the raw pixel
values. Both durations are medians over ``repeats`` after one warm-up, with PaDT and plain runs
interleaved so that machine drift hits both alike.

Prototypes start at exactly zero (zero-init LayerNorm), so an untrained model never emits a VRT.
With ``vrt_mode="random"`` (the default) the projection's LayerNorm weight is set to one, which makes
prototypes random and greedy decoding emits VRTs at (almost) every step: the slower, VRT-embedding
path of the hooks, i.e. an upper bound on their cost. ``vrt_mode="init"`` keeps the built weights.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

__all__ = ["bench_generate", "machine_info"]

PROMPT = "Please locate every object in this image and answer with their labels and visual reference tokens."
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are async: wait before reading the clock
        return time.perf_counter() - start, out

    return timed


@torch.no_grad()
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
) -> dict[str, Any]:
    """Per-token decode time of PaDT generation vs the plain backbone; a JSON-serialisable dict.

    ``recipe`` is anything ``padt_core.build`` accepts (path, bundled name, mapping, ``Recipe``), with
    dotted ``overrides``. ``dtype`` (``float32``/``bfloat16``/``float16``) casts the built model;
    ``None`` keeps the recipe's. ``threads`` sets torch's CPU thread count (default: torch's).
    The result's top-level ``ratio`` is the worst PaDT/plain ratio.
    """
    import padt_core

    if new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 (decode time is a difference), got {new_tokens}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if vrt_mode not in ("random", "init"):
        raise ValueError(f"vrt_mode {vrt_mode!r} is not one of random, init")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = padt_core.build(recipe, overrides)
    model.to(device=dev, dtype=_DTYPES[dtype] if dtype else None)
    model.eval()
    if vrt_mode == "random" and getattr(model.projection, "enabled", False):
        torch.nn.init.ones_(model.projection.norm.weight)  # non-zero prototypes: VRTs win greedy decoding
    hf = model.backbone.hf_model
    timed = _timer(dev)

    def padt_run(batch, encoded, n: int) -> torch.Tensor:
        return model.generate(batch, encoded=encoded, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def plain_run(batch, n: int) -> torch.Tensor:
        config = model.generation_config(max_new_tokens=n, min_new_tokens=n, do_sample=False)
        # The backbone's own inputs with raw pixels: HF encodes the images itself, inside the prefill.
        pixels = {"pixel_values": batch["pixel_values"]} if batch.get("pixel_values") is not None else {}
        return hf.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **pixels,
            **model.backbone.model_inputs(batch),
            generation_config=config,
        )

    results: dict[str, Any] = {}
    for bs in batch_sizes:
        batch = model.prepare(_noise_images(bs, image_size, seed), [PROMPT] * bs)
        batch = type(batch)({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        encoded = model.encode(batch)
        runs: dict[str, Callable[[int], Any]] = {
            "padt": lambda n, b=batch, e=encoded: padt_run(b, e, n),
            "plain": lambda n, b=batch: plain_run(b, n),
        }
        for run in runs.values():  # warm-up: allocator, kernels, lazy inits
            run(new_tokens)
            run(1)
        long_ms: dict[str, list[float]] = {name: [] for name in runs}
        one_ms: dict[str, list[float]] = {name: [] for name in runs}
        last_out: dict[str, torch.Tensor] = {}
        gc.collect()
        gc.disable()  # as timeit does: a collection inside one run would be charged to it
        try:
            for _ in range(repeats):
                for name, run in runs.items():
                    t_long, last_out[name] = timed(lambda r=run: r(new_tokens))
                    t_one, _ = timed(lambda r=run: r(1))
                    long_ms[name].append(t_long * 1e3)
                    one_ms[name].append(t_one * 1e3)
        finally:
            gc.enable()
        # Medians of each duration first, then the difference: one slow run does not skew the result.
        per_token = {
            name: (statistics.median(long_ms[name]) - statistics.median(one_ms[name])) / (new_tokens - 1)
            for name in runs
        }
        padt_ids = last_out["padt"]
        generated = padt_ids.shape[1]
        if generated != new_tokens:  # min_new_tokens should make this impossible; say so rather than mislead
            raise RuntimeError(f"PaDT generation produced {generated} tokens instead of {new_tokens}")
        # Minima are the usual estimate on a shared machine (noise only ever adds time); reported beside.
        per_token_min = {name: (min(long_ms[name]) - min(one_ms[name])) / (new_tokens - 1) for name in runs}
        padt_ms, plain_ms = per_token["padt"], per_token["plain"]
        results[str(bs)] = {
            "padt_ms_per_token": round(padt_ms, 4),
            "plain_ms_per_token": round(plain_ms, 4),
            "ratio": round(padt_ms / plain_ms, 4),
            "padt_ms_per_token_min": round(per_token_min["padt"], 4),
            "plain_ms_per_token_min": round(per_token_min["plain"], 4),
            "ratio_min": round(per_token_min["padt"] / per_token_min["plain"], 4),
            "padt_first_token_ms": round(statistics.median(one_ms["padt"]), 3),
            "plain_first_token_ms": round(statistics.median(one_ms["plain"]), 3),
            "padt_vrt_fraction": round(float((padt_ids >= model.backbone.vocab_rows).float().mean()), 4),
            "prompt_tokens": int(batch["input_ids"].shape[1]),
            "image_cells": encoded.cells(0),
            "padt_total_ms_runs": [round(x, 3) for x in long_ms["padt"]],
            "plain_total_ms_runs": [round(x, 3) for x in long_ms["plain"]],
        }

    text = hf.config.get_text_config()
    return {
        "benchmark": "generate",
        "recipe": model.recipe.name,
        "overrides": _jsonable_overrides(overrides),
        "machine": machine_info(dev, model.dtype),
        "model": {
            "hidden_size": getattr(text, "hidden_size", None),
            "num_hidden_layers": getattr(text, "num_hidden_layers", None),
            "vocab_rows": model.backbone.vocab_rows,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "settings": {
            "new_tokens": new_tokens,
            "repeats": repeats,
            "image_size": image_size,
            "seed": seed,
            "vrt_mode": vrt_mode,
            "method": "(median t(N tokens) - median t(1 token)) / (N - 1); greedy, exactly N tokens",
        },
        "batch_sizes": results,
        "ratio": max(r["ratio"] for r in results.values()),
    }


def _jsonable_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return [str(o) for o in overrides]

"""Generation-engine benchmark: Hugging Face ``generate`` against vLLM on the same model and prompts.

Both engines generate greedily exactly ``new_tokens`` per prompt (HF: ``min_new_tokens = max_new_tokens``;
vLLM: ``min_tokens = max_tokens`` with ``ignore_eos``), for the same ``prompts`` requests (noise images of
the given sizes, one fixed prompt). HF runs them in batches of ``batch_size`` (processing, vision tower,
prefill and decoding, each batch padded to its longest prompt); vLLM gets all of them at once and batches
them itself (continuous batching, chunked prefill). Timed: wall time from raw images to completion ids;
the vLLM engine's start (export + ``LLM()``) is reported apart, not in the rate. padt's object decoding
after generation is the same on both sides and is not timed here. ``ids_equal`` counts prompts whose
greedy ids agree (they should all: a check that both sides did the same work).

Rates: ``requests_per_s`` = prompts / wall, ``tokens_per_s`` = generated tokens / wall. On 2 CPU cores
with the tiny recipes the numbers say how the engines' overheads compare, nothing about GPU serving.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .generate import PROMPT, check_run_options, machine_info, torch_threads

__all__ = ["bench_engine"]


def _images(sizes: Sequence[int], count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        side = int(sizes[i % len(sizes)])
        out.append(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)))
    return out


def _hf_ids(model: Any, images: list, prompts: list[str], new_tokens: int, batch_size: int) -> list[list[int]]:
    out: list[list[int]] = []
    pad = model.backbone.pad_token_id
    for start in range(0, len(images), batch_size):
        batch = model.prepare(images[start : start + batch_size], prompts[start : start + batch_size])
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                batch[key] = value.to(model.device)
        ids = model.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        out += [[i for i in row if i != pad] for row in ids.tolist()]
    return out


def _vllm_ids(engine: Any, images: list, prompts: list[str], new_tokens: int) -> list[list[int]]:
    model = engine.model
    batch = model.prepare(images, prompts)
    params = engine.sampling_params(max_new_tokens=new_tokens)
    params.min_tokens, params.ignore_eos = new_tokens, True
    outputs = engine.llm.generate([r for r, _ in engine.requests(batch, images)], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _row(name: str, wall: float, ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    tokens = sum(len(r) for r in ids)
    if any(len(r) != new_tokens for r in ids):
        raise RuntimeError(f"{name} generated {sorted({len(r) for r in ids})} tokens per prompt, not {new_tokens}")
    return {
        "engine": name,
        "wall_s": round(wall, 4),
        "requests_per_s": round(len(ids) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
    }


def bench_engine(
    recipe: str,
    prompts: int = 16,
    new_tokens: int = 32,
    batch_size: int = 8,
    image_sizes: Sequence[int] = (112, 168, 224),
    repeats: int = 1,
    device: str = "cpu",
    seed: int = 0,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    engine_args: Mapping[str, Any] | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Requests/s and tokens/s of HF ``generate`` and of vLLM on one model (see the module docstring).

    Args:
        recipe: recipe path or bundled name (a random model: weights do not change the speed).
        prompts: requests per timed run; ``new_tokens``: generated per request.
        batch_size: HF's batch size (vLLM schedules all requests itself).
        image_sizes: sides of the square noise images, cycled over the requests.
        repeats: timed runs per engine (the best wall time is reported: the least disturbed run).
        engine_args: ``vllm.LLM`` options (``max_num_batched_tokens``, ``tensor_parallel_size``, ``dtype``...).
        threads: torch CPU threads of this process (``None``: torch's choice).

    Example:
        >>> bench_engine("tiny_qwen", prompts=8, new_tokens=16)  # doctest: +SKIP
    """
    import padt_core

    for name, value in (("prompts", prompts), ("new_tokens", new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    dev = check_run_options(device, None, "wall")
    from padt_plugins.engines.vllm import VLLMEngine  # an error naming the install command without vLLM

    with torch_threads(threads):
        torch.manual_seed(seed)
        model = padt_core.build(recipe, overrides).to(dev).eval()
        if getattr(model.projection, "enabled", False):
            with torch.no_grad():
                model.projection.norm.weight.fill_(1.0)  # non-zero prototypes: VRTs are generated
        images, texts = _images(image_sizes, prompts, seed), [PROMPT] * prompts
        hf_runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            hf_ids = _hf_ids(model, images, texts, new_tokens, batch_size)
            hf_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        with VLLMEngine(model, **dict(engine_args or {})) as engine:
            startup = time.perf_counter() - start
            _vllm_ids(engine, images[:1], texts[:1], 2)  # first-request costs (processor caches) untimed
            vllm_runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                vllm_ids = _vllm_ids(engine, images, texts, new_tokens)
                vllm_runs.append(time.perf_counter() - start)
            args = {k: v for k, v in engine.engine_args.items() if k != "logits_processors"}
        hf_row = _row("hf", min(hf_runs), hf_ids, new_tokens)
        vllm_row = _row("vllm", min(vllm_runs), vllm_ids, new_tokens)
        vllm_row["startup_s"] = round(startup, 2)
        return {
            "recipe": recipe,
            "machine": machine_info(dev, model.dtype),
            "settings": {
                "prompts": prompts,
                "new_tokens": new_tokens,
                "batch_size": batch_size,
                "image_sizes": list(image_sizes),
                "repeats": repeats,
                "threads": threads,
                "engine_args": {k: str(v) for k, v in args.items()},
            },
            "rows": [hf_row, vllm_row],
            "speedup_tokens_per_s": round(vllm_row["tokens_per_s"] / hf_row["tokens_per_s"], 3),
            "ids_equal": sum(a == b for a, b in zip(hf_ids, vllm_ids)),
        }

"""Decoder benchmark: all objects packed into one forward vs the same objects decoded one at a time.

Cases (reference widths 1280/3420/16 by default, random weights and features, inference mode):
1, 10 and 100 objects on one image, and 8 images with 5 objects each. The image is a 644x476-px
Qwen2.5-VL image: a 17x23 VRT grid and a 34x46 fine grid (reference §0), 5 VRTs per object, LLM
width 2048 (Qwen2.5-VL-3B). "One by one" calls the same decoder once per object with only that
object's image, which is what a decoder without packing (the reference, §12.4) must do.

Timing (``bench/timing.py``): per case, one untimed call of each mode first (warm-up, and the one
whose peak memory is read, so the memory sampler never runs during a timed call), then ``repeats``
interleaved pairs (one-by-one, packed; ``AB BA …``). Reported per case: median wall and CPU time of
each mode, ``speedup`` = the median of the per-pair one-by-one / packed ratios on ``clock``
(default: CPU time on a CPU, wall time on an accelerator) with its spread in ``speedup_spread``,
``speedup_wall`` / ``speedup_cpu`` the same on either clock, and the peak memory above the starting
point of each mode (CUDA: allocator peak; CPU: peak resident set size sampled every millisecond;
memory the C allocator kept from earlier calls is reused unseen, so small one-object peaks can read
near 0). Top level: ``speedup_100`` (and ``_cpu``, ``_wall``, ``_ci95``) and ``growth_100_over_10``
= packed time at 100 objects / at 10 (≤ 10: no worse than linear).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from padt_core import dtypes
from padt_core.decoder import DecoderInputs, PaDTDecoder
from padt_core.features import VisualFeatures
from padt_core.recipe import DecoderConfig
from padt_core.runtime import release_free_memory, tune_cpu_allocator

from .generate import machine_info
from .timing import DEFAULT_THREADS, interleaved_pairs, paired_ratio, resolve_clock

__all__ = ["bench_decoder"]


def bench_decoder(
    *,
    device: str = "cpu",
    dtype: str = "float32",
    hidden_size: int = 1280,
    intermediate_size: int = 3420,
    num_heads: int = 16,
    llm_hidden_size: int = 2048,
    vision_hidden_size: int = 1280,
    grid: tuple[int, int] = (17, 23),
    fine_factor: int = 2,
    vrts_per_object: int = 5,
    object_counts: Sequence[int] = (1, 10, 100),
    batch_images: int = 8,
    objects_per_image: int = 5,
    heads: Sequence[str] = ("box", "score", "mask"),
    memory: str = "factored",
    repeats: int = 3,
    one_by_one: bool = True,
    seed: int = 0,
    threads: int | None = DEFAULT_THREADS,
    clock: str = "auto",
) -> dict[str, Any]:
    """Time the decoder forward, packed and one object at a time; returns a JSON-serialisable dict.

    ``repeats`` interleaved (one-by-one, packed) pairs per case after one untimed call of each.
    ``threads`` sets torch's CPU threads for the run (default 1, the steadiest ratios on a machine
    shared with other work; ``None``: leave as is). ``clock`` (``auto``, ``cpu``, ``wall``) is the one
    ``speedup`` is read on; ``auto`` is CPU time on a CPU, wall time on an accelerator.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dev, torch_dtype = torch.device(device), dtypes.torch_dtype(dtype)
        clock = resolve_clock(clock, dev)
        if clock not in ("cpu", "wall"):
            raise ValueError(f"clock {clock!r} is not one of auto, cpu, wall")
        torch.manual_seed(seed)
        config = DecoderConfig(
            trunk={
                "name": "padt",
                "hidden_size": hidden_size,
                "intermediate_size": intermediate_size,
                "num_heads": num_heads,
                "memory": memory,
            },
            heads=list(heads),
        )
        sizes = {"llm_hidden_size": llm_hidden_size, "vision_hidden_size": vision_hidden_size}
        decoder = PaDTDecoder.from_config(config, **sizes).to(device=dev, dtype=torch_dtype).eval()
        make = _InputMaker(llm_hidden_size, vision_hidden_size, grid, fine_factor, vrts_per_object, dev, torch_dtype)

        cases = [(f"{n}_objects_1_image", [n]) for n in object_counts]
        cases.append((f"{objects_per_image}_objects_x_{batch_images}_images", [objects_per_image] * batch_images))
        results = []
        with torch.inference_mode():
            _run(decoder, make([1], seed))  # warm-up: allocator, kernels, lazy init
            for name, per_image in cases:
                inputs = make(per_image, seed)
                row: dict[str, Any] = {"case": name, "images": len(per_image), "objects": sum(per_image)}
                modes = {"packed": lambda inputs=inputs: _run(decoder, inputs)}
                if one_by_one:  # one-object calls are all alike: the first one's peak (and warm-up) is every one's
                    singles = [_single(inputs, o) for o in range(inputs.num_objects)]
                    modes = {"one_by_one": lambda s=singles: [_run(decoder, x) for x in s], **modes}
                    row["one_by_one_peak_mem_mb"] = _peak_mb(lambda s=singles: _run(decoder, s[0]), dev)
                row["packed_peak_mem_mb"] = _peak_mb(modes["packed"], dev)  # also the packed warm-up
                if one_by_one:
                    runs = interleaved_pairs({k: _timed(f, dev) for k, f in modes.items()}, repeats, warmup=0)
                else:
                    runs = {"packed": [_timed(modes["packed"], dev)() for _ in range(repeats)]}
                for mode, key in (("one_by_one", "one_by_one"), ("packed", "packed")):
                    if mode in runs:
                        row[f"{key}_s"] = round(statistics.median(t[0] for t in runs[mode]), 4)
                        row[f"{key}_cpu_s"] = round(statistics.median(t[1] for t in runs[mode]), 4)
                        row[f"{key}_s_runs"] = [round(t[0], 4) for t in runs[mode]]
                if one_by_one:
                    ratios = {
                        name: paired_ratio([t[i] for t in runs["one_by_one"]], [t[i] for t in runs["packed"]])
                        for i, name in enumerate(("wall", "cpu"))
                    }
                    row["speedup"] = round(ratios[clock]["median"], 2)
                    row["speedup_spread"] = ratios[clock]
                    row["speedup_wall"] = round(ratios["wall"]["median"], 2)
                    row["speedup_cpu"] = round(ratios["cpu"]["median"], 2)
                results.append(row)
                del inputs
                gc.collect()

        by_count = {r["objects"]: r for r in results if r["images"] == 1}
        out: dict[str, Any] = {
            "benchmark": "decoder",
            "config": {
                "hidden_size": hidden_size,
                "intermediate_size": intermediate_size,
                "num_heads": num_heads,
                "llm_hidden_size": llm_hidden_size,
                "vision_hidden_size": vision_hidden_size,
                "grid": list(grid),
                "fine_grid": [grid[0] * fine_factor, grid[1] * fine_factor],
                "vrts_per_object": vrts_per_object,
                "heads": list(heads),
                "memory": memory,
                "parameters_m": round(sum(p.numel() for p in decoder.parameters()) / 1e6, 2),
                "repeats": repeats,
                "clock": clock,
                "threads": threads,
                "method": "per case one untimed call per mode (warm-up + peak memory), then repeats interleaved "
                "(one-by-one, packed) pairs; speedup = median of the per-pair ratios on clock",
            },
            "machine": machine_info(dev, torch_dtype),
            "cases": results,
            "peak_mem_mb": max(r["packed_peak_mem_mb"] for r in results),
        }
        if 100 in by_count and "speedup" in by_count[100]:
            out["speedup_100"] = by_count[100]["speedup"]
            out["speedup_100_ci95"] = by_count[100]["speedup_spread"]["ci95"]
            out["speedup_100_cpu"] = by_count[100]["speedup_cpu"]
            out["speedup_100_wall"] = by_count[100]["speedup_wall"]
        if 100 in by_count and 10 in by_count:
            out["growth_100_over_10"] = round(by_count[100]["packed_s"] / by_count[10]["packed_s"], 2)
        return out

    finally:
        torch.set_num_threads(previous_threads)


# ---------------------------------------------------------------------------------------------------


class _InputMaker:
    """Random decoder inputs: ``per_image[b]`` objects on image ``b``, all images the same size."""

    def __init__(self, d_llm, d_vis, grid, factor, k, device, dtype) -> None:
        self.d_llm, self.d_vis, self.grid, self.factor, self.k = d_llm, d_vis, grid, factor, k
        self.device, self.dtype = device, dtype

    def __call__(self, per_image: Sequence[int], seed: int) -> DecoderInputs:
        gen = torch.Generator().manual_seed(seed)
        (h, w), s = self.grid, self.factor

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(self.device, self.dtype)

        features = [
            VisualFeatures(
                tokens=randn(h * w, self.d_llm),
                grid=(h, w),
                cell_size=28,
                image_size=(28 * h, 28 * w),
                fine=randn(h * s * w * s, self.d_vis),
                fine_grid=(h * s, w * s),
            )
            for _ in per_image
        ]
        n = sum(per_image)
        counts = torch.full((n,), self.k, dtype=torch.long)
        return DecoderInputs(
            features=features,
            prototypes=[f.tokens for f in features],
            image_index=torch.repeat_interleave(torch.arange(len(per_image)), torch.tensor(per_image)).to(self.device),
            vrt_states=randn(n * self.k, self.d_llm),
            vrt_cells=torch.randint(0, h * w, (n * self.k,), generator=gen).to(self.device),
            counts=counts.to(self.device),
            original_sizes=[(28 * h, 28 * w)] * len(per_image),
        )


def _single(inputs: DecoderInputs, o: int) -> DecoderInputs:
    """Object ``o`` alone with its own image."""
    b = int(inputs.image_index[o])
    k = int(inputs.counts[o])
    start = int(inputs.counts[:o].sum())
    return DecoderInputs(
        features=[inputs.features[b]],
        prototypes=[inputs.prototypes[b]],
        image_index=torch.zeros(1, dtype=torch.long, device=inputs.image_index.device),
        vrt_states=inputs.vrt_states[start : start + k],
        vrt_cells=inputs.vrt_cells[start : start + k],
        counts=inputs.counts[o : o + 1],
        original_sizes=[inputs.original_sizes[b]],
    )


def _run(decoder: PaDTDecoder, inputs: DecoderInputs) -> Any:
    return dict(decoder(inputs))


def _timed(fn: Callable[[], Any], device: torch.device) -> Callable[[], tuple[float, float]]:
    """``fn`` as a call returning ``(wall seconds, CPU seconds of this process)``."""

    def call() -> tuple[float, float]:
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        _sync(device)
        out = time.perf_counter() - wall, time.process_time() - cpu
        del result
        return out

    return call


def _peak_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory (MiB) above the level before one untimed call of ``fn``."""
    with _PeakMemory(device) as peak:
        result = fn()
        del result
    return round(peak.bytes / 2**20, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or sampled RSS on CPU (Linux)."""

    def __init__(self, device: torch.device, interval_s: float = 0.001) -> None:
        self.device, self.interval_s, self.bytes = device, interval_s, 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakMemory:
        gc.collect()
        release_free_memory()  # the heap padt keeps (padt_core/runtime.py) would hide the growth
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self._peak, _rss()) - self._start


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no sampling, report 0
        return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(dtypes.DTYPES))
    parser.add_argument("--memory", default="factored", choices=["factored", "dense"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--no-one-by-one", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; 0: unchanged)")
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # as `padt bench decoder` does
    result = bench_decoder(
        device=args.device,
        dtype=args.dtype,
        memory=args.memory,
        repeats=args.repeats,
        object_counts=tuple(args.objects),
        one_by_one=not args.no_one_by_one,
        threads=args.threads or None,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

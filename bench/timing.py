"""How every ``padt bench`` timing is taken: interleaved pairs, warm-up on both sides, a ratio with its spread.

A PaDT / plain ratio read from two medians taken minutes apart moves with whatever else the machine
does (another job, a frequency step, the first call's lazy set-up landing on one side). So:

- both sides are warmed up (``warmup`` calls each, alternating) before anything is timed;
- timed calls come in **pairs** ``(A, B)``, one of each side back to back, the order alternating
  from pair to pair (``AB BA AB …``), so a drift or a slow spell hits both members of a pair;
- the ratio is the **median of the per-pair ratios** ``A_i / B_i``, reported with its spread: the
  quartiles and extremes of the pair ratios and a bootstrap 95 % interval of their median (fixed
  seed, so a result file is reproducible from its own numbers);
- on a CPU the default clock is this process's CPU time (``time.process_time``) with one torch
  thread: time spent waiting for a core that another job holds is not counted.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["CLOCKS", "DEFAULT_THREADS", "interleaved_pairs", "paired_ratio", "resolve_clock", "spread", "timer"]

T = TypeVar("T")

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
#: Torch CPU threads of a timed run unless told otherwise: one thread is what stays steady on a shared machine.
DEFAULT_THREADS = 1


def resolve_clock(clock: str, device: torch.device) -> str:
    """``auto`` → ``cpu`` (process CPU time) on a CPU device, ``wall`` on an accelerator; others unchanged."""
    if clock == "auto":
        return "cpu" if device.type == "cpu" else "wall"
    return clock


def timer(device: torch.device, clock: Callable[[], float]) -> Callable[[Callable[[], T]], tuple[float, T]]:
    """``timed(fn) -> (seconds, fn())`` on ``clock``; on CUDA the device is synchronised on both ends."""

    def timed(fn: Callable[[], T]) -> tuple[float, T]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are async: wait before reading the clock
        return clock() - start, out

    return timed


def interleaved_pairs(
    sides: Mapping[str, Callable[[], T]], pairs: int, warmup: int = 2, *, collect: bool = True
) -> dict[str, list[T]]:
    """Call each of the two ``sides`` ``warmup`` times, then ``pairs`` times each in alternating order.

    Args:
        sides: two named zero-argument callables; what each returns is collected (e.g. its timing).
        pairs: timed calls per side; pair ``i`` runs ``A, B`` for even ``i`` and ``B, A`` for odd ``i``.
        warmup: untimed calls per side first (alternating too).
        collect: run the garbage collector before and pause it during the timed calls (as timeit does).

    Returns:
        ``{name: [result of pair 0, pair 1, …]}``.

    Example:
        >>> out = interleaved_pairs({"a": lambda: 1, "b": lambda: 2}, pairs=3, warmup=0)
        >>> out
        {'a': [1, 1, 1], 'b': [2, 2, 2]}
    """
    if len(sides) != 2:
        raise ValueError(f"interleaved_pairs compares two sides, got {len(sides)}: {list(sides)}")
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, got {pairs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(sides)
    for i in range(warmup):
        for name in names if i % 2 == 0 else names[::-1]:
            sides[name]()
    out: dict[str, list[T]] = {name: [] for name in names}
    if collect:
        gc.collect()
    enabled = gc.isenabled()
    if collect:
        gc.disable()  # a collection inside one call would be charged to it
    try:
        for i in range(pairs):
            for name in names if i % 2 == 0 else names[::-1]:
                out[name].append(sides[name]())
    finally:
        if enabled:
            gc.enable()
    return out


def spread(values: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Median of ``values`` with its spread: quartiles, extremes, a bootstrap 95 % interval of the median.

    ``rel_ci95`` is the interval's half-width over the median (0.01: ±1 %).
    """
    if not values:
        raise ValueError("spread of no values")
    xs = sorted(float(v) for v in values)
    med = statistics.median(xs)
    if len(xs) > 1:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        rng = random.Random(seed)
        boots = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
        lo, hi = boots[int(0.025 * (resamples - 1))], boots[round(0.975 * (resamples - 1))]
    else:
        q1 = q3 = lo = hi = med
    return {
        "median": round(med, 4),
        "q1": round(q1, 4),
        "q3": round(q3, 4),
        "min": round(xs[0], 4),
        "max": round(xs[-1], 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "rel_ci95": round((hi - lo) / 2 / med, 4) if med else None,
        "n": len(xs),
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], **kwargs: Any) -> dict[str, Any]:
    """:func:`spread` of the per-pair ratios ``numerator[i] / denominator[i]`` (from :func:`interleaved_pairs`)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"{len(numerator)} numerators but {len(denominator)} denominators: not pairs")
    if any(d <= 0 for d in denominator):
        raise ValueError("a paired ratio needs positive denominators (a timing of zero: the clock is too coarse)")
    return spread([a / b for a, b in zip(numerator, denominator)], **kwargs)

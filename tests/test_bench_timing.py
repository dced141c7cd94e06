"""``bench/timing.py``: interleaved pairs in alternating order, warm-up on both sides, ratios with spread."""

from __future__ import annotations

import gc

import pytest
import torch
from padt_bench.timing import interleaved_pairs, paired_ratio, resolve_clock, spread


def test_pairs_alternate_their_order_after_warming_both_sides():
    calls: list[str] = []
    sides = {"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or len(calls)}
    out = interleaved_pairs(sides, pairs=4, warmup=2)
    assert "".join(calls) == "ab" + "ba" + "ab" + "ba" + "ab" + "ba"  # warm-up ab ba, then pairs ab ba ab ba
    assert out == {"a": [5, 8, 9, 12], "b": [6, 7, 10, 11]}
    assert gc.isenabled()  # paused during the pairs only


def test_pairs_need_two_sides_and_a_count():
    with pytest.raises(ValueError, match="two sides"):
        interleaved_pairs({"a": lambda: 1}, pairs=1)
    with pytest.raises(ValueError, match="pairs must be at least 1"):
        interleaved_pairs({"a": lambda: 1, "b": lambda: 2}, pairs=0)


def test_paired_ratio_is_the_median_of_pair_ratios_with_its_spread():
    # A slow spell (pair 2) slows both sides: its pair ratio stays 1.05, a ratio of medians would not care.
    padt, plain = [1.05, 2.10, 10.5, 1.05, 1.071], [1.0, 2.0, 10.0, 1.0, 1.0]
    out = paired_ratio(padt, plain)
    assert out["median"] == pytest.approx(1.05)
    assert (out["min"], out["max"]) == (pytest.approx(1.05), pytest.approx(1.071))
    assert out["ci95"][0] <= out["median"] <= out["ci95"][1]
    assert out["n"] == 5 and out["rel_ci95"] < 0.02
    assert paired_ratio(padt, plain) == out  # the bootstrap is seeded: same numbers, same interval
    with pytest.raises(ValueError, match="not pairs"):
        paired_ratio([1.0], [1.0, 2.0])


def test_spread_quartiles_and_single_values():
    out = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (out["median"], out["q1"], out["q3"], out["min"], out["max"]) == (3.0, 2.0, 4.0, 1.0, 5.0)
    one = spread([2.5])
    assert one["ci95"] == [2.5, 2.5] and one["rel_ci95"] == 0


def test_auto_clock_is_cpu_time_on_a_cpu_and_wall_time_on_an_accelerator():
    assert resolve_clock("auto", torch.device("cpu")) == "cpu"
    assert resolve_clock("auto", torch.device("cuda")) == "wall"
    assert resolve_clock("wall", torch.device("cpu")) == "wall"

"""``bench_decoder``: interleaved one-by-one / packed pairs, the speedup as a median pair ratio with its spread."""

from __future__ import annotations

import json
import statistics

import pytest
from padt_bench.decoder import bench_decoder

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 4,
    "llm_hidden_size": 24,
    "vision_hidden_size": 20,
    "grid": (2, 3),
    "vrts_per_object": 2,
    "batch_images": 2,
    "objects_per_image": 3,
}


def test_speedup_is_the_median_pair_ratio_on_the_cpu_clock():
    result = bench_decoder(**TINY, object_counts=(1, 4), repeats=3)
    json.dumps(result)
    assert result["config"]["clock"] == "cpu" and result["machine"]["torch_threads"] == 1  # steady defaults
    row = result["cases"][1]
    assert row["objects"] == 4 and len(row["one_by_one_s_runs"]) == len(row["packed_s_runs"]) == 3
    spread = row["speedup_spread"]
    assert spread["n"] == 3 and spread["min"] <= spread["median"] <= spread["max"]
    assert row["speedup"] == round(spread["median"], 2)
    assert row["packed_s"] == pytest.approx(statistics.median(row["packed_s_runs"]), abs=1e-4)
    assert row["one_by_one_peak_mem_mb"] >= 0 and row["packed_peak_mem_mb"] >= 0


def test_packed_only_and_bad_settings():
    result = bench_decoder(**TINY, object_counts=(2,), repeats=2, one_by_one=False, clock="wall")
    assert all("speedup" not in c and len(c["packed_s_runs"]) == 2 for c in result["cases"])
    with pytest.raises(ValueError, match="repeats"):
        bench_decoder(**TINY, repeats=0)
    with pytest.raises(ValueError, match="clock 'sundial'"):
        bench_decoder(**TINY, clock="sundial")

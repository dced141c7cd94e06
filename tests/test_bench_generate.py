"""``bench_generate`` runs end to end and reports what it promises (no timing assertions)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from padt_bench.generate import bench_generate

from padt_core.cli import main


def test_bench_generate_tiny_keys():
    threads = torch.get_num_threads()
    result = bench_generate("tiny_qwen", batch_sizes=(1,), new_tokens=4, repeats=3, warmup=1)
    json.dumps(result)  # serialisable as promised
    assert torch.get_num_threads() == threads  # the thread count is restored
    assert {"platform", "cpu_count", "torch", "device_name", "dtype"} <= set(result["machine"])
    assert result["machine"]["dtype"] == "float32"
    # The steady defaults on a CPU: one thread, this process's CPU time.
    assert result["machine"]["torch_threads"] == 1
    assert (result["settings"]["clock"], result["settings"]["threads"]) == ("cpu", 1)
    row = result["batch_sizes"]["1"]
    assert {"padt_ms_per_token", "plain_ms_per_token", "ratio", "ratio_spread", "ratio_diff"} <= set(row)
    assert row["padt_ms_per_token"] > 0 and row["plain_ms_per_token"] > 0
    assert row["padt_vrt_fraction"] > 0  # vrt_mode="random" makes the VRT path run
    assert row["new_tokens_each_side"] == [4, 4]  # same length on both sides
    # The ratio is the median of the per-pair ratios, inside its own interval.
    assert len(row["ratio_pairs"]) == 3 and row["ratio"] == statistics.median(row["ratio_pairs"])
    spread = row["ratio_spread"]
    assert spread["n"] == 3 and spread["min"] <= spread["ci95"][0] <= row["ratio"] <= spread["ci95"][1] <= spread["max"]
    assert result["ratio"] == row["ratio"] and result["ratio_ci95"] == spread["ci95"]


def test_bench_generate_cli_with_overrides(capsys):
    settings = ["--batch-sizes", "2", "--new-tokens", "3", "--repeats", "1", "--vrt-mode", "init"]
    code = main(["bench", "generate", "--recipe", "tiny_qwen", *settings, "vrt.rank=4"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert list(result["batch_sizes"]) == ["2"]
    assert result["overrides"] == ["vrt.rank=4"]
    assert result["batch_sizes"]["2"]["padt_vrt_fraction"] == 0  # zero prototypes: text only


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"new_tokens": 1}, "at least 2"),
        ({"dtype": "int8"}, "dtype"),
        ({"batch_sizes": ()}, "batch sizes"),
        ({"warmup": -1}, "warmup"),
        ({"clock": "sundial"}, "clock 'sundial'"),
    ],
)
def test_bench_generate_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench_generate("tiny_qwen", **kwargs)

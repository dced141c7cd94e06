"""``bench_generate`` runs end to end and reports what it promises (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from padt_bench.generate import bench_generate

from padt_core.cli import main


def test_bench_generate_tiny_keys():
    threads = torch.get_num_threads()
    result = bench_generate("tiny_qwen", batch_sizes=(1,), new_tokens=4, repeats=1, threads=1)
    json.dumps(result)  # serialisable as promised
    assert torch.get_num_threads() == threads  # the thread count is restored
    assert {"platform", "cpu_count", "torch", "device_name", "dtype"} <= set(result["machine"])
    assert result["machine"]["dtype"] == "float32"
    row = result["batch_sizes"]["1"]
    assert {"padt_ms_per_token", "plain_ms_per_token", "ratio"} <= set(row)
    assert row["padt_ms_per_token"] > 0 and row["plain_ms_per_token"] > 0
    assert row["padt_vrt_fraction"] > 0  # vrt_mode="random" makes the VRT path run
    assert result["ratio"] == row["ratio"]


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
    [({"new_tokens": 1}, "at least 2"), ({"dtype": "int8"}, "dtype"), ({"batch_sizes": ()}, "batch sizes")],
)
def test_bench_generate_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench_generate("tiny_qwen", **kwargs)

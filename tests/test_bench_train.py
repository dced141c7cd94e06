"""``bench_train`` runs end to end and reports what it promises (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch
from padt_bench.train import bench_train


def test_bench_train_tiny_keys(tmp_path):
    threads = torch.get_num_threads()
    result = bench_train(batch_size=2, steps=3, warmup=1, data_root=tmp_path / "shapes")
    json.dumps(result)  # serialisable as promised
    assert torch.get_num_threads() == threads  # the thread count is restored
    assert result["benchmark"] == "train" and result["recipe"] == "tiny_qwen_shapes"
    assert {"platform", "cpu_count", "torch", "device_name", "dtype"} <= set(result["machine"])
    for side in ("padt", "plain"):
        row = result[side]
        assert row["step_ms"] > 0 and row["samples_per_s"] > 0
        assert row["peak_memory_mb"] is None or row["peak_memory_mb"] >= 0
        assert len(row["step_ms_runs"]) == 3
    # Defaults that stay steady on a shared CPU: one thread, CPU time; the ratio is the median pair ratio.
    assert (result["settings"]["clock"], result["machine"]["torch_threads"]) == ("cpu", 1)
    pairs = [a / b for a, b in zip(result["padt"]["step_ms_runs"], result["plain"]["step_ms_runs"])]
    assert result["ratio"] == pytest.approx(sorted(pairs)[1], rel=1e-3)
    spread = result["ratio_spread"]
    assert spread["n"] == 3 and spread["ci95"][0] <= result["ratio"] <= spread["ci95"][1]
    assert result["ratio_of_medians"] == pytest.approx(result["padt"]["step_ms"] / result["plain"]["step_ms"], rel=1e-3)
    assert result["batch"]["samples"] == 2 and result["batch"]["objects"] >= 2
    assert result["collate_ms"] > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"step": "late"}, "step"),
        ({"dtype": "i8"}, "dtype"),
        ({"warmup": -1}, "warmup"),
    ],
)
def test_bench_train_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench_train(**kwargs)


def test_bench_times_the_optimiser_the_trainer_runs(tmp_path):
    from padt_bench.train import _adamw

    from padt_core.recipe import load_recipe
    from padt_core.train.trainer import training_arguments

    args = training_arguments(load_recipe("recipes/tiny_qwen_shapes.yaml").train, str(tmp_path))
    assert args.optim == "adamw_torch_fused"
    assert _adamw([torch.nn.Parameter(torch.zeros(2))]).defaults["fused"] is True

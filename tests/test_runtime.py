"""padt_core.runtime: the glibc allocator thresholds padt commands set for large CPU tensors."""

import pytest
from padt_bench.generate import machine_info

from padt_core import runtime

glibc = pytest.mark.skipif(runtime._glibc() is None, reason="needs glibc")


@glibc
def test_tuning_applies_and_is_recorded(monkeypatch):
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    applied = runtime.tune_cpu_allocator(1 << 29)
    assert applied["mmap_threshold"] == applied["trim_threshold"] == 1 << 29
    assert applied["library"].startswith("glibc ")
    assert runtime.tune_cpu_allocator(1 << 29) is applied  # idempotent
    import torch

    assert machine_info(torch.device("cpu"), torch.float32)["allocator"] == applied
    runtime.tune_cpu_allocator()  # back to what padt commands use


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_environment_opts_out(monkeypatch, value):
    monkeypatch.setenv(runtime.ENV_VAR, value)
    assert runtime.tune_cpu_allocator() is None


def test_bad_threshold():
    with pytest.raises(ValueError, match="positive number of bytes, got 0"):
        runtime.tune_cpu_allocator(0)

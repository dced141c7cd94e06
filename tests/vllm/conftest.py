"""Tests of padt on vLLM (``padt_plugins.engines.vllm``): they run in the vLLM environment only.

    bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm

Elsewhere every module skips with that command as the reason (each imports ``vllm.sampling_params``: a
bare ``vllm`` would find this directory as a namespace package). vLLM runs in this process (no engine-core
or worker processes: one ``LLM`` start is ~30 s on 2 cores instead of ~90 s), with a small KV cache.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

INSTALL = "needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # as padt predict sets: stdout is its JSON
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

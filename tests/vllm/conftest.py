"""Tests of padt on vLLM (``padt_plugins.engines.vllm``): they run in the vLLM environment only.

    bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm

Elsewhere every module skips with that command as the reason. vLLM runs in this process (no engine-core
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py

DECODER = {
    "trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2},
    "heads": ["box", "score", "mask"],
}
# Small engine settings that force what the tests are about: prompts longer than one step's token budget
# (chunked prefill) and more prompts than sequences at once (queued, continuously batched requests).
ENGINE_ARGS = {
    "enforce_eager": True,
    "max_num_batched_tokens": 64,
    "max_num_seqs": 3,
    "max_model_len": 1024,
    "distributed_executor_backend": "uni",
}


def padt_vrt_model(seed: int = 0):
    """The tiny Qwen2.5-VL with box/score/mask heads and no_repeat_vrt, sharpened so it emits VRT runs."""
    from helpers import sharpen

    import padt_core

    torch.manual_seed(seed)
    overrides = {"decoder": DECODER, "generation": {"logits_processors": ["no_repeat_vrt"]}}
    model = padt_core.build("tiny_qwen", overrides).eval()
    sharpen(model, seed)
    return model


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

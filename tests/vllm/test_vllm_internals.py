"""The vLLM internals padt relies on (``padt_plugins/engines/vllm/_runner.py``) are still where it reads them.

Fails loudly when a vLLM upgrade moves them, before any generation test gives a subtler failure.
"""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

from padt_plugins.engines.vllm import _runner


def _runner_classes():
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return GPUModelRunner, CPUModelRunner


def test_installed_vllm_is_in_the_supported_range():
    _runner.check_vllm_version(_runner.vllm_version())


def test_wrapped_methods_keep_their_signatures_and_are_wrapped():
    gpu, cpu = _runner_classes()
    _runner.patch_runner()
    assert gpu._padt_patched
    gather = inspect.signature(gpu._gather_mm_embeddings).parameters
    assert list(gather)[:3] == ["self", "scheduler_output", "shift_computed_tokens"]
    assert list(inspect.signature(gpu._update_states).parameters) == ["self", "scheduler_output"]
    for name in ("_gather_mm_embeddings", "_update_states"):  # the CPU runner inherits them: wrapped too
        assert name not in vars(cpu)


def test_runner_state_padt_reads_is_still_there():
    gpu, _ = _runner_classes()
    _runner.patch_runner()
    source = inspect.getsource(gpu)
    for attribute in ("self.encoder_cache", "self.input_batch", "self.requests"):
        assert attribute in source, attribute
    gather = inspect.getsource(_runner._ORIGINALS["_gather_mm_embeddings"])
    assert "for req_id in self.input_batch.req_ids" in gather  # the flattened token order padt publishes
    assert "scheduler_output.num_scheduled_tokens[req_id]" in gather
    assert "mm_feature.identifier" in gather and "mm_feature.mm_position" in gather
    assert "scheduler_output.finished_req_ids" in inspect.getsource(_runner._ORIGINALS["_update_states"])


def test_embed_runs_after_gather_and_logits_once_per_request():
    gpu, _ = _runner_classes()
    preprocess = inspect.getsource(gpu._preprocess)
    gather_at = preprocess.index("self._gather_mm_embeddings(scheduler_output)")
    assert gather_at < preprocess.index("self.model.embed_input_ids(")
    assert "self.model.compute_logits(sample_hidden_states)" in inspect.getsource(gpu.execute_model)


def test_version_outside_the_range_is_one_clear_error():
    with pytest.raises(_runner.VLLMUnavailableError, match=r"supports vLLM >=0\.32\.0,<0\.33\.0, found 0\.33\.1"):
        _runner.check_vllm_version("0.33.1")
    with pytest.raises(_runner.VLLMUnavailableError, match=r"found 0\.31\.2.*tools/vllm_env\.sh"):
        _runner.check_vllm_version("0.31.2+cpu")
    with pytest.raises(_runner.VLLMUnavailableError, match="not installed"):
        _runner.check_vllm_version(None)
    assert issubclass(_runner.VLLMUnavailableError, ValueError)  # the CLI reports it in one line
    _runner.check_vllm_version("0.32.0+cpu")
    _runner.check_vllm_version("0.32.5")

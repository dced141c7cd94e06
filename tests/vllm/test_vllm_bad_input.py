"""Bad input to padt's vLLM engine: one clear error each, before (or instead of) anything wrong."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

from padt_plugins.engines.vllm import VLLMEngine
from padt_plugins.engines.vllm.export import UnsupportedBackboneError, export_for_vllm
from vllm_helpers import ENGINE_ARGS, padt_vrt_model

import padt_core


@pytest.fixture(scope="module")
def model():
    return padt_vrt_model()


def test_backbone_without_a_vllm_class_names_the_supported_ones(tmp_path):
    llava = padt_core.build("tiny_llava")
    with pytest.raises(
        UnsupportedBackboneError, match=r"backbone 'llava'.*supported with engine='vllm': qwen2_5_vl, qwen3_vl"
    ):
        VLLMEngine(llava)
    with pytest.raises(UnsupportedBackboneError, match="'llava'"):
        export_for_vllm(llava, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_backbone_error_through_predict(tmp_path):
    llava = padt_core.build("tiny_llava")
    with pytest.raises(UnsupportedBackboneError, match="qwen2_5_vl"):
        llava.predict([None], ["hi"], engine="vllm")


def test_prefix_caching_is_refused_by_the_engine_and_by_the_model_class(model, tmp_path):
    with pytest.raises(ValueError, match="enable_prefix_caching=True is not supported"):
        VLLMEngine(model, enable_prefix_caching=True)
    # Started directly (as `vllm serve` would), the model class refuses it too, naming the switch.
    from vllm import LLM

    path = export_for_vllm(model, tmp_path / "exported")
    args = {k: v for k, v in ENGINE_ARGS.items()}
    with pytest.raises(Exception, match="does not support prefix caching"):
        LLM(model=str(path), enable_prefix_caching=True, dtype="float32", **args)


def test_generation_arguments_vllm_cannot_honour(model):
    engine = VLLMEngine.__new__(VLLMEngine)  # sampling_params needs only the model: no LLM start
    engine.model = model
    with pytest.raises(ValueError, match="does not take generation argument.*output_scores"):
        engine.sampling_params(output_scores=True)
    with pytest.raises(ValueError, match="without beams"):
        engine.sampling_params(num_beams=2)
    params = engine.sampling_params(max_new_tokens=7)
    assert params.max_tokens == 7 and params.temperature == 0.0
    assert params.extra_args == {"padt_no_repeat_vrt": {"vocab_rows": model.backbone.vocab_rows, "max_run": None}}
    assert set(params.stop_token_ids) == set(model.backbone.eos_token_ids)


def test_export_refuses_to_overwrite(model, tmp_path):
    export_for_vllm(model, tmp_path / "e")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_for_vllm(model, tmp_path / "e")

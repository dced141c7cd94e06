"""``padt bench engine``: both engines time the same requests and agree on their ids."""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

from vllm_helpers import ENGINE_ARGS

from padt_core.cli import main


def test_bench_engine_rows_and_agreement(tmp_path, capsys):
    out = tmp_path / "bench.json"
    engine = [f"--engine-arg={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ENGINE_ARGS.items()]
    argv = ["bench", "engine", "--prompts", "3", "--new-tokens", "4", "--batch-size", "2"]
    assert main([*argv, "--image-sizes", "56", "112", *engine, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["engine"] for row in result["rows"]] == ["hf", "vllm"]
    assert result["ids_equal"] == 3
    for row in result["rows"]:
        assert row["requests_per_s"] > 0 and row["tokens_per_s"] == pytest.approx(4 * row["requests_per_s"], rel=1e-2)
    assert result["rows"][1]["startup_s"] > 0
    assert result["settings"]["engine_args"]["max_num_batched_tokens"] == "64"

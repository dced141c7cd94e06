"""``padt predict --engine vllm`` prints what ``--engine hf`` prints for a saved model (ids, boxes, scores)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

from helpers import noise_image
from vllm_helpers import ENGINE_ARGS, padt_vrt_model

from padt_core.cli import main


def _predict(capsys, argv: list[str]) -> list[dict]:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_engine_vllm_equals_hf(tmp_path, capsys):
    model_dir = padt_vrt_model(seed=1).save_pretrained(tmp_path / "model")
    images = []
    for i, (h, w) in enumerate([(112, 168), (196, 84)]):
        path = tmp_path / f"im{i}.png"
        noise_image(h, w, seed=10 + i).save(path)
        images += ["--image", str(path)]
    argv = ["predict", str(model_dir), *images, "--prompt", "Where is <|VRT_2|>?", "--max-new-tokens", "12"]
    hf = _predict(capsys, argv)
    engine = [f"--engine-arg={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ENGINE_ARGS.items()]
    vllm = _predict(capsys, [*argv, "--engine", "vllm", *engine])
    assert [p["text"] for p in vllm] == [p["text"] for p in hf]
    assert sum(len(p["objects"]) for p in hf) > 0
    for a, b in zip(hf, vllm):
        assert [o["vrt"] for o in a["objects"]] == [o["vrt"] for o in b["objects"]]
        for oa, ob in zip(a["objects"], b["objects"]):
            assert oa["box"] == pytest.approx(ob["box"], abs=1e-3)
            assert oa["score"] == pytest.approx(ob["score"], abs=1e-5)


def test_engine_arg_needs_an_engine(tmp_path, capsys):
    # the recipe's generation.engine is hf: an --engine-arg without --engine has no engine to configure
    noise_image(56, 56).save(tmp_path / "x.png")
    argv = ["predict", "tiny_qwen", "--image", str(tmp_path / "x.png"), "--prompt", "p"]
    assert main([*argv, "--engine-arg", "dtype=float32"]) != 0
    assert "--engine-arg configures another engine than hf; add --engine vllm" in capsys.readouterr().err
    assert main([*argv, "--engine", "hf", "--engine-arg", "dtype=float32"]) != 0
    assert "--engine-arg configures another engine than hf; add --engine vllm" in capsys.readouterr().err


def test_engine_arg_must_be_key_value(capsys):
    code = main(["predict", "tiny_qwen", "--image", "x.png", "--prompt", "p", "--engine", "vllm", "--engine-arg", "x"])
    assert code != 0
    assert "--engine-arg expects key=value" in capsys.readouterr().err

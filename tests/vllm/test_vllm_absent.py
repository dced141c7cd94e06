"""Where vLLM is not installed (the main environment), asking for it is one clear error naming the install."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm.sampling_params") is not None, reason="vLLM is installed here"
)


@pytest.fixture(scope="module")
def model():
    import padt_core

    return padt_core.build("tiny_qwen").eval()


def test_predict_engine_vllm_names_the_install_command(model):
    with pytest.raises(ValueError, match=r"needs vLLM >=0\.32\.0,<0\.33\.0, which is not installed.*vllm_env\.sh"):
        model.predict([None], ["hi"], engine="vllm", max_new_tokens=2)


def test_unknown_engine_lists_the_installed_ones(model):
    with pytest.raises(ValueError, match=r"unknown engine 'tgi'; installed: hf, vllm"):
        model.predict([None], ["hi"], engine="tgi")


def test_cli_reports_it_in_one_line(tmp_path, capsys):
    from helpers import noise_image

    from padt_core.cli import main

    image = tmp_path / "a.png"
    noise_image(56, 56).save(image)
    code = main(["predict", "tiny_qwen", "--image", str(image), "--prompt", "hi", "--engine", "vllm"])
    err = capsys.readouterr().err
    assert code == 2 and "which is not installed; run bash tools/vllm_env.sh" in err and "Traceback" not in err

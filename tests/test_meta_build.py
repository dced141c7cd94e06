"""Meta-device builds of the real 3B/7B recipes: structure and parameter counts offline (reference §5.2)."""

from __future__ import annotations

import json

import pytest
import torch

import padt_core
from padt_core.backbone import HubUnreachableError
from padt_core.cli import main
from padt_core.sizes import parameter_counts

# Reference §5.2: decoder ≈ 98.0 M (3B) / ≈ 100.0 M (7B); vis_norm + vis_proj 0.27 M / 0.47 M.
# Totals: the public Qwen2.5-VL sizes (3.75 B / 8.29 B) plus the two.
EXPECTED = {
    "qwen_padt_pro": {"decoder": 98.0e6, "projection": 0.27e6, "base": 3.755e9},
    "qwen_padt_pro_7b": {"decoder": 100.0e6, "projection": 0.47e6, "base": 8.292e9},
    "padt_pro_3b_released": {"decoder": 98.0e6, "projection": 0.27e6, "base": 3.755e9},
    "padt_pro_7b_released": {"decoder": 100.0e6, "projection": 0.47e6, "base": 8.292e9},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub access: a meta build must not try one."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_meta_build_matches_the_published_sizes(name):
    model = padt_core.build(recipe=name, weights="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = parameter_counts(model)
    expected = EXPECTED[name]
    assert counts["decoder"] == pytest.approx(expected["decoder"], abs=0.05e6)
    assert counts["projection"] == pytest.approx(expected["projection"], abs=0.005e6)
    base = counts["backbone.vision"] + counts["backbone.llm"]
    assert base == pytest.approx(expected["base"], rel=1e-3)
    assert counts["total"] == base + counts["projection"] + counts["decoder"]


def test_decoder_breakdown_3b():
    """28.44 M per two-way block (§5.2), the rest in the input projection and the heads."""
    model = padt_core.build(recipe="qwen_padt_pro", weights="meta")
    trunk = model.decoder.trunk
    for block in (trunk.low_res_transformer, trunk.high_res_transformer1, trunk.high_res_transformer2):
        assert sum(p.numel() for p in block.parameters()) == pytest.approx(28.44e6, abs=0.005e6)
    assert isinstance(trunk.fine_projection, torch.nn.Identity)  # decoder width = ViT width: no extra projection
    d_llm = 2048
    assert sum(p.numel() for p in trunk.input_projection.parameters()) == d_llm + d_llm * 1280 + 1280 + 1280 * 1281


def test_meta_keyword_and_weights_agree():
    a = parameter_counts(padt_core.build("qwen_padt_pro", meta=True))
    b = parameter_counts(padt_core.build("qwen_padt_pro", weights="meta"))
    assert a == b


def test_weights_must_be_known():
    with pytest.raises(ValueError, match="weights must be 'pretrained' or 'meta', got 'random'"):
        padt_core.build("tiny_qwen", weights="random")


def test_cli_recipe_params_meta(capsys):
    assert main(["recipe", "params", "qwen_padt_pro_7b", "--meta"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["decoder"] == pytest.approx(100.0e6, abs=0.05e6)
    assert counts["projection"] == pytest.approx(0.47e6, abs=0.005e6)
    assert set(counts) >= {"total", "backbone.vision", "backbone.llm", "decoder.trunk", "decoder.heads.mask"}


def test_a_meta_build_of_an_unknown_hub_model_still_needs_its_config():
    with pytest.raises(HubUnreachableError, match="someone/unknown-vl"):
        padt_core.build("qwen_padt_pro", {"backbone.pretrained": "someone/unknown-vl"}, weights="meta")


def test_building_a_released_recipe_offline_raises_the_hub_error():
    """Without meta, the released recipe converts its checkpoint: offline, that is the hub error."""
    with pytest.raises(HubUnreachableError, match="PaDT-MLLM/PaDT_Pro_7B"):
        padt_core.build("padt_pro_7b_released")

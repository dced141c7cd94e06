"""VRT ids, VRT-aware decoding and the completion parser (including a fuzz: it never raises)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from padt_core.vrt import VRTCodec, vrt_string, vrt_strings

ASSETS = Path(__file__).resolve().parents[1] / "plugins" / "backbones" / "assets" / "tiny_qwen"
V = 832  # embedding rows of the tiny model (tokenizer has 822)


@pytest.fixture(scope="module")
def codec() -> VRTCodec:
    tok = AutoTokenizer.from_pretrained(ASSETS)
    return VRTCodec(tok, V, [tok.eos_token_id], tok.pad_token_id)


def ids_of(codec: VRTCodec, *parts: str | list[int]) -> list[int]:
    """Text parts tokenised, int lists taken as VRT cells."""
    out: list[int] = []
    for part in parts:
        if isinstance(part, str):
            out += codec.tokenizer.encode(part, add_special_tokens=False)
        else:
            out += [V + k for k in part]
    return out


def test_strings():
    assert vrt_string(7) == "<|VRT_7|>"
    assert vrt_strings([1, 20]) == "<|VRT_1|><|VRT_20|>"


def test_decode_renders_vrts_and_stops_at_eos(codec):
    eos = codec.tokenizer.eos_token_id
    ids = [*ids_of(codec, 'The "red circle" refers to ', [3, 14], " in this image."), eos, *ids_of(codec, "junk")]
    assert codec.decode(ids) == 'The "red circle" refers to <|VRT_3|><|VRT_14|> in this image.'


def test_parse_ovd_answer_groups_runs_and_reuses_labels(codec):
    ids = ids_of(codec, 'There are 2 "car" (', [5, 6], ", ", [9], '), 1 "dog" (', [40, 41, 42], ").")
    parsed = codec.parse([*ids, codec.tokenizer.eos_token_id], num_cells=64)
    assert [(o.label, o.vrt) for o in parsed.objects] == [("car", [5, 6]), ("car", [9]), ("dog", [40, 41, 42])]
    assert not parsed.truncated and not parsed.skipped
    for obj in parsed.objects:
        assert [ids[s] - V for s in obj.steps] == obj.vrt


def test_parse_reports_out_of_image_unlabelled_and_truncated(codec):
    ids = ids_of(codec, [1], ' the "cat" ', [2, 99, 3])
    parsed = codec.parse(ids, num_cells=50)
    assert [(o.label, o.vrt) for o in parsed.objects] == [("", [1]), ("cat", [2, 3])]
    assert parsed.truncated
    assert any("no quoted label" in s for s in parsed.skipped)
    assert any("VRT 99" in s and "outside the image" in s for s in parsed.skipped)


def test_prompt_vrts_become_vrt_ids(codec):
    text = "look at <|VRT_12|><|VRT_3|> please"
    codec.register_prompt_vrts([text])
    ids = torch.tensor([codec.tokenizer.encode(text, add_special_tokens=False)])
    model_ids = codec.to_model_ids(ids)[0].tolist()
    assert [i - V for i in model_ids if i >= V] == [12, 3]
    assert codec.decode(model_ids) == text


id_lists = st.lists(
    st.one_of(st.integers(0, 821), st.integers(V, V + 80), st.sampled_from([800, 802, 34])), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(ids=id_lists, cells=st.one_of(st.none(), st.integers(0, 80)))
def test_parser_never_raises_and_steps_point_at_vrts(codec, ids, cells):
    parsed = codec.parse(ids, num_cells=cells)
    eos_at = ids.index(802) if 802 in ids else len(ids)
    assert parsed.truncated == (802 not in ids)
    n_vrt = sum(1 for i in ids[:eos_at] if i >= V)
    assert sum(len(o.vrt) for o in parsed.objects) <= n_vrt
    for obj in parsed.objects:
        assert obj.vrt and len(obj.vrt) == len(obj.steps)
        assert all(s < eos_at and ids[s] - V == k for s, k in zip(obj.steps, obj.vrt))
        assert cells is None or all(k < cells for k in obj.vrt)
    assert isinstance(codec.decode(ids), str)

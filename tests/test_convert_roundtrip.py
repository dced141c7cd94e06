"""Every published-layout variant we can build: ``convert`` → ``load`` gives the logits of the released dir.

Variants: tied / untied output embedding × transformers-4.50 flat / 5.x nested ``config.json`` ×
single / sharded safetensors. The tensors are stored in bfloat16 (as released) while the config
asks for float32, so every tensor is cast on the way in: the path where a tied embedding used to
become two tensors ("unexpected keys [...embed_tokens.weight]" on load).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import noise_image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_convert import D, V, write_released
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import padt_core
from padt_core.cli import main
from padt_core.convert import ConversionError, convert

pytestmark = pytest.mark.usefixtures("one_thread")

_PADT_KEYS = ("vl_decoder", "use_visual_prototype_projection")
EMBED, LM_HEAD = "backbone.hf_model.model.language_model.embed_tokens.weight", "backbone.hf_model.lm_head.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """One tiny released checkpoint (flat config, tied, single file); variants are rewritten copies of it."""
    directory = tmp_path_factory.mktemp("base") / "PaDT_Tiny"
    return directory, write_released(directory)


def _nested(flat: dict) -> dict:
    """The transformers-5 layout of a flat config: text keys under ``text_config``, ``tie_word_embeddings`` on top."""
    hf = {k: v for k, v in flat.items() if k not in _PADT_KEYS}
    nested = Qwen2_5_VLConfig.from_dict(hf).to_diff_dict()
    assert "text_config" in nested and "hidden_size" not in nested
    return {**nested, **{k: flat[k] for k in _PADT_KEYS}}


def _variant(base_dir: Path, tensors: dict, out: Path, *, tied: bool, nested: bool, sharded: bool) -> Path:
    shutil.copytree(base_dir, out)
    (out / "model.safetensors").unlink()
    config = json.loads((base_dir / "config.json").read_text())
    config["tie_word_embeddings"] = tied
    config = _nested(config) if nested else config
    assert config["tie_word_embeddings"] is tied
    (out / "config.json").write_text(json.dumps(config, indent=2))
    stored = dict(tensors)
    if not tied:
        stored["lm_head.weight"] = torch.randn(V, D, generator=torch.Generator().manual_seed(7))
    stored = {k: v.to(torch.bfloat16) for k, v in stored.items()}
    if sharded:
        keys = sorted(stored)
        parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, part in parts.items():
            save_file({k: stored[k] for k in part}, str(out / name), metadata={"format": "pt"})
        weight_map = {k: name for name, part in parts.items() for k in part}
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(stored, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _reference(directory: Path) -> Qwen2_5_VLForConditionalGeneration:
    """The plain transformers model of a released dir: its config, its tensors renamed 4.50 -> 5.x by hand."""
    config = json.loads((directory / "config.json").read_text())
    hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config)).float().eval()
    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            if key.startswith("visual."):
                state["model." + key] = value
            elif key.startswith("model."):
                state["model.language_model." + key[len("model.") :]] = value
            elif key == "lm_head.weight":
                state[key] = value
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return hf


def _logits(model: padt_core.PaDTModel) -> tuple[torch.Tensor, torch.Tensor]:
    """PaDT logits over a prompt + a completion with VRTs, and the batch (for the reference)."""
    batch = model.prepare([noise_image(56, 84)], ["Find the car."])
    vocab = model.backbone.vocab_rows
    completion = torch.tensor([[*model.backbone.tokenizer.encode(' "car"', add_special_tokens=False), vocab + 2]])
    with torch.no_grad():
        return model(batch, completion_ids=completion).logits, batch


VARIANTS = [
    pytest.param(tied, nested, sharded, id=f"{'tied' if tied else 'untied'}-{'5x' if nested else '450'}-{shards}")
    for tied in (True, False)
    for nested in (False, True)
    for sharded, shards in ((False, "single"), (True, "sharded"))
]


@pytest.mark.parametrize(("tied", "nested", "sharded"), VARIANTS)
def test_convert_then_load_equals_the_released_dir(base, tmp_path, tied, nested, sharded):
    released = _variant(*base, tmp_path / "PaDT_Tiny", tied=tied, nested=nested, sharded=sharded)
    direct = padt_core.load(released)
    out = convert(released, tmp_path / "converted")
    loaded = padt_core.load(out)

    expected, batch = _logits(direct)
    got, _ = _logits(loaded)
    assert torch.equal(got, expected)
    # and the backbone computes what transformers computes from the released tensors
    reference = _reference(released)
    with torch.no_grad():
        plain = reference(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits
        ours = loaded.backbone.hf_model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits
    torch.testing.assert_close(ours[..., : plain.shape[-1]], plain, rtol=0, atol=1e-5)

    hf = loaded.backbone.hf_model
    embed, head = hf.model.language_model.embed_tokens.weight, hf.lm_head.weight
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    if tied:
        assert head is embed  # one parameter in memory, one tensor on disk
        assert len({EMBED, LM_HEAD} & saved) == 1
    else:
        assert head is not embed and not torch.equal(head, embed)
        assert {EMBED, LM_HEAD} <= saved


def test_cli_convert_of_a_tied_nested_checkpoint_loads(base, tmp_path, capsys):
    """The issue's case: 5.x config, tied embeddings, ``padt convert DIR OUT`` then ``padt_core.load(OUT)``."""
    released = _variant(*base, tmp_path / "PaDT_Tiny", tied=True, nested=True, sharded=False)
    out = tmp_path / "out"
    assert main(["convert", str(released), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = padt_core.load(out)
    assert model.backbone.hf_model.lm_head.weight is model.backbone.hf_model.model.language_model.embed_tokens.weight


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_a_truncated_released_file_is_one_error_naming_it(base, tmp_path, sharded):
    released = _variant(*base, tmp_path / "PaDT_Tiny", tied=True, nested=False, sharded=sharded)
    damaged = released / ("model-00002-of-00002.safetensors" if sharded else "model.safetensors")
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(ConversionError) as exc:
        convert(released, tmp_path / "out")
    assert str(exc.value).startswith(f"{damaged} is not a complete safetensors file")
    assert not (tmp_path / "out").exists()

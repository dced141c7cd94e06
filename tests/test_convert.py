"""Released checkpoints: a tiny one in the published layout (reference §10) converts, loads and decodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import noise_image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LogitsProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import padt_core
from padt_core.backbone import HubUnreachableError
from padt_core.cli import main
from padt_core.convert import ConversionError, convert, is_released_checkpoint

TINY_PROCESSOR = Path(padt_core.__file__).resolve().parents[1] / "plugins" / "backbones" / "assets" / "tiny_qwen"
V, D, VIS, FF_VIS, RANK = 832, 128, 64, 128, 16  # vocab rows, LLM width, ViT width (= decoder width), ViT MLP, vis_proj
FF = 128  # decoder MLP width (the reference: the ViT's, 3420)


pytestmark = pytest.mark.usefixtures("one_thread")


def _decoder_shapes(d: int, ff: int, llm: int) -> dict[str, tuple[int, ...]]:
    """``vl_decoder.*`` names and shapes of reference §10.2 at width ``d``, MLP ``ff``, LLM width ``llm``."""
    shapes: dict[str, tuple[int, ...]] = {
        "vp_embedding.weight": (1, d),
        "bbox_score_mask_tokens.weight": (3, d),
        "input_projection.0.weight": (llm,),
        "input_projection.1.weight": (d, llm),
        "input_projection.1.bias": (d,),
        "input_projection.3.weight": (d, d),
        "input_projection.3.bias": (d,),
        "high_res_norm.weight": (d,),
        "bbox_prediction.4.weight": (4, d),
        "bbox_prediction.4.bias": (4,),
        "score_prediction.weight": (1, d),
        "score_prediction.bias": (1,),
        "mask_output_upscaling1.0.weight": (d, d),
        "mask_output_upscaling1.0.bias": (d,),
        "mask_output_upscaling1.1.weight": (d,),
        "mask_output_upscaling2.0.weight": (d // 4, d // 4),
        "mask_output_upscaling2.0.bias": (d // 4,),
        "mask_output_mlp.4.weight": (d // 16, d),
        "mask_output_mlp.4.bias": (d // 16,),
    }
    for i in (0, 2):
        shapes |= {f"bbox_prediction.{i}.weight": (d, d), f"bbox_prediction.{i}.bias": (d,)}
        shapes |= {f"mask_output_mlp.{i}.weight": (d, d), f"mask_output_mlp.{i}.bias": (d,)}
    for block in ("low_res_transformer", "high_res_transformer1", "high_res_transformer2"):
        shapes |= {f"{block}.norm{i}.weight": (d,) for i in range(1, 7)}
        for attn in ("self_attn", "cross_attn_query_to_image", "cross_attn_image_to_query"):
            for proj in ("q_proj", "k_proj", "v_proj", "proj"):
                shapes |= {f"{block}.{attn}.{proj}.weight": (d, d), f"{block}.{attn}.{proj}.bias": (d,)}
        shapes |= {f"{block}.mlp.0.weight": (ff, d), f"{block}.mlp.0.bias": (ff,)}
        shapes |= {f"{block}.mlp.2.weight": (d, ff), f"{block}.mlp.2.bias": (d,)}
    return shapes


def _config(tokenizer) -> dict:
    """A transformers-4.50 style config.json (flat text keys, mrope in rope_scaling) + PaDT's additions."""
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in ("image_pad", "video_pad")}
    return {
        "architectures": ["PaDTForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": V,
        "hidden_size": D,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "torch_dtype": "float32",
        "image_token_id": ids["image_pad"],
        "video_token_id": ids["video_pad"],
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vision_config": {
            "depth": 2,
            "hidden_size": VIS,
            "intermediate_size": FF_VIS,
            "num_heads": 4,
            "out_hidden_size": D,
            "fullatt_block_indexes": [1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_chans": 3,
        },
        "vl_decoder": {
            "name": "PaDTDecoder",
            "attn_implementation": "flash_attention_2",
            "hidden_size": VIS,
            "intermediate_size": FF,
            "num_heads": 4,
            "llm_hidden_state": D,
            "spatial_merge_size": 2,
            "use_mask_loss": True,
        },
        "use_visual_prototype_projection": True,
    }


def _to_450_name(key: str) -> str:
    """Transformers 5 Qwen2.5-VL key -> the 4.50 key the released checkpoints use (reference §10.2)."""
    for new, old in (("model.visual.", "visual."), ("model.language_model.", "model.")):
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def write_released(directory: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny PaDT checkpoint in the published layout; returns its tensors."""
    directory.mkdir(parents=True)
    processor = AutoProcessor.from_pretrained(TINY_PROCESSOR)
    tok = processor.tokenizer
    config = _config(tok)
    # The released tokenizer was padded to V with special fillers and holds VRT tokens (reference §2.1).
    from tokenizers import AddedToken

    fillers = [AddedToken(f"<|empty_token_{i}|>", special=True, normalized=False) for i in range(V - len(tok))]
    tok.add_tokens(fillers, special_tokens=True)
    tok.add_tokens([AddedToken(f"<|VRT_{k}|>", normalized=False) for k in range(64)])
    assert tok.convert_tokens_to_ids("<|VRT_0|>") == V
    processor.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [tok.eos_token_id], "pad_token_id": tok.pad_token_id, "repetition_penalty": 1.05})
    )
    gen = torch.Generator().manual_seed(seed)
    hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config))
    tensors = {_to_450_name(k): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
    tensors |= {
        "vis_norm.weight": torch.randn(D, generator=gen),
        "vis_norm.bias": torch.randn(D, generator=gen),
        "vis_proj.0.weight": torch.randn(RANK, D, generator=gen) * 0.1,
        "vis_proj.1.weight": torch.randn(D, RANK, generator=gen) * 0.1,
    }
    for key, shape in _decoder_shapes(VIS, FF, D).items():
        tensors[f"vl_decoder.{key}"] = torch.randn(shape, generator=gen) * 0.1
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return tensors


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("released") / "PaDT_Tiny"
    return directory, write_released(directory)


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory) -> Path:
    return convert(released[0], tmp_path_factory.mktemp("converted") / "model")


def _copy_with(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# --- the published layout's keys, as §10.2 lists them ------------------------------------------------------


def test_the_fixture_has_the_published_layout(released):
    directory, tensors = released
    assert is_released_checkpoint(directory)
    assert tensors["vl_decoder.bbox_score_mask_tokens.weight"].shape == (3, VIS)
    assert any(k.startswith("visual.blocks.") for k in tensors) and "model.embed_tokens.weight" in tensors
    assert not any(k.startswith("model.language_model.") or k.startswith("model.visual.") for k in tensors)


# --- convert, load, decode ------------------------------------------------------------------------------------


def test_converted_directory_loads_with_every_tensor_in_place(released, converted):
    _, tensors = released
    model = padt_core.load(converted)
    recipe = model.recipe
    assert recipe.decoder.layout == "reference"  # converted checkpoints default to the reference layout
    assert recipe.released_checkpoint == str(released[0])
    assert (recipe.decoder.trunk.hidden_size, recipe.decoder.trunk.intermediate_size) == (VIS, FF)
    assert (recipe.vrt.projection, recipe.vrt.rank, recipe.vrt.position) == (True, RANK, "none")
    assert recipe.generation.use_checkpoint_config and recipe.generation.max_new_tokens == 1024
    state = model.state_dict()
    tokens = tensors["vl_decoder.bbox_score_mask_tokens.weight"]
    pairs = {
        "backbone.hf_model.model.visual.blocks.1.attn.qkv.weight": "visual.blocks.1.attn.qkv.weight",
        "backbone.hf_model.model.visual.merger.mlp.2.bias": "visual.merger.mlp.2.bias",
        "backbone.hf_model.model.language_model.layers.1.mlp.down_proj.weight": "model.layers.1.mlp.down_proj.weight",
        "backbone.hf_model.lm_head.weight": "model.embed_tokens.weight",  # tied (3B-style)
        "projection.norm.bias": "vis_norm.bias",
        "projection.down.weight": "vis_proj.0.weight",
        "projection.up.weight": "vis_proj.1.weight",
        "decoder.trunk.vrt_embedding.weight": "vl_decoder.vp_embedding.weight",
        "decoder.trunk.input_projection.3.bias": "vl_decoder.input_projection.3.bias",
        "decoder.trunk.high_res_transformer2.cross_attn_image_to_query.proj.weight": (
            "vl_decoder.high_res_transformer2.cross_attn_image_to_query.proj.weight"
        ),
        "decoder.heads.box.mlp.4.weight": "vl_decoder.bbox_prediction.4.weight",
        "decoder.heads.score.linear.bias": "vl_decoder.score_prediction.bias",
        "decoder.heads.mask.upscale1_norm.weight": "vl_decoder.mask_output_upscaling1.1.weight",
        "decoder.heads.mask.upscale2.weight": "vl_decoder.mask_output_upscaling2.0.weight",
        "decoder.heads.mask.object_mlp.4.bias": "vl_decoder.mask_output_mlp.4.bias",
    }
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], tensors[theirs], rtol=0, atol=0, msg=ours)
    for i, head in enumerate(("box", "score", "mask")):
        torch.testing.assert_close(state[f"decoder.heads.{head}.query"], tokens[i : i + 1], rtol=0, atol=0)
    # every released tensor is somewhere in the model (values, counted with multiplicity)
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in model.parameters())


def test_converted_model_predicts_objects(converted):
    model = padt_core.load(converted)
    tok = model.backbone.tokenizer
    vocab = model.backbone.vocab_rows
    script = [
        *tok.encode(' "car"', add_special_tokens=False),
        vocab + 3,
        vocab + 4,
        vocab + 9,
        model.backbone.eos_token_ids[0],
    ]

    class Scripted(LogitsProcessor):
        """Forces a fixed answer: one object, three VRTs (a random model would rarely emit any)."""

        def __init__(self, prompt_len: int) -> None:
            self.prompt_len = prompt_len

        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - self.prompt_len
            forced = torch.full_like(scores, torch.finfo(scores.dtype).min)
            forced[:, script[min(step, len(script) - 1)]] = 0
            return forced

    image = noise_image(84, 196)  # VRT grid 3 x 7: wider than one 4-cell window
    prompt_len = model.prepare([image], ["Find the car."])["input_ids"].shape[1]
    (pred,) = model.predict(image, "Find the car.", max_new_tokens=8, logits_processor=[Scripted(prompt_len)])
    assert [(o.label, o.vrt) for o in pred.objects] == [("car", [3, 4, 9])]
    obj = pred.objects[0]
    assert len(obj.box) == 4 and 0 <= obj.score <= 1
    assert obj.mask.shape == (84, 196)


def test_load_converts_a_released_directory_on_the_fly(released):
    model = padt_core.load(released[0])
    assert model.recipe.decoder.layout == "reference"
    assert model.recipe.name == "PaDT_Tiny"


def test_cli_convert(released, tmp_path, capsys):
    out = tmp_path / "cli_model"
    assert main(["convert", str(released[0]), str(out), "generation.max_new_tokens=32"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert padt_core.load(out).recipe.generation.max_new_tokens == 32
    assert main(["convert", str(released[0]), str(out)]) == 2  # exists: refuse without --overwrite
    assert "overwrite" in capsys.readouterr().err


# --- sharded input -------------------------------------------------------------------------------------------


def test_sharded_checkpoint_converts_to_the_same_weights(released, converted, tmp_path):
    src, tensors = released
    sharded = tmp_path / "sharded"
    shutil.copytree(src, sharded)
    (sharded / "model.safetensors").unlink()
    keys = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in parts.items():
        save_file({k: tensors[k] for k in part}, str(sharded / name), metadata={"format": "pt"})
    weight_map = {k: name for name, part in parts.items() for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = convert(sharded, tmp_path / "out")
    a, b = load_file(str(out / "model.safetensors")), load_file(str(converted / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- every key accounted for ------------------------------------------------------------------------------------


def test_an_extra_key_is_an_error_naming_it(released, tmp_path):
    src, tensors = released
    bad = _copy_with(src, tmp_path / "extra", {**tensors, "vl_decoder.extra_head.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match=r"1 unmapped checkpoint keys.*vl_decoder\.extra_head\.weight"):
        convert(bad, tmp_path / "out")


def test_a_missing_key_is_an_error_naming_it(released, tmp_path):
    src, tensors = released
    drop = {"vl_decoder.score_prediction.bias", "visual.blocks.0.norm1.weight"}
    bad = _copy_with(src, tmp_path / "missing", {k: v for k, v in tensors.items() if k not in drop})
    with pytest.raises(ConversionError) as exc:
        convert(bad, tmp_path / "out")
    message = str(exc.value)
    assert "2 missing model keys" in message
    assert "decoder.heads.score.linear.bias" in message
    assert "backbone.hf_model.model.visual.blocks.0.norm1.weight" in message
    assert not (tmp_path / "out").exists()


def test_a_recipe_without_the_mask_head_leaves_its_keys_unmapped(released, tmp_path):
    with pytest.raises(ConversionError) as exc:
        convert(released[0], tmp_path / "out", overrides={"decoder.heads": ["box", "score"]})
    message = str(exc.value)
    assert "vl_decoder.mask_output_mlp.4.weight" in message
    assert "vl_decoder.bbox_score_mask_tokens.weight" in message  # never split with a head missing


def test_a_wrong_shape_is_an_error_naming_both(released, tmp_path):
    src, tensors = released
    bad = _copy_with(src, tmp_path / "shape", {**tensors, "vl_decoder.score_prediction.weight": torch.zeros(2, VIS)})
    with pytest.raises(
        ConversionError, match=r"decoder\.heads\.score\.linear\.weight: checkpoint \(2, 64\), model \(1, 64\)"
    ):
        convert(bad, tmp_path / "out")


def test_a_stored_tied_output_embedding_must_equal_the_input_one(released, tmp_path):
    src, tensors = released
    same = _copy_with(
        src, tmp_path / "tied", {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}
    )
    convert(same, tmp_path / "ok")  # stored but identical: fine
    other = _copy_with(src, tmp_path / "untied", {**tensors, "lm_head.weight": torch.zeros(V, D)})
    with pytest.raises(ConversionError, match="lm_head.weight differs from"):
        convert(other, tmp_path / "bad")


def test_not_a_released_checkpoint(tmp_path, converted):
    with pytest.raises(ConversionError, match="no 'vl_decoder'"):
        convert(converted, tmp_path / "out")  # a padt directory is not a published one


# --- hub ids offline ---------------------------------------------------------------------------------------------


def test_a_hub_id_offline_raises_the_hub_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError) as exc:
        padt_core.load("PaDT-MLLM/PaDT_Pro_3B")
    message = str(exc.value)
    assert "PaDT-MLLM/PaDT_Pro_3B" in message and "hub" in message and "local" in message


def test_cli_predict_takes_a_released_directory(released, tmp_path, capsys):
    image = tmp_path / "x.png"
    noise_image(56, 84).save(image)
    argv = ["predict", str(released[0]), "--image", str(image), "--prompt", "Find the car.", "--max-new-tokens", "4"]
    assert main(argv) == 0
    assert '"objects"' in capsys.readouterr().out

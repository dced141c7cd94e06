"""LLaVA-style backbone (``llava``): raster order, merged tokens = the LLM's image tokens, mixed sizes,
text-only batches, the llava-hf source, recipes, a training step; and the main core checks of
``test_model.py`` on llava-hf (test_model.py itself runs them on tiny_llava)."""

from __future__ import annotations

import numpy as np
import padt_plugins.backbones.llava as llava_plugin
import pytest
import torch
from einops import rearrange
from helpers import noise_image, sharpen
from PIL import Image
from torch import nn

import padt_core
from padt_core.backbone import HubUnreachableError
from padt_core.plugins import get_registry, register_plugin
from padt_core.recipe import RecipeError

if "llava" not in get_registry("backbones").names():  # before the entry point is installed
    register_plugin(llava_plugin)

# test_model.py runs its checks on tiny_llava itself (fixtures parametrised over TINY_RECIPES); the main
# ones are called directly on the llava-hf source below.
from test_model import test_forward_text_logits_equal_stock_model as check_forward_equals_stock
from test_model import test_generate_matches_teacher_forced_forward as check_generate_matches_forward
from test_model import test_save_load_round_trip as check_save_load_round_trip
from test_model import test_vrt_columns_are_per_sample_and_padding_is_finite as check_vrt_columns

TINY_LM = {
    "model_type": "qwen2",
    "vocab_size": 832,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def hf_llava_recipe(strategy: str = "default", layer: int = -2) -> dict:
    """transformers' LlavaForConditionalGeneration from an inline config: tiny CLIP (112 px, 14-px patches)."""
    return {
        "name": "tiny_hf_llava",
        "backbone": {
            "name": "llava",
            "source": "hf_llava",
            "tokenizer": "builtin:tiny_qwen",
            "config": {
                "vision_config": {
                    "model_type": "clip_vision_model",
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "image_size": 112,
                    "patch_size": 14,
                },
                "text_config": TINY_LM,
                "vision_feature_layer": layer,
                "vision_feature_select_strategy": strategy,
                "image_seq_length": 64,
            },
        },
        "vrt": {"rank": 8},
        "generation": {"max_new_tokens": 16},
    }


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(recipe) -> padt_core.PaDTModel:
    torch.manual_seed(0)
    model = padt_core.build(recipe).eval()
    sharpen(model)
    return model


@pytest.fixture(scope="module")
def llava():
    return _build("tiny_llava")


@pytest.fixture(scope="module")
def hf_llava():
    return _build(hf_llava_recipe())


# --- raster order ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identity_vision_model():
    model = padt_core.build("tiny_llava").eval()
    vision = model.backbone.hf_model.vision
    # No attention/MLP and no position table: the patch tokens are exactly the patch embeddings.
    vision.blocks = nn.Sequential(*[nn.Identity() for _ in vision.blocks])
    with torch.no_grad():
        vision.pos_embed.zero_()
    return model


def patch_colour_image(rows: int, cols: int, patch: int = 14, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (rows, cols, 3), dtype=np.uint8).repeat(patch, 0).repeat(patch, 1)


@pytest.mark.parametrize(("rows", "cols"), [(10, 16), (18, 14), (4, 24)])
def test_fine_features_are_raster_ordered(identity_vision_model, rows, cols):
    model = identity_vision_model
    pixels = patch_colour_image(rows, cols)
    batch = model.prepare([Image.fromarray(pixels)], ["describe"])
    (features,) = model.encode(batch).features
    assert features.fine_grid == (rows, cols)
    assert features.grid == (rows // 2, cols // 2)
    assert features.image_size == (rows * 14, cols * 14)
    assert features.cell_size == 28 == model.backbone.cell_size
    assert batch["image_grids"] == [features.grid]

    proc = model.backbone.processor
    mean = torch.tensor(proc.image_mean).view(3, 1, 1)
    std = torch.tensor(proc.image_std).view(3, 1, 1)
    image = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    patches = image.unfold(1, 14, 14).unfold(2, 14, 14)  # [3, rows, cols, 14, 14]
    patches = patches.permute(1, 2, 0, 3, 4).reshape(rows * cols, -1)  # patch (r, c) at row r * cols + c
    conv = model.backbone.hf_model.vision.patch_embed.proj
    expected = patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias
    torch.testing.assert_close(features.fine, expected, atol=1e-4, rtol=1e-4)


def test_merged_tokens_are_the_2x2_blocks_and_what_the_llm_sees(llava):
    """VRT cell (r, c) = fine cells (2r + a, 2c + b); its token is exactly the LLM's input at that image position."""
    hf = llava.backbone.hf_model
    batch = llava.prepare([noise_image(140, 252)], ["hi"])
    (features,) = llava.encode(batch).features
    assert features.grid == (5, 9) and features.fine_grid == (10, 18)
    fine = features.fine.reshape(10, 18, -1)
    blocks = rearrange(fine, "(h a) (w b) d -> (h w) (a b d)", a=2, b=2)
    with torch.no_grad():
        torch.testing.assert_close(features.tokens, hf.projector(blocks))

    seen = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    handle = hf.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(**{k: v for k, v in batch.items() if k not in ("image_index", "image_grids")})  # stock: from pixels
    finally:
        handle.remove()
    image_positions = batch["input_ids"][0] == hf.config.image_token_id
    assert int(image_positions.sum()) == features.num_cells
    torch.testing.assert_close(seen["embeds"][0, image_positions], features.tokens)


@pytest.mark.parametrize(("merge", "mode"), [(1, "concat"), (2, "mean"), (4, "concat")])
def test_merge_options(merge, mode):
    model = padt_core.build("tiny_llava", {"backbone.merge": merge, "backbone.merge_mode": mode}).eval()
    assert model.backbone.cell_size == 14 * merge
    batch = model.prepare([noise_image(224, 336)], ["hi"])
    (features,) = model.encode(batch).features
    assert features.fine_grid == (16, 24) and features.grid == (16 // merge, 24 // merge)
    assert int((batch["input_ids"] == model.backbone.hf_model.config.image_token_id).sum()) == features.num_cells
    fine = features.fine.reshape(16, 24, -1)
    if mode == "mean":
        blocks = rearrange(fine, "(h a) (w b) d -> (h w) (a b) d", a=merge, b=merge).mean(1)
    else:
        blocks = rearrange(fine, "(h a) (w b) d -> (h w) (a b d)", a=merge, b=merge)
    with torch.no_grad():
        torch.testing.assert_close(features.tokens, model.backbone.hf_model.projector(blocks), atol=1e-5, rtol=1e-5)
    assert model.generate(batch, max_new_tokens=2).shape == (1, 2)


def test_tiny_mixed_and_text_only_images(llava):
    images = [noise_image(12, 40), noise_image(300, 100), None, noise_image(90, 60)]
    batch = llava.prepare(images, ["a", "b", "c", "d"])
    encoded = llava.encode(batch)
    assert encoded.image_index == [0, 1, -1, 2]
    small, tall, other = encoded.features
    assert min(small.image_size) >= 28  # upscaled, not a crash
    assert tall.grid[0] > tall.grid[1]
    assert encoded.bank.valid.sum(1).tolist() == [small.num_cells, tall.num_cells, 0, other.num_cells]
    assert batch["image_grids"] == [small.grid, tall.grid, other.grid]
    # Zero padding of pixel_values to the largest image does not leak into any image's features.
    for image, feats in zip([images[0], images[1], images[3]], encoded.features):
        (alone,) = llava.encode(llava.prepare([image], ["x"])).features
        torch.testing.assert_close(alone.tokens, feats.tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.fine, feats.fine, atol=1e-5, rtol=1e-5)
    out = llava.generate(batch, encoded=encoded, max_new_tokens=4)
    assert out.shape[0] == 4


def test_text_only_batch(llava):
    batch = llava.prepare([None, None], ["hello", "no image here at all"])
    assert "pixel_values" not in batch and batch["image_grids"] == []
    encoded = llava.encode(batch)
    assert encoded.features == [] and encoded.bank.width == 0
    out = llava.generate(batch, encoded=encoded, max_new_tokens=5, num_beams=2)
    assert out.shape[0] == 2 and int(out.max()) < llava.backbone.vocab_rows
    preds = llava.predict([None], "hi", max_new_tokens=3)
    assert preds[0].objects == []


def test_encoded_features_survive_beam_search(llava):
    """Beam expansion must not mutate the Encoded that predict() reuses for the teacher-forced pass."""
    batch = llava.prepare([noise_image(100, 200), noise_image(60, 60)], ["a", "b"])
    encoded = llava.encode(batch)
    before = [t.shape for t in encoded.model_kwargs["mm_encoder_outputs"]["image"].pooler_output]
    llava.generate(batch, encoded=encoded, max_new_tokens=3, num_beams=3, num_return_sequences=2)
    after = [t.shape for t in encoded.model_kwargs["mm_encoder_outputs"]["image"].pooler_output]
    assert before == after
    with torch.no_grad():
        llava(batch, encoded=encoded)


def test_processor_resizes_within_bounds_keeping_aspect(llava):
    proc = llava.backbone.processor
    for h, w in [(480, 640), (1000, 90), (28, 28), (2000, 2000), (5, 5000)]:
        th, tw = proc.target_size(Image.new("RGB", (w, h)))
        assert th % 28 == 0 and tw % 28 == 0 and th >= 28 and tw >= 28
        assert th * tw <= proc.max_pixels
        assert th * tw >= proc.min_pixels or min(th, tw) == 28
        if min(h, w) >= 28 * 4:
            assert abs(np.log((th / tw) / (h / w))) < 0.3
    data = llava.backbone.hf_model.vision.pretrained_cfg
    assert proc.image_mean == list(data["mean"]) and proc.image_std == list(data["std"])


# --- llava-hf source -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_hf_llava_fixed_grid_and_tokens(strategy):
    model = _build(hf_llava_recipe(strategy, layer=-1 if strategy == "full" else -2))
    hf = model.backbone.hf_model
    batch = model.prepare([noise_image(140, 252), noise_image(40, 30), None], ["a", "b", "c"])
    encoded = model.encode(batch)
    assert [f.grid for f in encoded.features] == [(8, 8), (8, 8)]  # fixed grid, aspect ratio not kept
    assert batch["image_grids"] == [(8, 8), (8, 8)]
    assert all(f.image_size == (112, 112) and f.cell_size == 14 and f.fine.shape == (64, 32) for f in encoded.features)
    placeholders = (batch["input_ids"] == hf.config.image_token_id).sum(1).tolist()
    assert placeholders == [64 + (strategy == "full"), 64 + (strategy == "full"), 0]
    with torch.no_grad():
        stock = hf.model.get_image_features(
            batch["pixel_values"],
            vision_feature_layer=hf.config.vision_feature_layer,
            vision_feature_select_strategy=strategy,
        ).pooler_output
    for llm_tokens, feats, ref in zip(
        encoded.model_kwargs["mm_encoder_outputs"]["image"].pooler_output, encoded.features, stock
    ):
        torch.testing.assert_close(llm_tokens, ref)  # what the LLM sees
        torch.testing.assert_close(feats.tokens, ref[-64:])  # VRTs: the patch tokens (CLS dropped)
    out = model.generate(batch, encoded=encoded, max_new_tokens=3, num_beams=2)
    assert out.shape[0] == 3


def test_hf_llava_passes_the_core_checks(hf_llava, tmp_path):
    """The main test_model checks, called directly on the llava-hf source (left padding, mixed sizes)."""
    batch = hf_llava.prepare([noise_image(140, 252, 1), noise_image(90, 60, 2)], ["find the red circle", "hi"])
    check_generate_matches_forward(hf_llava, batch)
    check_forward_equals_stock(hf_llava, batch)
    check_vrt_columns(hf_llava, batch)
    check_save_load_round_trip(hf_llava, batch, tmp_path)


# --- recipes -----------------------------------------------------------------------------------------


def test_recipe_errors_name_the_key():
    with pytest.raises(RecipeError, match="kwrags"):
        padt_core.load_recipe("tiny_llava", {"backbone.vision.kwrags": {}})
    with pytest.raises(RecipeError, match="hidden_sise"):
        padt_core.load_recipe("tiny_llava", {"backbone.language_model.config.hidden_sise": 3})
    with pytest.raises(RecipeError, match="hf_llava"):
        padt_core.load_recipe("tiny_llava", {"backbone.pretrained": "llava-hf/llava-1.5-7b-hf"})
    with pytest.raises(RecipeError, match="merge"):
        padt_core.load_recipe(hf_llava_recipe(), {"backbone.merge": 2})
    with pytest.raises(RecipeError, match="image_szie"):
        padt_core.load_recipe(hf_llava_recipe(), {"backbone.config.vision_config.image_szie": 3})


def test_real_recipe_validates_and_fails_offline_with_the_hub_error(monkeypatch):
    import huggingface_hub.constants

    recipe = padt_core.load_recipe("llava_padt")
    assert recipe.backbone.vision.model == "vit_large_patch14_clip_336.openai"
    assert recipe.backbone.language_model.pretrained == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (recipe.backbone.merge, recipe.backbone.dtype) == (2, "bfloat16")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError) as exc:
        padt_core.build("llava_padt")
    assert "hub" in str(exc.value) and "local" in str(exc.value) and "Qwen/Qwen2.5-1.5B-Instruct" in str(exc.value)
    # The timm tower alone (tokenizer and LM offline): its own message, naming the checkpoint key.
    with pytest.raises(HubUnreachableError, match=r"backbone\.vision\.checkpoint") as exc:
        padt_core.build(
            "tiny_llava",
            {"backbone.vision.model": "vit_tiny_patch16_224.augreg_in21k", "backbone.vision.pretrained": True},
        )
    assert "vit_tiny_patch16_224.augreg_in21k" in str(exc.value)


def test_vision_weights_from_a_local_file(llava, tmp_path):
    """``backbone.vision.checkpoint``: the offline way to pretrained timm weights."""
    from safetensors.torch import save_file

    vision = llava.backbone.hf_model.vision
    save_file({k: v.contiguous() for k, v in vision.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    other = padt_core.build(
        "tiny_llava", {"backbone.vision.checkpoint": str(tmp_path / "vit.safetensors"), "backbone.seed": 5}
    )
    for (name, a), b in zip(vision.state_dict().items(), other.backbone.hf_model.vision.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(FileNotFoundError, match="backbone.vision.checkpoint"):
        padt_core.build("tiny_llava", {"backbone.vision.checkpoint": str(tmp_path / "nope.safetensors")})


# --- training step -----------------------------------------------------------------------------------


def test_training_step_updates_every_part(tmp_path):
    from padt_core.data.sample import ObjectAnn, Sample
    from padt_core.train.collator import PaDTCollator
    from padt_core.train.run import apply_freezing
    from padt_core.train.step import compute_losses

    model = padt_core.build("tiny_llava_shapes", {"train.prototype_warmup_steps": 0}).train()
    samples = []
    for i, (h, w) in enumerate([(120, 200), (224, 112)]):
        path = tmp_path / f"{i}.png"
        noise_image(h, w, seed=i).save(path)
        samples.append(
            Sample(
                id=f"t/{i}",
                image=str(path),
                task="rec",
                prompt="find the square",
                answer='The "square" refers to <|Obj_0|> in this image.',
                objects=[ObjectAnn(label="square", box=(0.1, 0.2, 0.6, 0.7))],
            )
        )
    model.gradient_checkpointing_enable()  # as Trainer does for train.gradient_checkpointing (real recipes)
    assert model.backbone.hf_model.vision.grad_checkpointing
    batch = PaDTCollator(model, vrt_per_object=3)(samples)
    losses = compute_losses(model, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    hf = model.backbone.hf_model
    for name, param in [
        ("vision", hf.vision.patch_embed.proj.weight),
        ("projector", hf.projector.linear_1.weight),
        ("lm", hf.get_input_embeddings().weight),
        ("prototypes", model.projection.norm.weight),  # zero-init LayerNorm: the first to move
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert any(p.grad is not None for p in model.decoder.parameters())

    frozen = padt_core.load_recipe("tiny_llava_shapes", {"train.freeze_vision": True})
    apply_freezing(model, frozen)
    assert not any(p.requires_grad for m in model.backbone.vision_modules() for p in m.parameters())
    assert hf.get_input_embeddings().weight.requires_grad

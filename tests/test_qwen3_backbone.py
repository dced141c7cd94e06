"""Qwen3-VL and Qwen3.5 backbones: raster order, DeepStack at the image tokens only, hybrid caches in
generate, bad input, real recipes offline, a training step and predict with the decoder.

test_model.py runs the core checks (generate = teacher-forced forward, stock-model equality, decoding
strategies, save/load) on tiny_qwen3_vl and tiny_qwen3_5 (conftest.TINY_RECIPES).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import noise_image, sharpen
from PIL import Image
from torch import nn

import padt_core
from padt_core.backbone import HubUnreachableError
from padt_core.recipe import load_recipe
from padt_core.sizes import parameter_counts

QWEN3 = ("tiny_qwen3_vl", "tiny_qwen3_5")
DECODER = {"trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=QWEN3)
def qwen3(request, tiny_models):
    return tiny_models(request.param)


@pytest.fixture(scope="module")
def qwen3_vl(tiny_models):
    return tiny_models("tiny_qwen3_vl")


# --- raster order ------------------------------------------------------------------------------------


def patch_colour_image(rows: int, cols: int, patch: int = 16, seed: int = 0) -> np.ndarray:
    """An image whose every 16-px patch has its own flat colour."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (rows, cols, 3), dtype=np.uint8).repeat(patch, 0).repeat(patch, 1)


@pytest.fixture(scope="module", params=QWEN3)
def identity_tower(request):
    model = padt_core.build(recipe=request.param).eval()
    visual = model.backbone.hf_model.model.visual
    # No blocks and no position table: the pre-merger states are exactly the patch embeddings, in the tower's order.
    visual.blocks = nn.ModuleList()
    with torch.no_grad():
        visual.pos_embed.weight.zero_()
    return model


@pytest.mark.parametrize(("rows", "cols"), [(10, 16), (18, 14), (4, 24)])
def test_fine_and_merged_features_are_raster_ordered(identity_tower, rows, cols):
    model = identity_tower
    pixels = patch_colour_image(rows, cols)
    batch = model.prepare([Image.fromarray(pixels)], ["describe"])
    (features,) = model.encode(batch).features
    assert (features.fine_grid, features.grid) == ((rows, cols), (rows // 2, cols // 2))
    assert features.image_size == (rows * 16, cols * 16)
    assert features.cell_size == 32

    # Direct patch embedding of the image itself, patch (r, c) at raster row r * cols + c.
    image = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    patches = image.unfold(1, 16, 16).unfold(2, 16, 16).permute(1, 2, 0, 3, 4)  # [rows, cols, 3, 16, 16]
    patches = patches.reshape(rows * cols, 3, 1, 16, 16).expand(-1, -1, 2, -1, -1)
    visual = model.backbone.hf_model.model.visual
    with torch.no_grad():
        expected = visual.patch_embed(patches.reshape(rows * cols, -1))
        torch.testing.assert_close(features.fine, expected, atol=1e-4, rtol=1e-4)
        # VRT cell (r, c) is the merger of fine cells (2r + a, 2c + b), a and b in raster order.
        cell_blocks = [
            [(2 * r + a) * cols + 2 * c + b for a in range(2) for b in range(2)]
            for r in range(rows // 2)
            for c in range(cols // 2)
        ]
        merged = visual.merger(expected[torch.tensor(cell_blocks).flatten()])
    torch.testing.assert_close(features.tokens, merged, atol=1e-4, rtol=1e-4)


# --- image tokens and DeepStack ----------------------------------------------------------------------


def test_tokens_and_deepstack_are_the_stock_model_features(qwen3):
    batch = qwen3.prepare([noise_image(140, 252), noise_image(64, 96, 1)], ["hi", "there"])
    encoded = qwen3.encode(batch)
    hf = qwen3.backbone.hf_model
    with torch.no_grad():
        stock = hf.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    for ours, theirs in zip(encoded.features, stock.pooler_output):
        torch.testing.assert_close(ours.tokens, theirs)
    assert [f.grid for f in encoded.features] == [(4, 8), (2, 3)]
    image = encoded.model_kwargs["mm_encoder_outputs"]["image"]
    stock_deepstack = getattr(stock, "deepstack_features", None)
    if qwen3.recipe.backbone.name == "qwen3_vl":
        assert len(image.deepstack_features) == len(hf.config.vision_config.deepstack_visual_indexes) == 2
        for ours, theirs in zip(image.deepstack_features, stock_deepstack):
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a, b)
    else:
        assert stock_deepstack is None and not hasattr(image, "deepstack_features")


def test_deepstack_reaches_image_tokens_only_not_vrts(qwen3_vl):
    model = qwen3_vl
    batch = model.prepare([noise_image(140, 252), noise_image(90, 60, 2)], ["what is at <|VRT_3|>?", "hi"])
    encoded = model.encode(batch)
    vocab = model.backbone.vocab_rows
    assert (batch["input_ids"][0] == vocab + 3).sum() == 1  # a VRT in the prompt too
    completion = torch.tensor([[vocab + 3, vocab + 5, 11], [vocab + 1, 12, 13]])
    language_model = model.backbone.hf_model.model.language_model
    masks = []
    original = language_model._deepstack_process

    def spy(hidden, visual_pos_masks, embeds):
        masks.append(visual_pos_masks.clone())
        return original(hidden, visual_pos_masks, embeds)

    language_model._deepstack_process = spy
    try:
        with torch.no_grad():
            logits = model(batch, completion, encoded=encoded).logits
    finally:
        del language_model._deepstack_process
    ids = torch.cat([batch["input_ids"], completion], dim=1)
    image_token = model.backbone.hf_model.config.image_token_id
    assert len(masks) == 2  # one per DeepStack layer
    for mask in masks:
        assert torch.equal(mask, ids == image_token)
        assert not mask[ids >= vocab].any()  # VRT input embeddings (prototypes) get no DeepStack feature

    # The features matter: without them the logits change.
    image = encoded.model_kwargs["mm_encoder_outputs"]["image"]
    saved = image.deepstack_features
    image.deepstack_features = [[torch.zeros_like(t) for t in layer] for layer in saved]
    try:
        with torch.no_grad():
            without = model(batch, completion, encoded=encoded).logits
    finally:
        image.deepstack_features = saved
    assert not torch.allclose(logits, without)


# --- caches through generate -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"num_beams": 3}, {"num_beams": 2, "num_return_sequences": 2}])
def test_cached_generation_equals_uncached(qwen3, kwargs):
    """The hybrid cache (Qwen3.5: conv + recurrent state per linear layer, KV per full layer) and the plain
    KV cache give the ids a full recomputation at every step gives, for greedy and beam search."""
    batch = qwen3.prepare([noise_image(140, 252, 1), noise_image(90, 60, 2)], ["find the red circle", "hi"])
    cached = qwen3.generate(batch, max_new_tokens=8, **kwargs)
    uncached = qwen3.generate(batch, max_new_tokens=8, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert (cached >= qwen3.backbone.vocab_rows).any()


def test_hybrid_cache_holds_linear_and_full_attention_layers(tiny_models):
    model = tiny_models("tiny_qwen3_5")
    assert model.backbone.hf_model.config.text_config.layer_types == ["linear_attention", "full_attention"]
    batch = model.prepare([noise_image(64, 64)], ["hi"])
    out = model.generate(batch, max_new_tokens=3, return_dict_in_generate=True)
    kinds = [type(layer).__name__ for layer in out.cache.layers]
    assert len(kinds) == 2 and kinds[0] != kinds[1], kinds


def test_sampling_is_seeded(qwen3):
    batch = qwen3.prepare([noise_image(96, 128)], ["describe"])
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(qwen3.generate(batch, max_new_tokens=8, do_sample=True, top_k=5))
    assert torch.equal(*runs)


# --- bad input ---------------------------------------------------------------------------------------


def test_image_smaller_than_one_cell_is_upscaled(qwen3):
    batch = qwen3.prepare([noise_image(12, 40), noise_image(5, 5, 1), None], ["a", "b", "c"])
    encoded = qwen3.encode(batch)
    small, dot = encoded.features
    assert small.image_size[0] >= 32 and small.grid[1] > small.grid[0]  # short side covers a cell, aspect kept
    assert dot.grid == (2, 2)  # 5 x 5 px: upscaled to one cell, then to min_pixels (4 cells)
    assert encoded.bank.valid.sum(1).tolist() == [small.num_cells, dot.num_cells, 0]


def test_video_input_is_a_clear_error(qwen3):
    backbone = qwen3.backbone
    frames = [noise_image(64, 64, i) for i in range(4)]
    # A list of frames is a sample with several images (docs/multi-image.md): one placeholder for four is named.
    with pytest.raises(ValueError, match="sample 0 has 4 image\\(s\\) but its text holds 1 '<\\|image_pad\\|>'"):
        backbone.process([backbone.format_prompt("x", True)], [frames])
    prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what happens?<|im_end|>\n"
    with pytest.raises(ValueError, match="prompt 0 holds the video placeholder '<\\|video_pad\\|>'"):
        backbone.process([prompt], [None])
    gif = Image.new("RGB", (64, 64))
    gif.n_frames = 3  # what PIL reports for an animated GIF / multi-frame file
    with pytest.raises(ValueError, match="3 frames"):
        backbone.process([backbone.format_prompt("x", True)], [gif])


@pytest.mark.parametrize(("plugin", "other"), [("tiny_qwen3_vl", "tiny_qwen3_5"), ("tiny_qwen3_5", "tiny_qwen")])
def test_checkpoint_of_another_model_type_is_refused(tiny_models, tmp_path, plugin, other):
    theirs = tiny_models(other).backbone
    theirs.hf_model.config.save_pretrained(tmp_path)
    name = load_recipe(plugin).backbone.name
    message = f"a '{theirs.hf_model.config.model_type}' checkpoint, but backbone.name '{name}'"
    with pytest.raises(ValueError, match=message):
        padt_core.build(plugin, {"backbone.pretrained": str(tmp_path), "backbone.config": None})
    mine = load_recipe(plugin).backbone
    with pytest.raises(ValueError, match="saved backbone"):
        type(tiny_models(plugin).backbone).from_saved(mine, str(tmp_path))


# --- real recipes ------------------------------------------------------------------------------------

REAL = {
    # Qwen3-VL-4B-Instruct: 4.44 B on its model card; Qwen3.5-9B: its architecture without the MTP head
    # (transformers does not build it).
    "qwen3_vl_padt": ("Qwen/Qwen3-VL-4B-Instruct", 415_347_712, 4_437_815_808),
    "qwen3_5_padt": ("Qwen/Qwen3.5-9B", 456_010_480, 9_409_813_744),
}


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recipe_meta_sizes_and_offline_error(name, offline):
    model_id, vision, base = REAL[name]
    recipe = load_recipe(name)
    assert recipe.backbone.pretrained == model_id
    assert (recipe.backbone.min_pixels, recipe.backbone.max_pixels) == (4 * 32 * 32, 16384 * 32 * 32)
    model = padt_core.build(recipe=name, weights="meta")
    counts = parameter_counts(model)
    assert counts["backbone.vision"] == vision
    assert counts["backbone.vision"] + counts["backbone.llm"] == base
    assert isinstance(model.decoder.trunk.fine_projection, nn.Identity)  # decoder width = tower width
    with pytest.raises(HubUnreachableError, match=model_id.replace(".", "\\.")):
        padt_core.build(recipe=name)


def test_bundled_architectures_are_the_plugins_model_types():
    from padt_plugins.backbones.qwen3_5 import Qwen3_5Backbone
    from padt_plugins.backbones.qwen3_vl import ASSETS, Qwen3VLBackbone

    for cls in (Qwen3VLBackbone, Qwen3_5Backbone):
        for file in cls.known_architectures.values():
            assert json.loads((ASSETS / "architectures" / file).read_text())["model_type"] == cls.name


# --- training and the decoder ------------------------------------------------------------------------


@pytest.mark.parametrize("name", QWEN3)
def test_two_training_steps_and_predict_with_the_decoder(name, tmp_path):
    from padt_core.data.sample import ObjectAnn, Sample
    from padt_core.train.collator import PaDTCollator
    from padt_core.train.step import compute_losses

    torch.manual_seed(0)
    model = padt_core.build(name, {"decoder": {**DECODER, "heads": ["box", "score", "mask"]}})
    sharpen(model)
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
    batch = PaDTCollator(model, vrt_per_object=3)(samples)
    hf = model.backbone.hf_model
    watched = {
        "vision": hf.model.visual.patch_embed.proj.weight,
        "merger": hf.model.visual.merger.linear_fc2.weight,
        "llm": hf.get_input_embeddings().weight,
        "prototypes": model.projection.norm.weight,
    }
    if name == "tiny_qwen3_vl":
        watched["deepstack"] = hf.model.visual.deepstack_merger_list[0].linear_fc2.weight
    else:
        watched["linear_attention"] = hf.model.language_model.layers[0].linear_attn.in_proj_qkv.weight
    before = {k: p.detach().clone() for k, p in watched.items()}
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(2):
        losses = compute_losses(model, batch, step=10**6)
        assert torch.isfinite(losses["loss"]), step
        optim.zero_grad()
        losses["loss"].backward()
        optim.step()
    for key, param in watched.items():
        assert not torch.equal(before[key], param.detach()), key

    model.eval()
    images = [noise_image(140, 252, 1), noise_image(90, 60, 2)]
    # A random LLM prefers the image placeholder at times; generate masks it (Backbone.never_generate_ids).
    preds = model.predict(images, ["find the red circle", "hi"], max_new_tokens=10)
    objects = [(o, im) for p, im in zip(preds, images) for o in p.objects]
    assert objects, "the sharpened model should emit VRT runs"
    for obj, image in objects:
        x1, y1, x2, y2 = obj.box
        assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height
        assert 0.0 <= obj.score <= 1.0
        assert obj.mask.shape == (image.height, image.width)
    # Beam search expands the (DeepStack) features for generate; the decoder pass after it sees the originals.
    beams = model.predict(images, ["find the red circle", "hi"], max_new_tokens=6, num_beams=2)
    assert len(beams) == 2


def test_the_core_learned_no_qwen3_name():
    """Both plugins live outside padt_core: no Qwen3 / DeepStack / DeltaNet word in the core's source."""
    core = Path(padt_core.__file__).parent
    found = [
        str(path.relative_to(core))
        for path in sorted(core.rglob("*.py"))
        if re.search("qwen3|deepstack|deltanet", path.read_text(), re.IGNORECASE)
    ]
    assert found == []

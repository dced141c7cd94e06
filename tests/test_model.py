"""PaDTModel: teacher-forced forward vs generate, save/load, prompts with VRTs, text-only, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RECIPES
from helpers import noise_image

import padt_core

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=TINY_RECIPES)
def tiny_model(request, tiny_models):
    """Every check of this file runs on each backbone's tiny recipe (no backbone-specific branch)."""
    return tiny_models(request.param)


@pytest.fixture(scope="module")
def batch2(tiny_model):
    """Two left-padded samples with images of different sizes."""
    return tiny_model.prepare([noise_image(140, 252, 1), noise_image(90, 60, 2)], ["find the red circle", "hi"])


def test_generate_matches_teacher_forced_forward(tiny_model, batch2):
    model = tiny_model
    assert (batch2["attention_mask"][1] == 0).any()  # really left-padded
    encoded = model.encode(batch2)
    out = model.generate(batch2, encoded=encoded, max_new_tokens=12, output_logits=True, return_dict_in_generate=True)
    prompt_len = batch2["input_ids"].shape[1]
    completion = out.sequences[:, prompt_len:]
    assert (completion >= model.backbone.vocab_rows).any(), "the sharpened model should emit VRTs"
    generated = torch.stack(out.logits, dim=1)
    forward = model(batch2, completion, encoded=encoded).logits[:, prompt_len - 1 : -1]
    assert generated.shape == forward.shape
    assert generated.shape[-1] == model.backbone.vocab_rows + encoded.bank.width
    never = model.backbone.never_generate_ids  # masked in generate only (the teacher-forced pass keeps them)
    assert never and (generated[..., never] == torch.finfo(generated.dtype).min).all()
    generated[..., never] = forward[..., never].detach()
    scale = generated[generated > torch.finfo(generated.dtype).min].abs().max()  # not the masked columns
    torch.testing.assert_close(forward, generated, atol=1e-4 * scale, rtol=1e-4)
    assert torch.equal(forward.argmax(-1), completion)


def test_forward_text_logits_equal_stock_model(tiny_model, batch2):
    """With no VRT in the input, PaDT's text logits are the stock Qwen forward's (image used, M-RoPE on)."""
    hf = tiny_model.backbone.hf_model
    with torch.no_grad():
        stock = hf(**{k: v for k, v in batch2.items() if k != "image_index"}).logits
        ours = tiny_model(batch2).logits
    torch.testing.assert_close(ours[..., : stock.shape[-1]], stock, atol=1e-4, rtol=1e-4)
    other = tiny_model.prepare([noise_image(140, 252, 7), noise_image(90, 60, 8)], ["find the red circle", "hi"])
    with torch.no_grad():
        assert not torch.allclose(tiny_model(other).logits[:, -1], ours[:, -1])  # the image matters


def test_vrt_columns_are_per_sample_and_padding_is_finite(tiny_model, batch2):
    with torch.no_grad():
        out = tiny_model(batch2)
    vocab = tiny_model.backbone.vocab_rows
    cells = [f.num_cells for f in out.encoded.features]
    vrt = out.logits[..., vocab:]
    assert vrt.shape[-1] == max(cells)
    floor = torch.finfo(vrt.dtype).min
    assert (vrt[1, :, cells[1] :] == floor).all()
    assert (vrt[0] > floor).all()
    assert torch.isfinite(torch.log_softmax(out.logits, -1)).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_sample=True, top_k=5, temperature=0.8),
        dict(num_beams=3),
        dict(repetition_penalty=1.3),
        dict(num_beams=2, do_sample=True, num_return_sequences=2),
    ],
)
def test_decoding_strategies_run(tiny_model, batch2, kwargs):
    out = tiny_model.generate(batch2, max_new_tokens=6, **kwargs)
    assert out.shape[0] == 2 * kwargs.get("num_return_sequences", 1)
    cells = max(f.num_cells for f in tiny_model.encode(batch2).features)
    assert int(out.max()) < tiny_model.backbone.vocab_rows + cells


def test_prompt_with_vrts_text_only_and_mixed_batch(tiny_model):
    preds = tiny_model.predict(
        [noise_image(100, 200), None, noise_image(50, 50)],
        ["what is at <|VRT_3|><|VRT_10|>?", "hello, no image here", "describe"],
        max_new_tokens=5,
    )
    assert len(preds) == 3
    assert all(isinstance(p.text, str) for p in preds)
    assert not any(k >= 0 for obj in preds[1].objects for k in obj.vrt)  # a text-only sample has no cells
    batch = tiny_model.prepare([noise_image(100, 200)], ["what is at <|VRT_3|><|VRT_10|>?"])
    ids = batch["input_ids"][0]
    vocab = tiny_model.backbone.vocab_rows
    assert (ids[ids >= vocab] - vocab).tolist() == [3, 10]


def test_bad_input_errors(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="refers to <\\|VRT_999\\|> but its image has"):
        tiny_model.predict(noise_image(60, 60), "look at <|VRT_999|>")
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        tiny_model.predict(noise_image(60, 60), "  ")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        tiny_model.predict(tmp_path / "nope.png", "hi")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        tiny_model.predict(broken, "hi")


def test_save_load_round_trip(tiny_model, batch2, tmp_path):
    target = tmp_path / "model"
    tiny_model.save_pretrained(target)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_model.save_pretrained(target)
    loaded = padt_core.load(target).eval()
    assert loaded.recipe == tiny_model.recipe
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch2).logits, tiny_model(batch2).logits, atol=0, rtol=0)
    a = tiny_model.generate(batch2, max_new_tokens=10)
    b = loaded.generate(batch2, max_new_tokens=10)
    assert torch.equal(a, b)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a padt model directory"):
        padt_core.load(tmp_path)
    (tmp_path / "padt.json").write_text('{"format_version": 99}')
    (tmp_path / "recipe.yaml").write_text("name: x")
    with pytest.raises(ValueError, match="format 99"):
        padt_core.load(tmp_path)

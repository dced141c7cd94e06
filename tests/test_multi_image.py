"""Several images in one conversation (issue 20, docs/multi-image.md): the model side.

VRT ``k`` of a sample numbers the concatenation of its images' cells; generate and the teacher-forced
forward agree on it, the decoder reads each object's own image, the parser rejects runs that cross
images, and bad input names the sample and the image.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RECIPES
from helpers import noise_image, sharpen
from test_decoder_spatial import copy_decoder
from test_decoder_spatial import image as spatial_image

import padt_core
from padt_core.backbone import image_slots, number_images
from padt_core.data.image import ImageNotFoundError
from padt_core.embedding import PrototypeBank
from padt_core.model import Encoded, PromptError
from padt_core.objects import ObjectBatch, object_json, pack_objects

pytestmark = pytest.mark.usefixtures("one_thread")

DECODER = {"trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}}


@pytest.fixture(scope="module")
def images():
    return noise_image(140, 252, 1), noise_image(90, 60, 2), noise_image(64, 64, 3)


@pytest.fixture(scope="module")
def hf_llava():
    from test_llava_backbone import _build, hf_llava_recipe

    return _build(hf_llava_recipe())


@pytest.mark.parametrize("recipe", [*TINY_RECIPES, "hf_llava"])
def test_two_image_generate_logits_equal_teacher_forced(tiny_models, recipe, images, request):
    """Every backbone (LLaVA-style with its timm and Hugging Face LLaVA sources)."""
    model = request.getfixturevalue("hf_llava") if recipe == "hf_llava" else tiny_models(recipe)
    a, b, c = images
    batch = model.prepare([[a, b], c], ["compare <|img|> and <|img|>: <|VRT_3|>", "hi"])
    assert batch["sample_images"] == [[0, 1], [2]]
    encoded = model.encode(batch)
    first, second = encoded.image_cells(0)
    assert encoded.cells(0) == first + second and encoded.bank.width == first + second
    assert int(encoded.bank.valid[1].sum()) == encoded.cells(1)
    # The bank row of the two-image sample is the first image's prototypes, then the second's.
    torch.testing.assert_close(encoded.bank.bank[0, first:], encoded.prototypes[1].to(encoded.bank.bank.dtype))
    out = model.generate(batch, encoded=encoded, max_new_tokens=10, output_logits=True, return_dict_in_generate=True)
    prompt_len = batch["input_ids"].shape[1]
    completion = out.sequences[:, prompt_len:]
    assert (completion >= model.backbone.vocab_rows).any(), "the sharpened model should emit VRTs"
    generated = torch.stack(out.logits, dim=1)
    forward = model(batch, completion, encoded=encoded).logits[:, prompt_len - 1 : -1]
    assert generated.shape == forward.shape and generated.shape[-1] == model.backbone.vocab_rows + first + second
    live = generated > torch.finfo(generated.dtype).min  # generate also masks ids it must never emit
    scale = generated[live].abs().max()
    torch.testing.assert_close(forward[live], generated[live], atol=1e-4 * scale, rtol=1e-4)
    assert torch.equal(forward.argmax(-1), completion)


def test_second_image_vrt_decodes_against_second_image_memory(tiny_model):
    """A hot cell in each image; a VRT run in image 2's range gives a mask on image 2's hot cell, in its pixels."""
    decoder = copy_decoder("dense")
    first, first_protos = spatial_image((5, 8), (0, 7), None)  # image 1: hot at (0, 7)
    second, second_protos = spatial_image((9, 7), (6, 2), None)  # image 2: hot at (6, 2)
    encoded = Encoded([first, second], [first_protos, second_protos], None, {}, [[0, 1]])
    vocab, codec = tiny_model.backbone.vocab_rows, tiny_model.codec
    label = tiny_model.backbone.tokenizer.encode('"x" ', add_special_tokens=False)
    k = first.num_cells + 6 * 7 + 2  # cell (6, 2) of image 2 in the concatenated numbering
    parsed = codec.parse([*label, vocab + k, vocab + k], image_cells=encoded.image_cells(0))
    (obj,) = parsed.objects
    assert (obj.image, obj.cells, obj.vrt) == (1, [6 * 7 + 2] * 2, [k, k])
    objects = ObjectBatch.from_parsed([parsed])
    hidden = torch.randn(1, len(label) + 2, first_protos.shape[1])
    sizes = [first.image_size, second.image_size]
    inputs = pack_objects(objects, encoded, hidden, sizes)
    assert inputs.image_index.tolist() == [1]
    with torch.no_grad():
        out = decoder(inputs)
    (result,) = decoder.postprocess(out, inputs)
    hot = out["mask"][0] > 0
    assert hot.nonzero().min(0).values.tolist() == [8 * 6, 8 * 2] and int(hot.sum()) == 64  # image 2's hot cell
    assert result["mask"].shape == second.image_size  # in image 2's pixels, not image 1's 140 x 224
    assert result["mask"][28 * 6 + 2 : 28 * 7 - 2, 28 * 2 + 2 : 28 * 3 - 2].all()


def test_parser_rejects_a_run_across_images_and_counts_it(tiny_model):
    codec, vocab = tiny_model.codec, tiny_model.backbone.vocab_rows
    label = tiny_model.backbone.tokenizer.encode('"x" ', add_special_tokens=False)
    ids = [*label, vocab + 3, vocab + 4, *label, vocab + 10, vocab + 12, *label, vocab + 11, vocab + 15]
    parsed = codec.parse(ids, image_cells=[12, 6])
    assert [(o.image, o.cells) for o in parsed.objects] == [(0, [3, 4])]  # 10|12 and 11|15 straddle 12 cells
    assert sum("crosses images 0 and 1: rejected" in s for s in parsed.skipped) == 2
    beyond = codec.parse([*label, vocab + 5, vocab + 18], image_cells=[12, 6])
    assert [o.vrt for o in beyond.objects] == [[5]] and "VRT 18 at step" in beyond.skipped[0]
    single = codec.parse([*label, vocab + 5, vocab + 7], image_cells=[12])
    assert [(o.image, o.cells, o.vrt) for o in single.objects] == [(0, [5, 7], [5, 7])]


def test_bank_row_is_the_concatenation_and_single_rows_are_unchanged():
    protos = [torch.randn(4, 3), torch.randn(6, 3), torch.randn(4, 3)]
    bank = PrototypeBank.from_prototypes(protos, [[0, 1], -1, 2, []], 3, torch.device("cpu"), torch.float32)
    assert bank.valid.sum(1).tolist() == [10, 0, 4, 0]
    torch.testing.assert_close(bank.bank[0], torch.cat(protos[:2]))
    old = PrototypeBank.from_prototypes(protos, [0, 2], 3, torch.device("cpu"), torch.float32)
    new = PrototypeBank.from_prototypes(protos, [[0], [2]], 3, torch.device("cpu"), torch.float32)
    assert torch.equal(old.bank, new.bank) and torch.equal(old.valid, new.valid)


def test_image_slots_and_numbering():
    assert image_slots("a <|img|> b <|img|>", 2) == ["a ", None, " b ", None]
    assert image_slots("what?", 1) == [None, "what?"]
    with pytest.raises(ValueError, match="1 <\\|img\\|> slots for 2 image"):
        image_slots("a <|img|>", 2)
    assert number_images([None, "x", ["y", "z"]]) == (["x", "y", "z"], [[], [0], [1, 2]], [-1, 0, 1])


@pytest.fixture(scope="module")
def decoded_model():
    torch.manual_seed(0)
    model = padt_core.build("tiny_qwen", {"decoder": {**DECODER, "heads": ["box", "score", "mask"]}}).eval()
    sharpen(model)
    return model


def test_predict_objects_of_the_second_image_in_its_pixels(decoded_model, images):
    model = decoded_model
    a, b, c = images
    batch = model.prepare([[a, b], c], ["find it", "hi"])
    encoded = model.encode(batch)
    n0, _ = encoded.image_cells(0)
    vocab, eos = model.backbone.vocab_rows, model.backbone.eos_token_ids[0]
    label = model.backbone.tokenizer.encode('"x" ', add_special_tokens=False)
    completion = torch.tensor([[*label, vocab + n0 + 1, vocab + n0 + 2, eos], [*label, vocab + 0, vocab + 1, eos]])
    (two, one) = model.answer_format.read_completions(model, batch, encoded, completion, [[a, b], c])
    (obj,) = two.objects
    assert (obj.image, obj.cells, obj.vrt) == (1, [1, 2], [n0 + 1, n0 + 2])
    x1, y1, x2, y2 = obj.box
    assert 0 <= x1 <= x2 <= b.width and 0 <= y1 <= y2 <= b.height
    assert obj.mask.shape == (b.height, b.width)
    assert one.objects[0].image is None and one.objects[0].mask.shape == (c.height, c.width)
    record = object_json(obj)
    assert list(record)[:5] == ["label", "vrt", "image", "cells", "box"] and record["image"] == 1
    assert "image" not in object_json(one.objects[0])
    predictions = model.predict(images=[[a, b], [c]], prompts=["which one?", "hi"], max_new_tokens=6)
    assert len(predictions) == 2 and all(o.image in (0, 1) for o in predictions[0].objects)


def test_bad_input_names_the_sample_and_the_image(decoded_model, images, tmp_path, monkeypatch):
    model = decoded_model
    a, b, c = images
    with pytest.raises(PromptError, match="sample 0 refers to <\\|VRT_999\\|> but its 2 images have VRT grids"):
        model.encode(model.prepare([[a, b]], ["where is <|VRT_999|>?"]))
    with pytest.raises(ImageNotFoundError, match="sample 1, image 1 of 3: .*missing.png"):
        model.predict([[a], [b, str(tmp_path / "missing.png"), c]], ["x", "y"])
    with pytest.raises(PromptError, match="prompt 0 has 1 <\\|img\\|> slot\\(s\\) for its 2 image"):
        model.prepare([[a, b]], ["only <|img|> here"])
    monkeypatch.setattr(type(model.backbone), "max_context", property(lambda self: 60))
    with pytest.raises(PromptError, match="sample 0 takes .* than the LLM's context of 60; image 1 .* passes it"):
        model.prepare([[c, a, b]], ["too many"])


def test_no_repeat_vrt_holds_over_the_concatenated_vocabulary():
    """The processor is id-based: inside a run, a VRT of either image is not emitted twice."""
    from padt_plugins.generation.no_repeat_vrt import NoRepeatVRT

    vocab, cells = 10, 12  # two images of 8 and 4 cells
    processor = NoRepeatVRT(vocab)
    ids = torch.tensor([[1, 2, vocab + 9, vocab + 3], [1, vocab + 9, 2, vocab + 11]])
    scores = processor(ids, torch.zeros(2, vocab + cells))
    forbidden = (scores[:, vocab:] == -float("inf")).nonzero().tolist()
    assert forbidden == [[0, 3], [0, 9], [1, 11]]  # row 1's VRT 9 ended its run at the text token 2

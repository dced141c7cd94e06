"""Answer formats: the ``text_box`` baseline (render → parse round trips, malformed output, recipe rules,
a 2-step training run, predict + evaluate on known completions) and the ``vrt`` default."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from transformers import LogitsProcessor

import padt_core
from padt_core.answer_format import ImageGeometry
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.data.templates import ovd_answer, rec_answer, ric_answer
from padt_core.eval.evaluate import evaluate
from padt_core.eval.run import evaluate_model
from padt_core.model import PredictedObject, Prediction
from padt_core.plugins import get_plugin
from padt_core.recipe import RecipeError, load_recipe
from padt_core.train.collator import PaDTCollator
from padt_core.train.run import load_readers, train

RECIPE = "tiny_qwen_shapes_textbox"
# A non-square original resized to multiples of 28 in both directions (as Qwen2.5-VL's processor does).
GEOMETRY = ImageGeometry(original=(300, 450), resized=(280, 476))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmt():
    return get_plugin("answer_formats", "text_box")()


def _obj(label: str, box: tuple[float, float, float, float]) -> ObjectAnn:
    return ObjectAnn(label=label, box=box)


def _rec_sample() -> Sample:
    sentence = "the small red star"
    return Sample("t/rec", "x.png", "rec", "?", rec_answer(sentence), [_obj(sentence, (0.1, 0.2, 0.4, 0.55))])


def _ovd_sample() -> Sample:
    objects = [
        _obj("star", (0.0, 0.0, 0.25, 0.3)),
        _obj("star", (0.5, 0.1, 0.7, 0.33)),
        _obj("circle", (0.31, 0.6, 0.62, 0.99)),
        _obj("red square", (0.75, 0.72, 1.0, 1.0)),
    ]
    answer = ovd_answer([("star", 2), ("circle", 1), ("red square", 1)])
    return Sample("t/ovd", "x.png", "ovd", "?", answer, objects)


def _ric_sample() -> Sample:
    caption = "two stars (<box_id: 7/>, <box_id: 8/>) above a circle (<box_id: 9/>)."
    answer, _ = ric_answer(caption, lambda _: True)
    boxes = [(0.05, 0.1, 0.2, 0.3), (0.6, 0.12, 0.81, 0.4), (0.33, 0.5, 0.67, 0.9)]
    return Sample("t/ric", "x.png", "ric", "?", answer, [_obj("", b) for b in boxes])


def _pixels(box: tuple[float, ...], size: tuple[int, int]) -> list[float]:
    h, w = size
    return [box[0] * w, box[1] * h, box[2] * w, box[3] * h]


def _assert_round_trip(sample: Sample, parsed, geometry: ImageGeometry, labels: list[str]) -> None:
    assert [o.label for o in parsed.objects] == labels
    # 1 px of the resized image (rounding is at most half of it), in original pixels per axis.
    (oh, ow), (rh, rw) = geometry.original, geometry.resized
    tol = [ow / rw, oh / rh, ow / rw, oh / rh]
    for obj, gt in zip(parsed.objects, sample.objects):
        want = _pixels(gt.box, geometry.original)
        assert all(abs(a - b) <= t for a, b, t in zip(obj.box, want, tol)), (obj.box, want)


# --- render → parse ------------------------------------------------------------------------------


def test_rec_round_trip(fmt):
    sample = _rec_sample()
    text = fmt.render(sample, GEOMETRY)
    assert text == 'The "the small red star" refers to {"bbox_2d": [48, 56, 190, 154]} in this image.'
    parsed = fmt.parse(text, GEOMETRY)
    _assert_round_trip(sample, parsed, GEOMETRY, ["the small red star"])
    assert parsed.skipped == [] and parsed.clipped == 0


def test_ovd_round_trip_several_objects_and_labels(fmt):
    sample = _ovd_sample()
    text = fmt.render(sample, GEOMETRY)
    assert text.startswith('[{"bbox_2d": [0, 0, 119, 84], "label": "star"}, {"bbox_2d": [238, 28, 333, 92], "label"')
    parsed = fmt.parse(text, GEOMETRY)
    _assert_round_trip(sample, parsed, GEOMETRY, ["star", "star", "circle", "red square"])
    assert parsed.skipped == [] and parsed.clipped == 0
    # Boxes on the image border map to the border exactly.
    assert parsed.objects[3].box[2:] == [450.0, 300.0]


def test_ovd_without_objects_is_an_empty_list(fmt):
    sample = Sample("t/none", "x.png", "ovd", "?", ovd_answer([]), [])
    assert fmt.render(sample, GEOMETRY) == "[]"
    assert fmt.parse("[]", GEOMETRY).objects == []


def test_ovd_answer_wrapper_is_configurable():
    fenced = get_plugin("answer_formats", "text_box")({"ovd_answer": "```json\n{objects}\n```"})
    text = fenced.render(_ovd_sample(), GEOMETRY)
    assert text.startswith("```json\n[{") and text.endswith("}]\n```")
    assert len(fenced.parse(text, GEOMETRY).objects) == 4


def test_ric_round_trip_keeps_the_caption(fmt):
    sample = _ric_sample()
    text = fmt.render(sample, GEOMETRY)
    assert text.startswith(
        'two stars ({"bbox_2d": [24, 28, 95, 84]}, {"bbox_2d": [286, 34, 386, 112]}) above a circle ('
    )
    parsed = fmt.parse(text, GEOMETRY)
    _assert_round_trip(sample, parsed, GEOMETRY, ["", "", ""])
    assert len(parsed.skipped) == 3 and all("no label" in s for s in parsed.skipped)  # as the VRT parser


@pytest.mark.parametrize("resized", [(112, 112), (224, 336), (588, 868)])
def test_round_trip_on_upscaled_and_downscaled_images(fmt, resized):
    geometry = ImageGeometry(original=(300, 450), resized=resized)
    sample = _ovd_sample()
    _assert_round_trip(
        sample, fmt.parse(fmt.render(sample, geometry), geometry), geometry, [o.label for o in sample.objects]
    )


# --- malformed output ----------------------------------------------------------------------------

GOOD = '{"bbox_2d": [10, 20, 30, 40], "label": "star"}'


@pytest.mark.parametrize(
    ("text", "kept", "skipped_fragment"),
    [
        pytest.param(f'[{GOOD}, {{"bbox_2d": [1, 2, 3', 1, "malformed box JSON", id="truncated-list"),
        pytest.param('{"bbox_2d": [10, 20, 30, 40], "label": "st', 0, "malformed box JSON", id="truncated-label"),
        pytest.param('{"bbox_2d": "10, 20, 30, 40", "label": "a"}', 0, "must be 4 numbers", id="string-box"),
        pytest.param('{"bbox_2d": [10, 20, 30], "label": "a"}', 0, "must be 4 numbers", id="three-numbers"),
        pytest.param('{"bbox_2d": [10, true, 30, 40], "label": "a"}', 0, "must be 4 numbers", id="boolean"),
        pytest.param('{"bbox_2d": [10, "2", 30, 40], "label": "a"}', 0, "must be 4 numbers", id="numeric-string"),
        pytest.param('{"bbox_2d": null}', 0, "must be 4 numbers", id="null"),
        pytest.param('{"bbox_2d": [30, 20, 10, 40], "label": "a"}', 0, "is not x1 <= x2", id="reversed"),
        pytest.param('{"bbox_2d": [500, 300, 600, 400], "label": "a"}', 0, "outside", id="outside"),
        pytest.param('{"bbox_2d": [1, 2, 3, 4], "label": 5}', 1, "label must be a string", id="numeric-label"),
        pytest.param('{"bbox_2d": [1e999, 2, 3, 4], "label": "a"}', 0, "must be 4 numbers", id="infinite"),
    ],
)
def test_malformed_boxes_are_reported_not_raised(fmt, text, kept, skipped_fragment):
    parsed = fmt.parse(text, GEOMETRY)
    assert len(parsed.objects) == kept
    assert any(skipped_fragment in s for s in parsed.skipped), parsed.skipped


def test_out_of_range_boxes_are_clipped_and_counted(fmt):
    parsed = fmt.parse('[{"bbox_2d": [-12, 5.5, 500, 300], "label": "a"}, ' + GOOD + "]", GEOMETRY)
    assert parsed.clipped == 1 and parsed.skipped == []
    assert parsed.objects[0].box == pytest.approx([0.0, 5.5 * 300 / 280, 450.0, 300.0])
    assert parsed.objects[1].label == "star"


def test_label_falls_back_to_the_last_quoted_text(fmt):
    parsed = fmt.parse('The "a b" refers to {"bbox_2d": [1, 2, 3, 4]} and "c" {"bbox_2d": [1, 2, 3, 4]}.', GEOMETRY)
    assert [o.label for o in parsed.objects] == ["a b", "c"]


def test_every_prefix_and_garbage_parses_without_raising(fmt):
    text = fmt.render(_ovd_sample(), GEOMETRY)
    for end in range(len(text) + 1):
        parsed = fmt.parse(text[:end], GEOMETRY)
        assert len(parsed.objects) <= 4
    for junk in ["", "{", "}{", "{{{", '{"bbox_2d"', "[1, 2]", '{"label": "x"}', "\x00\ufffd", '"""']:
        assert fmt.parse(junk, GEOMETRY).objects == []
    assert fmt.parse(GOOD, None).objects == []  # no image: nothing to place the box in


# --- recipes -------------------------------------------------------------------------------------


def test_recipes_select_the_format():
    assert load_recipe("tiny_qwen_shapes").answer_format.name == "vrt"  # the default
    recipe = load_recipe(RECIPE)
    assert recipe.answer_format.name == "text_box" and recipe.decoder is None
    assert recipe.generation.logits_processors == []


def test_text_box_with_a_decoder_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"answer_format 'text_box' writes objects as text .* set `decoder: null`"):
        load_recipe("tiny_qwen_shapes", ["answer_format.name=text_box"])


def test_the_format_decides_what_the_core_does():
    """The core asks the format (no flag): a text format gets the text defaults, ``vrt`` the VRT path."""
    from padt_core.answer_format import AnswerFormat
    from padt_core.embedding import PrototypeProjection

    class Plain(AnswerFormat):  # a third-party text format: render and parse only
        name = "plain"

    vrt = get_plugin("answer_formats", "vrt")
    assert vrt.read_completions is not AnswerFormat.read_completions
    assert vrt.encode_answer is not AnswerFormat.encode_answer
    with_decoder = load_recipe("tiny_qwen_shapes")
    vrt.check_recipe(with_decoder)  # any decoder fits the VRT path
    with pytest.raises(ValueError, match=r"answer_format 'plain' writes objects as text .* set `decoder: null`"):
        Plain.check_recipe(with_decoder)
    Plain.check_recipe(load_recipe(RECIPE))

    class _Backbone:
        hidden_size = 32

    projection = vrt().build_projection(with_decoder, _Backbone())
    assert isinstance(projection, PrototypeProjection) and projection.down.out_features == with_decoder.vrt.rank
    assert Plain.__new__(Plain).build_projection(with_decoder, _Backbone()) is None  # no Config needed


def test_answer_format_options_are_validated():
    with pytest.raises(RecipeError, match=r"answer_format: invalid options for answer_formats 'text_box': ovd_answ"):
        load_recipe(RECIPE, ["answer_format.ovd_answer=[{items}]"])
    with pytest.raises(RecipeError, match=r"Registered answer_formats: text_box, vrt"):
        load_recipe(RECIPE, ["answer_format.name=text_boxes"])


# --- training, predict and evaluate --------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("textbox") / "shapes"
    section = {"name": "shapes", "root": str(root), "split": "train", "tasks": ["rec", "ovd", "ric"]}
    section.update(n_train=4, n_val=2, image_size=112)
    return section


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes) -> tuple[dict[str, Any], padt_core.PaDTModel]:
    """Two training steps of the text_box recipe, and the model loaded back from its directory."""
    out = tmp_path_factory.mktemp("textbox") / "run"
    overrides = {"data.train": [shapes], "data.val": [], "train.max_steps": 2, "train.batch_size": 2}
    overrides.update({"train.logging_steps": 1, "train.save_steps": 100})
    summary = train(RECIPE, overrides, output_dir=out)
    return summary, padt_core.load(out).eval()


def test_text_box_trains_with_token_loss_only(trained):
    summary, model = trained
    assert summary["global_step"] == 2
    logs = [h for h in summary["log_history"] if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert {k for k in logs[0] if k.startswith("loss_")} == {"loss_token"}  # no VRT or head losses
    assert model.answer_format.name == "text_box" and model.decoder is None and model.projection is None


def test_collator_trains_on_the_rendered_text(trained, shapes):
    _, model = trained
    recipe = load_recipe(RECIPE, {"data.train": [shapes]})
    samples = list(load_readers(recipe.data.train, recipe.data.templates)[0][0].samples())
    rec = next(s for s in samples if s.task == "rec")
    batch = PaDTCollator(model)([rec])
    text = model.codec.decode(batch.completion_ids[0])
    assert text.startswith(f'The "{rec.objects[0].label}" refers to {{"bbox_2d": [')
    assert batch.vrt_ignore is None and batch.objects.num_objects == 0
    assert int((batch.completion_ids >= model.backbone.vocab_rows).sum()) == 0


class _Force(LogitsProcessor):
    """Make ``generate`` write known completions (one id list per row), then end-of-sequence."""

    def __init__(self, targets: list[list[int]], prompt_length: int, eos: int):
        self.targets, self.prompt_length, self.eos = targets, prompt_length, eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, -math.inf)
        for row, target in enumerate(self.targets):
            forced[row, target[step] if step < len(target) else self.eos] = 0.0
        return forced


def _known_completions(model, samples: list[Sample], shift: dict[str, float] | None = None) -> _Force:
    """The ground truth of each sample in text_box format (REC boxes moved right by ``shift[id]`` of the width)."""
    images, prompts = [s.image for s in samples], [s.prompt for s in samples]
    batch = model.prepare([padt_core.model.load_image(i) for i in images], prompts)
    cell, targets = model.backbone.cell_size, []
    for sample, (rows, cols) in zip(samples, batch["image_grids"]):
        geometry = ImageGeometry(sample.image_size, (rows * cell, cols * cell))
        dx = (shift or {}).get(sample.id, 0.0)
        moved = [ObjectAnn(o.label, (o.box[0] + dx, o.box[1], o.box[2] + dx, o.box[3])) for o in sample.objects]
        text = model.answer_format.render(dataclasses.replace(sample, objects=moved), geometry)
        targets.append(model.backbone.tokenizer.encode(text, add_special_tokens=False))
    return _Force(targets, batch["input_ids"].shape[1], model.backbone.eos_token_ids[0])


def test_predict_and_evaluate_known_completions(trained, shapes):
    _, model = trained
    recipe = load_recipe(RECIPE, {"data.train": [shapes]})
    samples = list(load_readers(recipe.data.train, recipe.data.templates)[0][0].samples())
    picked = {}
    for s in samples:  # one sample per task and image: every prediction row is distinct
        picked.setdefault((s.task, s.meta["image_id"]), s)
    picked = [s for (task, image), s in picked.items() if image <= 2]
    # The first REC answer is moved to the other side of the image (a miss); the rest is the ground truth.
    rec = [s for s in picked if s.task == "rec"]
    x1, _, x2, _ = rec[0].objects[0].box
    force = _known_completions(model, picked, shift={rec[0].id: -x1 if x1 > 0.5 else 1.0 - x2})
    preds = model.predict(
        [s.image for s in picked], [s.prompt for s in picked], batch_size=len(picked),
        logits_processor=[force], max_new_tokens=400,
    )  # fmt: skip
    assert all(p.objects and all(o.box is not None and o.score is None for o in p.objects) for p in preds)
    assert not any(p.truncated for p in preds)
    report = evaluate(preds, picked, ["rec", "ovd", "ric"])
    assert report["rec_acc50"] == pytest.approx(1 / len(rec))  # the moved box misses, the others hit
    assert report["ovd_map"] > 0.9  # boxes within a pixel; no score: every object ranks at 1.0
    assert report["counts"]["ovd"]["no_score"] == sum(len(p.objects) for s, p in zip(picked, preds) if s.task == "ovd")
    assert report["ric_gp"] == report["ric_gr"] == 1.0


def test_evaluate_rec_on_hand_made_predictions(fmt):
    """``evaluate`` scores text_box predictions like any other: one hit, one miss → Acc@0.5 = 0.5."""
    samples = [_rec_sample(), Sample("t/rec2", "x.png", "rec", "?", rec_answer("a"), [_obj("a", (0.5, 0.5, 0.9, 0.9))])]
    for s in samples:
        s.image_size = GEOMETRY.original
    completions = [fmt.render(samples[0], GEOMETRY), 'The "a" refers to {"bbox_2d": [0, 0, 50, 50]} in this image.']
    preds = []
    for text in completions:
        parsed = fmt.parse(text, GEOMETRY)
        preds.append(Prediction(text, [PredictedObject(o.label, [], o.box) for o in parsed.objects], parsed.skipped))
    report = evaluate(preds, samples, ["rec"])
    assert report["rec_acc50"] == 0.5 and report["counts"]["rec"]["no_box"] == 0


def test_evaluate_model_runs_unchanged(trained, shapes):
    _, model = trained
    val = {**shapes, "split": "val"}
    report, preds, samples = evaluate_model(model, [get_plugin("datasets", "shapes").Config(**val)],
                                            tasks=["rec"], max_samples=1, max_new_tokens=4)  # fmt: skip
    assert len(preds) == len(samples) == 1 and 0.0 <= report["rec_acc50"] <= 1.0


def test_text_box_save_load_round_trip(trained, tmp_path):
    _, model = trained
    path = model.save_pretrained(tmp_path / "again")
    again = padt_core.load(path)
    assert again.answer_format.name == "text_box" and again.recipe == model.recipe and again.projection is None

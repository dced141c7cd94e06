"""Metric plugins REC, RES, RIC (CIDEr-D, greedy grounding P/R) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from padt_plugins.metrics import RECMetric, RESMetric, RICMetric
from padt_plugins.metrics.base import select_object
from padt_plugins.metrics.cider import cider_d, tokenize
from padt_plugins.metrics.ric import greedy_matches

from padt_core.data.sample import ObjectAnn, Sample
from padt_core.model import PredictedObject, Prediction
from padt_core.rle import encode as encode_mask

SIZE = (64, 64)  # (h, w); boxes below are multiples of 1/64 so pixel boxes are exact


def px(*box: float) -> tuple[float, float, float, float]:
    """A pixel xyxy box on the 64×64 test image, normalised."""
    return tuple(v / 64 for v in box)


def rect_mask(x1: int, y1: int, x2: int, y2: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def referring(sid: str, box: tuple, mask: np.ndarray | None = None, task: str = "rec") -> Sample:
    obj = ObjectAnn(label="the dog", box=px(*box), mask=None if mask is None else encode_mask(mask))
    return Sample(
        id=sid,
        image=f"{sid}.jpg",
        task=task,
        prompt='Please detect "the dog".',
        answer='The "the dog" refers to <|Obj_0|> in this image.',
        objects=[obj],
        image_size=SIZE,
    )


def obj(box=None, score=None, mask=None, label="the dog") -> PredictedObject:
    return PredictedObject(label=label, vrt=[0], box=None if box is None else list(box), score=score, mask=mask)


# --- REC ------------------------------------------------------------------------------------------


def test_rec_acc50_hand_computed():
    """Hit at IoU exactly 0.5, miss below, highest score wins, first wins without scores, no object = miss."""
    gt = (0, 0, 16, 16)
    cases = [
        (referring("a", gt), Prediction("", [obj((0, 0, 16, 8))])),  # IoU 128/256 = 0.5 → hit
        (referring("b", gt), Prediction("", [obj((0, 0, 16, 7))])),  # 112/256 < 0.5 → miss
        (referring("c", gt), Prediction("", [obj((40, 40, 60, 60), 0.2), obj(gt, 0.9)])),  # best score → hit
        (referring("d", gt), Prediction("", [obj((40, 40, 60, 60)), obj(gt)])),  # no scores → first → miss
        (referring("e", gt), Prediction("no object here", [])),  # nothing parsed → miss, unparseable
    ]
    metric = RECMetric()
    for sample, prediction in cases:
        metric.update(sample, prediction)
    out = metric.compute()
    assert out["rec_acc50"] == pytest.approx(2 / 5)
    assert (out["hits"], out["samples"], out["parsed_objects"], out["unparseable"]) == (2, 5, 6, 1)
    assert metric.per_sample["a"] == pytest.approx(0.5)
    assert metric.per_sample["b"] == pytest.approx(112 / 256)


def test_rec_matches_by_sample_id_not_echoed_sentence():
    """A model that paraphrases the query inside the quotes is still scored (reference quirk §9.2 not copied)."""
    metric = RECMetric()
    metric.update(referring("a", (0, 0, 16, 16)), Prediction("", [obj((0, 0, 16, 16), label="a brown dog")]))
    assert metric.compute()["rec_acc50"] == 1.0


def test_rec_uses_original_image_size():
    """Normalised GT × (w, h) of a non-square image: a pixel-exact prediction is IoU 1."""
    sample = Sample("s", "s.jpg", "rec", "p", "<|Obj_0|>", [ObjectAnn("x", (0.1, 0.2, 0.5, 0.6))], image_size=(50, 200))
    metric = RECMetric()
    metric.update(sample, Prediction("", [obj((20.0, 10.0, 100.0, 30.0))]))
    assert metric.per_sample["s"] == pytest.approx(1.0)


def test_select_object_rule():
    a, b, c = obj(score=None), obj(score=0.3), obj(score=0.3)
    assert select_object([a, b, c]) is b  # highest finite score, first on ties
    assert select_object([a, obj()]) is a  # no scores: first
    assert select_object([obj(score="high"), obj(score=float("nan")), b]) is b  # non-numbers are no score
    assert select_object([]) is None


def test_duplicate_sample_id_rejected():
    metric = RECMetric()
    metric.update(referring("a", (0, 0, 16, 16)), Prediction("", []))
    with pytest.raises(ValueError, match="'a' was already added"):
        metric.update(referring("a", (0, 0, 16, 16)), Prediction("", []))


# --- RES ------------------------------------------------------------------------------------------


def test_res_ciou_is_cumulative_and_differs_from_giou():
    """Big perfect mask + small wrong mask: cIoU = 256/(256+32) but gIoU = (1 + 0)/2."""
    big, small = rect_mask(0, 0, 16, 16), rect_mask(40, 40, 44, 44)  # 256 px and 16 px
    metric = RESMetric()
    metric.update(referring("big", (0, 0, 16, 16), big, "res"), Prediction("", [obj(mask=big)]))
    metric.update(
        referring("small", (40, 40, 44, 44), small, "res"), Prediction("", [obj(mask=rect_mask(50, 50, 54, 54))])
    )
    out = metric.compute()
    assert out["res_ciou"] == pytest.approx(256 / (256 + 32))
    assert out["res_giou"] == pytest.approx(0.5)
    assert (out["intersection"], out["union"]) == (256, 288)


def test_res_missing_or_malformed_mask_is_iou_zero():
    """No object, no mask, wrong-size mask: I = 0 and U = GT area; counted, never raised."""
    gt = rect_mask(0, 0, 8, 8)  # 64 px
    metric = RESMetric()
    metric.update(referring("none", (0, 0, 8, 8), gt, "res"), Prediction("", [], truncated=True))
    metric.update(referring("nomask", (0, 0, 8, 8), gt, "res"), Prediction("", [obj(box=(0, 0, 8, 8))]))
    metric.update(referring("wrong", (0, 0, 8, 8), gt, "res"), Prediction("", [obj(mask=np.ones((32, 32), bool))]))
    metric.update(referring("half", (0, 0, 8, 8), gt, "res"), Prediction("", [obj(mask=rect_mask(0, 0, 8, 4))]))
    out = metric.compute()
    assert (out["intersection"], out["union"]) == (32, 4 * 64)
    assert out["res_giou"] == pytest.approx(0.5 / 4)
    assert (out["no_mask"], out["unparseable"], out["truncated"]) == (2, 1, 1)


def test_res_requires_ground_truth_mask():
    with pytest.raises(ValueError, match="no ground-truth mask"):
        RESMetric().update(referring("a", (0, 0, 8, 8), None, "res"), Prediction("", []))


# --- CIDEr-D --------------------------------------------------------------------------------------


def test_tokenize_drops_vrts_quotes_and_punctuation():
    text = 'The "Man" (<|VRT_3|><|VRT_4|>) rides a t-shirt, 3.5 m away; he\'s happy.<|im_end|>'
    assert tokenize(text) == ["the", "man", "rides", "a", "t-shirt", "3.5", "m", "away", "he's", "happy"]
    assert tokenize("A dog (<|Obj_0|>, <|Obj_1|>).") == ["a", "dog"]


def test_cider_hand_computed_two_images():
    """Two images, one reference each, no shared n-gram, so every idf = log 2 and cancels in the cosines.

    Image 1, "the cat ran" vs "the cat sat": unigram cosine 2/3, bigram 1/2, trigram 0, no 4-grams;
    both have 2 bigrams, so no length penalty: 10 · (2/3 + 1/2) / 4 = 35/12.
    Image 2 is identical to its reference: 10 · (1 + 1 + 1 + 0) / 4 = 7.5.
    """
    refs = [[tokenize("the cat sat")], [tokenize("a dog ran")]]
    corpus, scores = cider_d([tokenize("the cat ran"), tokenize("a dog ran")], refs)
    assert scores == pytest.approx([35 / 12, 7.5])
    assert corpus == pytest.approx((35 / 12 + 7.5) / 2)


def test_cider_identical_disjoint_and_length_penalty():
    refs = [[tokenize("a man rides a brown horse")], [tokenize("two cats sleep on the sofa")]]
    assert cider_d([r[0] for r in refs], refs)[0] == pytest.approx(10.0)  # cosine 1 at every order
    assert cider_d([tokenize("green zebra"), tokenize("purple kite")], refs)[0] == 0.0
    # No word is shared between the two images, so every weight is tf · log 2 and log 2 cancels.
    # "a man rides a brown" drops the reference's last n-gram at every order; "a" has tf 2 in both:
    # unigrams 7 / sqrt(7 · 8), bigrams 4 / sqrt(4 · 5), trigrams 3 / sqrt(3 · 4), 4-grams 2 / sqrt(2 · 3);
    # the toolkit's length counts bigrams: 4 vs 5, so δ = 1 and the penalty is exp(-1 / (2 · 6²)).
    score = cider_d([tokenize("a man rides a brown"), refs[1][0]], refs)[1][0]
    cosines = [7 / math.sqrt(56), 4 / math.sqrt(20), 3 / math.sqrt(12), 2 / math.sqrt(6)]
    assert score == pytest.approx(10 * sum(cosines) / 4 * math.exp(-1 / 72))
    # With a single image log N = 0: every idf is 0 and CIDEr-D is 0 whatever the caption.
    assert cider_d([refs[0][0]], [refs[0]])[0] == 0.0


def test_cider_shared_reference_set_counts_once_in_document_frequency():
    """Two candidates of one image: N and df come from reference *sets*, not from samples."""
    refs = [[tokenize("the cat sat")], [tokenize("a dog ran")]]
    once = cider_d([tokenize("the cat ran"), tokenize("a dog ran")], refs)[1]
    shared = cider_d([tokenize("the cat ran"), tokenize("the cat ran"), tokenize("a dog ran")], refs, [0, 0, 1])[1]
    assert shared == pytest.approx([once[0], once[0], once[1]])


# --- RIC ------------------------------------------------------------------------------------------


def ric_sample(sid: str, answer: str, boxes: list[tuple], image_id: int | None = 1, captions=None) -> Sample:
    meta = {} if image_id is None else {"image_id": image_id}
    if captions is not None:
        meta["captions"] = captions
    objects = [ObjectAnn("", px(*b)) for b in boxes]
    return Sample(sid, f"img{image_id}.jpg", "ric", "Please describe this image.", answer, objects, SIZE, meta)


def test_greedy_matches_in_descending_iou_order():
    gt = [(0, 0, 10, 10), (0, 0, 10, 20)]  # areas 100 and 200
    # (0, 0, 10, 10): IoU 1 with gt 0, 0.5 with gt 1; (0, 0, 10, 12): 100/120 with gt 0, 120/200 with gt 1.
    assert greedy_matches([(0, 0, 10, 10), (0, 0, 10, 12), None], gt) == [(0, 0), (1, 1)]
    # The best pair is taken first whatever the prediction order.
    assert greedy_matches([(0, 0, 10, 12), (0, 0, 10, 10)], gt) == [(1, 0), (0, 1)]
    # Greedy, not optimal: A = (0,0,10,11) takes gt 0 (IoU 0.91) before B = (2,0,12,10) can (0.67);
    # B overlaps gt 1 = (0,0,10,16) by 0.44 only, so one match although two were possible (A-gt1 0.69).
    assert greedy_matches([(0, 0, 10, 11), (2, 0, 12, 10)], [(0, 0, 10, 10), (0, 0, 10, 16)]) == [(0, 0)]
    assert greedy_matches([(0, 0, 10, 10)], [(20, 20, 30, 30)]) == []


def test_ric_greedy_precision_recall_micro():
    """Sample 1: 3 predicted (one without box), 2 GT, 2 matched. Sample 2: 1 predicted, 2 GT, 0 matched."""
    s1 = ric_sample("r1", "A dog (<|Obj_0|>) and a cat (<|Obj_1|>).", [(0, 0, 16, 16), (32, 32, 48, 48)])
    s2 = ric_sample("r2", "A dog (<|Obj_0|>) and a cat (<|Obj_1|>).", [(0, 0, 16, 16), (32, 32, 48, 48)], image_id=2)
    p1 = Prediction("A dog (<|VRT_0|>) and a cat (<|VRT_9|>).", [obj((32, 32, 48, 47)), obj((0, 0, 16, 15)), obj()])
    p2 = Prediction("A dog (<|VRT_63|>).", [obj((50, 0, 64, 10))])
    metric = RICMetric()
    metric.update(s1, p1)
    metric.update(s2, p2)
    out = metric.compute()
    assert (out["matched"], out["parsed_objects"], out["gt_objects"], out["no_box"]) == (2, 4, 4, 1)
    assert out["ric_gp"] == pytest.approx(2 / 4)
    assert out["ric_gr"] == pytest.approx(2 / 4)
    assert out["unparseable"] == 0


def test_ric_cider_candidate_strips_vrts_and_uses_meta_captions():
    """Candidate VRTs/quotes are ignored; references are meta captions, one set per image."""
    caps1, caps2 = ["the cat sat"], ["a dog ran"]
    samples = [
        ric_sample("c1", "The cat (<|Obj_0|>) sat.", [(0, 0, 8, 8)], image_id=1, captions=caps1),
        ric_sample("c2", "A dog (<|Obj_0|>) ran.", [(0, 0, 8, 8)], image_id=2, captions=caps2),
    ]
    predictions = [
        Prediction('The "cat" (<|VRT_0|><|VRT_1|>) ran.', [obj((0, 0, 8, 8))], skipped=["no quoted label"]),
        Prediction("A dog (<|VRT_0|>) ran.", [obj((0, 0, 8, 8))]),
    ]
    metric = RICMetric()
    for s, p in zip(samples, predictions):
        metric.update(s, p)
    out = metric.compute()
    assert out["ric_cider"] == pytest.approx((35 / 12 + 7.5) / 2)  # the hand-computed case above
    assert metric.per_sample == pytest.approx({"c1": 35 / 12, "c2": 7.5})
    assert (out["images"], out["with_skipped"], out["unparseable"]) == (2, 1, 0)


def test_ric_references_from_answers_grouped_by_image():
    """Without meta captions, each image's references are its samples' answers (placeholders removed)."""
    samples = [
        ric_sample("a1", "The cat (<|Obj_0|>) sat.", [(0, 0, 8, 8)], image_id=1),
        ric_sample("a2", "A dog (<|Obj_0|>) ran.", [(0, 0, 8, 8)], image_id=2),
        ric_sample("a3", "A cat (<|Obj_0|>) on a mat.", [(0, 0, 8, 8)], image_id=1),
    ]
    metric = RICMetric()
    for s in samples:
        metric.update(s, Prediction("the cat sat", []))
    out = metric.compute()
    refs = [[tokenize("The cat sat."), tokenize("A cat on a mat.")], [tokenize("A dog ran.")]]
    _, expected = cider_d([tokenize("the cat sat")] * 3, refs, [0, 1, 0])
    assert list(metric.per_sample.values()) == pytest.approx(expected)
    assert (out["images"], out["unparseable"]) == (2, 3)
    assert math.isnan(out["ric_gp"])  # nothing predicted: precision undefined
    assert out["ric_gr"] == 0.0


# --- malformed predictions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [obj(box=(float("nan"), 0, 4, 4))],
        [obj(box=(0, 0, 4))],
        [obj(box=(8, 8, 4, 4))],  # x2 < x1
        [obj(box=("a", 0, 1, 1), score=float("nan"), mask=np.ones((3, 3, 3), bool))],
        [obj(mask={"size": [64, 64], "counts": 7})],
    ],
)
def test_malformed_objects_never_crash(bad):
    rec, res, ric = RECMetric(), RESMetric(), RICMetric()
    rec.update(referring("a", (0, 0, 8, 8)), Prediction("x", bad, skipped=["VRT 900 outside"], truncated=True))
    res.update(referring("a", (0, 0, 8, 8), rect_mask(0, 0, 8, 8), "res"), Prediction("x", bad))
    ric.update(ric_sample("a", "A (<|Obj_0|>).", [(0, 0, 8, 8)]), Prediction("x", bad))
    out_rec, out_res, out_ric = rec.compute(), res.compute(), ric.compute()
    assert out_rec["rec_acc50"] == 0.0 and out_rec["unparseable"] == 1 and out_rec["truncated"] == 1
    assert out_res["res_giou"] == 0.0
    assert out_ric["matched"] == 0


def test_empty_metric_reports_nan():
    out = RECMetric().compute()
    assert math.isnan(out["rec_acc50"]) and out["samples"] == 0
    assert math.isnan(RICMetric().compute()["ric_cider"])

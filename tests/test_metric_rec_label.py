"""``rec_label``: does the REC answer name the referred kind (the eight shapes of the demo data)?"""

from __future__ import annotations

import pytest
from padt_plugins.metrics import RECLabelMetric
from padt_plugins.metrics.rec_label import named_kind

from padt_core.data.sample import ObjectAnn, Sample
from padt_core.eval.evaluate import evaluate
from padt_core.model import PredictedObject, Prediction

KINDS = ["circle", "ellipse", "square", "rectangle", "triangle", "star", "hexagon", "diamond"]


def sample(sid: str, sentence: str) -> Sample:
    return Sample(
        id=sid,
        image=f"{sid}.png",
        task="rec",
        prompt=f'Please detect "{sentence}".',
        answer=f'The "{sentence}" refers to <|Obj_0|> in this image.',
        objects=[ObjectAnn(label=sentence, box=(0.1, 0.1, 0.5, 0.5))],
        image_size=(64, 64),
    )


def said(*labels: str, scores=None) -> Prediction:
    scores = scores or [None] * len(labels)
    return Prediction(
        "", [PredictedObject(label=t, vrt=[0], box=[1, 1, 9, 9], score=s) for t, s in zip(labels, scores)]
    )


def test_named_kind_matches_whole_words_longest_first():
    assert named_kind("the red star on the left", KINDS) == "star"
    assert named_kind("the starry thing", KINDS) is None  # whole words only
    assert named_kind("The BLUE Hexagon.", KINDS) == "hexagon"
    assert named_kind("a pale red square", ["red", "red square"]) == "red square"


def test_rec_label_acc_hand_computed():
    cases = [
        (sample("a", "the red star"), said("the red star")),  # right kind
        (sample("b", "the red star"), said("the red hexagon")),  # right colour, wrong kind
        (sample("c", "the blue triangle"), said("the blue circle", "the blue triangle", scores=[0.2, 0.9])),
        (sample("d", "the blue triangle"), said("something blue")),  # names no kind: a miss
        (sample("e", "the big one"), said("the big star")),  # the sentence names no kind: not scored
        (sample("f", "the green ellipse"), Prediction("nothing", [])),  # no object: a miss
    ]
    metric = RECLabelMetric({"vocabulary": KINDS})
    for s, p in cases:
        metric.update(s, p)
    out = metric.compute()
    assert out["rec_label_acc"] == pytest.approx(2 / 5)
    assert (out["label_hits"], out["no_kind"], out["no_label"], out["samples"]) == (2, 1, 2, 6)


def test_rec_label_through_evaluate_needs_a_vocabulary():
    report = evaluate(
        [said("the red star")],
        [sample("a", "the red star")],
        ["rec", "rec_label"],
        {"rec_label": {"vocabulary": KINDS}},
    )
    assert report["rec_label_acc"] == 1.0 and report["rec_acc50"] == 0.0
    with pytest.raises(Exception, match="vocabulary"):
        evaluate([said("x")], [sample("a", "the red star")], ["rec_label"])

"""The two evaluation protocols side by side: hand-made cases where they disagree, both numbers by hand.

``standard``: one answer per sample (highest score, else first), paired by sample; ``reference``: the
reference's scripts (§9.1–9.2): best of all objects keyed by (image, echoed sentence), integer boxes,
"cIoU" = mean IoU, OVD against the preprocessed ground truth. Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from padt_core.cli import main
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.eval import evaluate, evaluate_splits, format_report
from padt_core.model import PredictedObject, Prediction
from padt_core.rle import encode

SIZE = (100, 100)  # (h, w): a box of normalised v is 100·v pixels


def rect(x1: int, y1: int, x2: int, y2: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def referring(
    sid: str, sentence: str, box_px: tuple, task: str = "rec", image_id: int = 1, split: str | None = None
) -> Sample:
    h, w = SIZE
    x1, y1, x2, y2 = box_px
    mask = encode(rect(round(x1), round(y1), round(x2), round(y2))) if task == "res" else None
    meta = {"image_id": image_id} if split is None else {"image_id": image_id, "split": split}
    return Sample(
        id=sid,
        image=f"{image_id}.png",
        task=task,
        prompt=f'Please detect "{sentence}".',
        answer=f'The "{sentence}" refers to <|Obj_0|> in this image.',
        objects=[ObjectAnn(label=sentence, box=(x1 / w, y1 / h, x2 / w, y2 / h), mask=mask)],
        image_size=SIZE,
        meta=meta,
    )


def obj(label: str, box: tuple, score: float | None = None, mask: np.ndarray | None = None) -> PredictedObject:
    return PredictedObject(label=label, vrt=[0], box=list(box), score=score, mask=mask)


# --- the worked example of docs/metrics.md ---------------------------------------------------------


def test_two_objects_the_second_correct_standard_misses_reference_hits():
    """Query "the red star", GT box (50, 50, 90, 90). The answer has two objects, both labelled with the
    query: the first (score 0.9) at (0, 0, 40, 40), the second (score 0.6) at (50, 50, 80, 90).

    standard: the answer is the higher-scoring first object, IoU 0 -> miss; mask IoU 0.
    reference: the best of both counts: the second's IoU = 30·40 / 40·40 = 0.75 -> hit; mask IoU 0.75.
    """
    rec = referring("q", "the red star", (50, 50, 90, 90))
    res = referring("q", "the red star", (50, 50, 90, 90), task="res")
    answer = Prediction(
        'The "the red star" refers to ... and ...',
        [
            obj("the red star", (0, 0, 40, 40), 0.9, rect(0, 0, 40, 40)),
            obj("the red star", (50, 50, 80, 90), 0.6, rect(50, 50, 80, 90)),
        ],
    )
    report = evaluate({"q": answer}, [rec, res], ["rec", "res"], protocol="both")
    assert (report["rec_acc50"], report["res_ciou"], report["res_giou"]) == (0.0, 0.0, 0.0)
    assert report["rec_acc50_reference"] == 1.0
    assert report["res_ciou_reference"] == pytest.approx(0.75)
    assert report["protocol"] == "both" and "protocol_notes" not in report
    assert report["counts"]["rec_reference"]["echo_dropped"] == 0
    assert format_report(report).splitlines()[2].split() == ["rec_acc50", "0.0000", "1.0000"]


def test_the_echo_rule_drops_an_answer_that_does_not_repeat_the_sentence():
    """The right box labelled "the star" for the query "the red star": standard hit, reference miss."""
    sample = referring("q", "the red star", (50, 50, 90, 90))
    answer = Prediction("", [obj("the star", (50, 50, 90, 90), 0.9)])
    report = evaluate([answer], [sample], ["rec"], protocol="both")
    assert (report["rec_acc50"], report["rec_acc50_reference"]) == (1.0, 0.0)
    counts = report["counts"]["rec_reference"]
    assert (counts["echo_dropped"], counts["unkeyed_objects"]) == (1, 1)
    # Surrounding spaces in the parsed label do not matter (the reference strips labels).
    padded = Prediction("", [obj("  the red star ", (50, 50, 90, 90), 0.9)])
    assert evaluate([padded], [sample], ["rec"], protocol="reference")["rec_acc50_reference"] == 1.0


def test_an_answer_naming_another_sentence_of_the_image_scores_for_that_sentence():
    """Two queries on image 1. The answer to A is labelled with B's sentence and sits on B's box; the
    answer to B is labelled B but misses. standard: both miss (0/2). reference: key (1, B) gets the
    best of both of its objects (a hit), key (1, A) has no object -> 1/2; A's answer counts as dropped."""
    a = referring("a", "left one", (0, 0, 20, 20))
    b = referring("b", "right one", (60, 60, 100, 100))
    answers = [
        Prediction("", [obj("right one", (60, 60, 100, 100), 0.9)]),
        Prediction("", [obj("right one", (0, 0, 10, 10), 0.9)]),
    ]
    report = evaluate(answers, [a, b], ["rec"], protocol="both")
    assert (report["rec_acc50"], report["rec_acc50_reference"]) == (0.0, 0.5)
    assert report["counts"]["rec_reference"]["echo_dropped"] == 1
    # On another image the same label is another key: it scores nowhere.
    b_elsewhere = referring("b", "right one", (60, 60, 100, 100), image_id=2)
    report = evaluate(answers, [a, b_elsewhere], ["rec"], protocol="reference")
    assert report["rec_acc50_reference"] == 0.0
    assert report["counts"]["rec_reference"]["unkeyed_objects"] == 1


def test_duplicate_sentences_on_one_image_share_the_last_ground_truth():
    """Two samples with one key (image 1, "the dog") and different boxes: (0, 0, 40, 40), then
    (50, 50, 90, 90). The reference keeps the last ground truth for the key and pools both answers.
    Each answer on its own sample's box: standard 2/2; reference: the pooled best against the last
    GT is 1.0 for both samples -> 2/2. Only the first answer: standard 1/2 (its own box), reference
    0/2 ((0, 0, 40, 40) misses the key's ground truth (50, 50, 90, 90))."""
    first = referring("s1", "the dog", (0, 0, 40, 40))
    second = referring("s2", "the dog", (50, 50, 90, 90))
    hit_own = [Prediction("", [obj("the dog", (0, 0, 40, 40))]), Prediction("", [obj("the dog", (50, 50, 90, 90))])]
    report = evaluate(hit_own, [first, second], ["rec"], protocol="both")
    assert (report["rec_acc50"], report["rec_acc50_reference"]) == (1.0, 1.0)
    assert report["counts"]["rec_reference"]["duplicate_keys"] == 1
    assert report["counts"]["rec_reference"]["keys"] == 1
    only_first = [hit_own[0], Prediction("nothing", [])]
    report = evaluate(only_first, [first, second], ["rec"], protocol="both")
    assert (report["rec_acc50"], report["rec_acc50_reference"]) == (0.5, 0.0)


def test_integer_boxes_can_turn_a_hit_into_a_miss():
    """GT box (0, 0, 2.6, 10) px, predicted (0, 0, 1.4, 10).
    standard (continuous): IoU = 1.4 / 2.6 = 0.538 -> hit.
    reference: w rounds to 3 and 1 -> IoU = 1·10 / 3·10 = 0.333 -> miss."""
    sample = referring("q", "thin", (0, 0, 2.6, 10))
    answer = Prediction("", [obj("thin", (0, 0, 1.4, 10), 0.5)])
    report = evaluate([answer], [sample], ["rec"], protocol="both")
    assert (report["rec_acc50"], report["rec_acc50_reference"]) == (1.0, 0.0)


def test_res_reference_is_a_mean_of_best_ious_and_an_empty_union_scores_zero():
    """1: answer mask (50, 50, 70, 90) on GT (50, 50, 90, 90): IoU 800 / 1600 = 0.5; 2: no answer.
    standard cIoU = ΣI/ΣU = 800 / (1600 + 1600) = 0.25 = gIoU; reference mean = (0.5 + 0) / 2 = 0.25.
    3: GT (0, 0, 10, 3) (30 px), objects: the exact mask (score 0.9) and an empty one (0.1).
    standard takes the first: cIoU = (800 + 30) / (1600 + 1600 + 30); reference best = 1:
    mean = (0.5 + 0 + 1) / 3 = 0.5. 4: an empty GT answered by an empty mask: standard counts IoU 1
    (nothing to find, nothing found), the reference's ``i/u if u > 0 else 0`` counts 0."""
    one = referring("1", "big", (50, 50, 90, 90), task="res")
    two = referring("2", "big too", (50, 50, 90, 90), task="res", image_id=2)
    three = referring("3", "flat", (0, 0, 10, 3), task="res", image_id=3)
    answers = [
        Prediction("", [obj("big", (50, 50, 70, 90), 0.9, rect(50, 50, 70, 90))]),
        Prediction("", []),
        Prediction(
            "", [obj("flat", (0, 0, 10, 3), 0.9, rect(0, 0, 10, 3)), obj("flat", (0, 0, 1, 1), 0.1, rect(0, 0, 0, 0))]
        ),
    ]
    report = evaluate(answers[:2], [one, two], ["res"], protocol="both")
    assert report["res_ciou"] == pytest.approx(0.25) and report["res_giou"] == pytest.approx(0.25)
    assert report["res_ciou_reference"] == pytest.approx(0.25)
    report = evaluate(answers, [one, two, three], ["res"], protocol="both")
    assert report["res_ciou"] == pytest.approx(830 / 3230)
    assert report["res_ciou_reference"] == pytest.approx(0.5)
    empty = referring("4", "nothing", (0, 0, 0, 0), task="res", image_id=4)
    report = evaluate(
        [Prediction("", [obj("nothing", (0, 0, 0, 0), 0.5, rect(0, 0, 0, 0))])], [empty], ["res"], protocol="both"
    )
    assert (report["res_giou"], report["res_ciou_reference"]) == (1.0, 0.0)


# --- protocols and keys ---------------------------------------------------------------------------


def test_reference_protocol_keys_and_the_ric_note():
    rec = referring("q", "the red star", (50, 50, 90, 90))
    ric = Sample(
        id="c",
        image="1.png",
        task="ric",
        prompt="Please describe this image.",
        answer="A star (<|Obj_0|>).",
        objects=[ObjectAnn(label="", box=(0.5, 0.5, 0.9, 0.9))],
        image_size=SIZE,
        meta={"image_id": 1},
    )
    answers = {"q": Prediction("", [obj("the red star", (50, 50, 90, 90))]), "c": Prediction("A star.", [])}
    both = evaluate(answers, [rec, ric], ["rec", "ric"], protocol="both")
    assert {"rec_acc50", "rec_acc50_reference", "ric_cider", "ric_gp", "ric_gr"} <= set(both)
    assert set(both["counts"]) == {"rec", "rec_reference", "ric"}
    assert "§9.3" in both["protocol_notes"]["ric"]
    reference = evaluate(answers, [rec, ric], ["rec", "ric"], protocol="reference")
    assert "rec_acc50" not in reference and reference["rec_acc50_reference"] == 1.0
    assert "ric_gp" in reference and "ric" in reference["protocol_notes"]  # RIC keeps its standard numbers
    standard = evaluate(answers, [rec, ric], ["rec", "ric"])
    assert "protocol" not in standard and not any(k.endswith("_reference") for k in standard)
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        evaluate(answers, [rec, ric], ["rec"], protocol="paper")


def test_splits_are_scored_apart_and_averaged_unweighted():
    """Split a: 1 sample, hit; split b: 3 samples, 1 hit. Average (1 + 1/3) / 2 = 2/3 (pooled would be 2/4)."""
    samples = [referring("a0", "x", (0, 0, 50, 50), split="a")]
    samples += [referring(f"b{i}", f"y{i}", (0, 0, 50, 50), image_id=10 + i, split="b") for i in range(3)]
    answers = [Prediction("", [obj("x", (0, 0, 50, 50))]), Prediction("", [obj("y0", (0, 0, 50, 50))])]
    answers += [Prediction("", []), Prediction("", [obj("y2", (60, 60, 90, 90))])]
    report = evaluate_splits(answers, samples, ["rec"], protocol="both")
    assert report["splits"]["a"] == {"rec_acc50": 1.0, "rec_acc50_reference": 1.0}
    assert report["splits"]["b"]["rec_acc50"] == pytest.approx(1 / 3)
    assert report["rec_acc50"] == pytest.approx(2 / 3) and report["rec_acc50_reference"] == pytest.approx(2 / 3)
    assert set(report["counts"]) == {"a/rec", "a/rec_reference", "b/rec", "b/rec_reference"}
    table = format_report(report).splitlines()
    assert table[0].split() == ["split", "rec_acc50", "rec_acc50_reference"]
    assert table[-1].split() == ["average", "(2)", "0.6667", "0.6667"]
    # One split, or none: the plain report.
    assert evaluate_splits(answers[:1], samples[:1], ["rec"]) == evaluate(answers[:1], samples[:1], ["rec"])
    unsplit = referring("n", "z", (0, 0, 50, 50), image_id=99)
    with pytest.raises(ValueError, match="1 samples name no meta\\['split'\\]"):
        evaluate_splits([*answers, answers[0]], [*samples, unsplit], ["rec"])


# --- OVD against the preprocessed ground truth ------------------------------------------------------


def _ovd_case(tmp_path):
    """One 224×224 image with two "star"s: a 40×40 one and a 2×2 one, which covers 4 / 784 of a 28-px
    cell (< 1/28) and is dropped by the reference's preprocessing. The answer finds the big one only."""
    boxes = [[20, 20, 40, 40], [150, 150, 2, 2]]  # COCO xywh
    gt = {
        "images": [{"id": 7, "height": 224, "width": 224, "file_name": "7.png"}],
        "categories": [{"id": 1, "name": "star"}],
        "annotations": [
            {"id": i + 1, "image_id": 7, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    objects = [
        ObjectAnn(label="star", box=tuple(v / 224 for v in (x, y, x + w, y + h)), area=w * h, category_id=1)
        for x, y, w, h in boxes
    ]
    sample = Sample(
        id="ovd/7",
        image="7.png",
        task="ovd",
        prompt='Please carefully check the image and detect the following objects: ["star"].',
        answer='There are 2 "star" (<|Obj_0|>, <|Obj_1|>) in this image.',
        objects=objects,
        image_size=(224, 224),
        meta={"image_id": 7, "coco_annotation_file": str(path)},
    )
    return sample, Prediction("", [obj("Star", (20, 20, 60, 60), 0.8)])


def test_ovd_reference_drops_objects_without_a_covered_cell(tmp_path):
    """standard: 1 of 2 stars found at precision 1 -> precision 1 up to recall 0.5, 0 beyond: AP = 51/101
    on each of COCOeval's 101 recall points, at every IoU threshold. reference: the tiny star is not in
    the ground truth -> recall 1 at precision 1: AP = 1. The label "Star" maps in both (lower-cased)."""
    sample, answer = _ovd_case(tmp_path)
    report = evaluate([answer], [sample], ["ovd"], protocol="both")
    assert report["ovd_map"] == pytest.approx(51 / 101)
    assert report["ovd_map_reference"] == pytest.approx(1.0)
    counts = report["counts"]["ovd_reference"]
    assert (counts["gt_objects"], counts["dropped_objects"], counts["results_bbox"]) == (1, 1, 1)
    assert math.isnan(report["ovd_map_segm"])  # box-only ground truth; the reference scores boxes only anyway
    assert "ovd_map_segm_reference" not in report


# --- padt eval --protocol ---------------------------------------------------------------------------


def test_cli_protocol_both_writes_both_key_sets(tmp_path, one_thread):
    """An untrained tiny model on two shapes images: the numbers are whatever it emits; the keys are the point."""
    root = tmp_path / "shapes"
    argv = [
        "data",
        "shapes",
        root,
        "--n-train",
        "2",
        "--n-val",
        "2",
        "--image-size",
        "112",
        "--seed",
        "0",
        "--workers",
        "1",
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    section = {"name": "shapes", "root": str(root), "split": "val", "tasks": ["rec", "ric"]}
    section.update(n_train=2, n_val=2, image_size=112)
    data = tmp_path / "val.yaml"
    data.write_text(json.dumps(section))
    report_path = tmp_path / "report.json"
    argv = ["eval", "tiny_qwen_shapes", "--data", data, "--protocol", "both", "--max-new-tokens", "4"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in [*argv, "--out", report_path]]) == 0
    report = json.loads(report_path.read_text())
    assert report["eval"]["protocol"] == report["protocol"] == "both"
    assert {"rec_acc50", "rec_acc50_reference", "ric_gp"} <= set(report)
    assert set(report["counts"]) == {"rec", "rec_reference", "ric"}
    printed = out.getvalue()
    assert "standard  reference" in printed and "ric: the reference releases no RIC evaluation" in printed

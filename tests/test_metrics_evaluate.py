"""The evaluation driver: routing by task through the registry, the merged report, pairing errors."""

from __future__ import annotations

from collections.abc import Iterator

import padt_plugins.metrics as metrics_module
import pytest
from padt_plugins.metrics import OVDMetric, RECMetric, RESMetric, RICMetric
from pydantic import ValidationError
from test_metrics import obj, rect_mask, referring, ric_sample
from test_metrics_ovd import det, ovd_sample, polygon_mask, write_coco_gt

from padt_core.eval import evaluate
from padt_core.model import Prediction
from padt_core.plugins import UnknownPluginError, get_plugin, list_plugins, register_plugin, unregister_plugin

HEADLINE = {"rec_acc50", "res_ciou", "res_giou", "ovd_map", "ovd_map_segm", "ric_cider", "ric_gp", "ric_gr"}


@pytest.fixture(scope="module", autouse=True)
def metrics_registered() -> Iterator[None]:
    """Register the built-in metrics unless the ``padt`` entry point already did."""
    if "rec" in list_plugins("metrics")["metrics"]:
        yield
        return
    register_plugin(metrics_module, name="padt_plugins.metrics")
    yield
    unregister_plugin(metrics_module)


@pytest.fixture
def split(tmp_path):
    """Mixed samples (2 rec, 1 res, 2 ovd, 2 ric) and one prediction each, in sample order."""
    gt_file = write_coco_gt(tmp_path)
    m = rect_mask(0, 0, 16, 16)
    samples = [
        referring("rec/0", (0, 0, 16, 16), m, "rec"),
        referring("rec/1", (0, 0, 16, 16), m, "rec"),
        referring("res/0", (0, 0, 16, 16), m, "res"),
        ovd_sample(1, gt_file),
        ovd_sample(2, gt_file),
        ric_sample("ric/0", "A cat (<|Obj_0|>) sat.", [(0, 0, 16, 16)], image_id=1, captions=["a cat sat"]),
        ric_sample("ric/1", "A dog (<|Obj_0|>) ran.", [(0, 0, 16, 16)], image_id=2, captions=["a dog ran"]),
    ]
    predictions = [
        Prediction("", [obj((0, 0, 16, 16), 0.9, m)]),
        Prediction("", []),
        Prediction("", [obj((0, 0, 16, 8), 0.9, rect_mask(0, 0, 16, 8))]),
        Prediction("", [det("cat", (4, 4, 20, 20), 0.9, polygon_mask(1, [4, 4, 20, 4, 20, 20, 4, 20])), det("Emu")]),
        Prediction("", []),
        Prediction("A cat (<|VRT_0|>) sat.", [obj((0, 0, 16, 16))], skipped=["no label"]),
        Prediction("A cat.", []),
    ]
    return samples, predictions


def test_metrics_registered_by_name():
    for name, cls in {"rec": RECMetric, "res": RESMetric, "ovd": OVDMetric, "ric": RICMetric}.items():
        assert get_plugin("metrics", name) is cls
        assert cls.Config().name == name


def test_report_has_exactly_the_headline_keys_and_counts(split):
    samples, predictions = split
    report = evaluate(predictions, samples, ["rec", "res", "ovd", "ric"])
    assert set(report) == HEADLINE | {"counts"}
    assert set(report["counts"]) == {"rec", "res", "ovd", "ric"}
    # routed by sample task: rec/0 hit, rec/1 nothing parsed; res/0's mask covers half the ground truth
    assert (report["counts"]["rec"]["samples"], report["counts"]["res"]["samples"]) == (2, 1)
    assert report["rec_acc50"] == pytest.approx(1 / 2)
    assert report["res_ciou"] == report["res_giou"] == pytest.approx(128 / 256)
    assert report["counts"]["ovd"]["unmapped_labels"] == {"emu": 1}
    assert "ovd_map50" in report["counts"]["ovd"]
    assert report["counts"]["ric"]["samples"] == 2 and report["counts"]["ric"]["unparseable"] == 1


def test_only_requested_tasks_are_reported(split):
    samples, predictions = split
    report = evaluate(predictions, samples, ["ric"])
    assert set(report) == {"ric_cider", "ric_gp", "ric_gr", "counts"}


def test_predictions_keyed_by_sample_id(split):
    samples, predictions = split
    by_id = {s.id: p for s, p in zip(reversed(samples), reversed(predictions))}
    assert evaluate(by_id, samples, ["rec", "res"]) == evaluate(predictions, samples, ["rec", "res"])
    del by_id["rec/1"]
    with pytest.raises(ValueError, match="1 samples have no prediction"):
        evaluate(by_id, samples, ["rec"])


def test_one_prediction_keyed_by_id_answers_rec_and_res_samples():
    """Readers give the rec and res samples of a sentence one id; a (task, id) key takes precedence."""
    m = rect_mask(0, 0, 16, 16)
    samples = [referring("ref/7", (0, 0, 16, 16), m, "rec"), referring("ref/7", (0, 0, 16, 16), m, "res")]
    report = evaluate({"ref/7": Prediction("", [obj((0, 0, 16, 16), 0.9, m)])}, samples, ["rec", "res"])
    assert (report["rec_acc50"], report["res_ciou"]) == (1.0, 1.0)
    both = {"ref/7": Prediction("", [obj((0, 0, 16, 16), 0.9, m)]), ("res", "ref/7"): Prediction("", [])}
    report = evaluate(both, samples, ["rec", "res"])
    assert (report["rec_acc50"], report["res_ciou"]) == (1.0, 0.0)


def test_pairing_and_task_errors(split):
    samples, predictions = split
    with pytest.raises(ValueError, match="6 predictions for 7 samples"):
        evaluate(predictions[:-1], samples, ["rec"])
    with pytest.raises(ValueError, match="duplicate samples \\(task:id\\): rec:rec/0"):
        evaluate(predictions + predictions[:1], [*samples, samples[0]], ["rec"])
    with pytest.raises(UnknownPluginError, match="Registered metrics: .*ovd, rec, rec_label, res, ric"):
        evaluate(predictions, samples, ["caption"])
    with pytest.raises(ValueError, match="no sample to score for task 'ovd'"):
        evaluate(predictions[:3], samples[:3], ["rec", "ovd"])
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate(predictions, samples, ["rec"], configs={"ovd": {}})
    with pytest.raises(ValidationError, match="anotation_file"):
        evaluate(predictions, samples, ["ovd"], configs={"ovd": {"anotation_file": "x.json"}})

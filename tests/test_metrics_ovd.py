"""OVD metric: mAP equals a direct ``COCOeval`` run on the results file it writes; label mapping; robustness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from padt_plugins.metrics import OVDMetric
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from padt_core.data.sample import ObjectAnn, Sample, rle_decode
from padt_core.model import PredictedObject, Prediction

# Image 3 is in the ground truth but never evaluated: it must not count (only evaluated images are scored).
IMAGES = {1: (48, 64), 2: (60, 80), 3: (32, 32)}  # id -> (h, w)
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "Dog"}, {"id": 3, "name": "traffic light"}]
# (id, image, category, polygon)
ANNOTATIONS = [
    (1, 1, 1, [4, 4, 20, 4, 20, 20, 4, 20]),
    (2, 1, 2, [30, 10, 60, 10, 60, 40, 30, 40]),
    (3, 1, 1, [40, 2, 50, 2, 45, 9]),  # a small triangle
    (4, 2, 3, [10, 10, 30, 10, 30, 50, 10, 50]),
    (5, 2, 2, [40, 20, 70, 20, 70, 55, 40, 55]),
    (6, 3, 1, [2, 2, 20, 2, 20, 20, 2, 20]),
]


def write_coco_gt(directory: Path) -> Path:
    """A small COCO ground-truth json: 3 images, 3 categories, polygon masks."""
    annotations = []
    for ann_id, image_id, cat, poly in ANNOTATIONS:
        h, w = IMAGES[image_id]
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat,
                "segmentation": [poly],
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": float(mask_utils.area(rle)),
                "iscrowd": 0,
            }
        )
    data = {
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, (h, w) in IMAGES.items()],
        "categories": CATEGORIES,
        "annotations": annotations,
    }
    path = directory / "instances_tiny.json"
    path.write_text(json.dumps(data))
    return path


def polygon_mask(image_id: int, poly: list[float]) -> np.ndarray:
    h, w = IMAGES[image_id]
    return rle_decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))


def ovd_sample(image_id: int, gt_file: Path) -> Sample:
    h, w = IMAGES[image_id]
    objects, parts = [], []
    for _, img, cat, poly in ANNOTATIONS:
        if img == image_id:
            xs, ys = poly[0::2], poly[1::2]
            box = (min(xs) / w, min(ys) / h, max(xs) / w, max(ys) / h)
            objects.append(ObjectAnn(CATEGORIES[cat - 1]["name"], box, category_id=cat))
            parts.append(f"<|Obj_{len(parts)}|>")
    return Sample(
        id=f"coco/{image_id}",
        image=f"{image_id}.jpg",
        task="ovd",
        prompt="Please carefully check the image and detect the following objects: [...].",
        answer=" ".join(parts),
        objects=objects,
        image_size=(h, w),
        meta={"image_id": image_id, "coco_annotation_file": str(gt_file)},
    )


def det(label: str, box=None, score=None, mask=None) -> PredictedObject:
    return PredictedObject(label=label, vrt=[0], box=None if box is None else list(box), score=score, mask=mask)


def predictions() -> dict[int, Prediction]:
    """Hits, a shifted box, a false positive, unmapped labels and objects lacking box/mask/score."""
    return {
        1: Prediction(
            "...",
            [
                det(" Cat ", (4, 4, 20, 20), 0.9, polygon_mask(1, [4, 4, 20, 4, 20, 14, 4, 14])),  # mask IoU ~0.6
                det("DOG", (33, 12, 60, 42), 0.8, polygon_mask(1, [33, 12, 60, 12, 60, 42, 33, 42])),
                det("unicorn", (0, 0, 5, 5), 0.99),
                det("cat", (0, 30, 10, 40), 0.7, polygon_mask(1, [0, 30, 10, 30, 10, 40, 0, 40])),  # false positive
            ],
        ),
        2: Prediction(
            "...",
            [
                det("traffic  light", (10, 10, 30, 50), None, polygon_mask(2, ANNOTATIONS[3][3])),  # no score
                det("dog", None, 0.6, polygon_mask(2, ANNOTATIONS[4][3])),  # mask only
                det("Dog", (40, 20, 70, 55), 0.5),  # box only
                det("UNICORN", (1, 1, 2, 2), 0.1),
            ],
        ),
    }


def direct_coco_eval(gt_file: Path, results_file: Path, iou_type: str, image_ids: list[int]) -> float:
    coco = COCO(str(gt_file))
    evaluator = COCOeval(coco, coco.loadRes(str(results_file)), iouType=iou_type)
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.fixture
def scored(tmp_path: Path) -> tuple[OVDMetric, dict, Path]:
    gt_file = write_coco_gt(tmp_path)
    metric = OVDMetric()
    for image_id, prediction in predictions().items():
        metric.update(ovd_sample(image_id, gt_file), prediction)
    return metric, metric.compute(), gt_file


def test_map_equals_direct_cocoeval_on_written_results(scored, tmp_path):
    metric, out, gt_file = scored
    for iou_type, key in (("bbox", "ovd_map"), ("segm", "ovd_map_segm")):
        path = metric.write_results(tmp_path / f"results_{iou_type}.json", iou_type)
        assert out[key] == pytest.approx(direct_coco_eval(gt_file, path, iou_type, [1, 2]), abs=1e-12)
        assert 0.0 < out[key] < 1.0
    # Restricting params.imgIds matters: image 3's unmatched cat would lower the mAP.
    everything = direct_coco_eval(gt_file, tmp_path / "results_bbox.json", "bbox", [1, 2, 3])
    assert everything < out["ovd_map"]
    assert metric.image_ids == [1, 2]
    assert out["ovd_map_segm"] < out["ovd_map"]  # the cat's mask is worse than its box


def test_results_file_is_coco_format(scored, tmp_path):
    metric, _, _ = scored
    bbox = json.loads(metric.write_results(tmp_path / "r.json").read_text())
    assert bbox[0] == {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [4.0, 4.0, 16.0, 16.0]}
    segm = metric.results("segm")
    assert all("bbox" not in r and set(r["segmentation"]) == {"size", "counts"} for r in segm)


def test_label_mapping_case_insensitive_and_unmapped_report(scored):
    _, out, _ = scored
    # mapped: " Cat ", "DOG", "cat", "traffic  light", "dog", "Dog"; unmapped: "unicorn", "UNICORN"
    assert out["unmapped_labels"] == {"unicorn": 2}
    assert out["unmapped_objects"] == 2
    assert (out["results_bbox"], out["results_segm"]) == (5, 5)
    assert (out["no_box"], out["no_mask"], out["no_score"]) == (1, 1, 1)
    assert (out["samples"], out["parsed_objects"], out["images"], out["unparseable"]) == (2, 8, 2, 0)


def test_no_detections_scores_zero_without_crashing(tmp_path):
    gt_file = write_coco_gt(tmp_path)
    metric = OVDMetric()
    metric.update(ovd_sample(1, gt_file), Prediction("No objects from the list are present.", [], truncated=True))
    metric.update(ovd_sample(2, gt_file), Prediction("...", [det("unicorn", (0, 0, 1, 1), 0.5)], skipped=["x"]))
    out = metric.compute()
    assert out["ovd_map"] == 0.0 and out["ovd_map_segm"] == 0.0
    assert (out["unparseable"], out["truncated"], out["with_skipped"]) == (2, 1, 1)


def test_image_without_ground_truth_gives_nan(tmp_path):
    gt_file = write_coco_gt(tmp_path)
    data = json.loads(gt_file.read_text())
    data["images"].append({"id": 9, "height": 10, "width": 10, "file_name": "9.jpg"})
    gt_file.write_text(json.dumps(data))
    sample = Sample("coco/9", "9.jpg", "ovd", "p", "No objects.", [], (10, 10), {"image_id": 9})
    metric = OVDMetric({"annotation_file": str(gt_file)})  # the config may name the file instead of meta
    metric.update(sample, Prediction("No objects.", []))
    out = metric.compute()
    assert math.isnan(out["ovd_map"]) and out["unparseable"] == 0


def test_bad_ground_truth_references_raise(tmp_path):
    gt_file = write_coco_gt(tmp_path)
    sample = ovd_sample(1, gt_file)
    sample.meta = {"image_id": 1}
    with pytest.raises(ValueError, match="coco_annotation_file"):
        OVDMetric().update(sample, Prediction("", []))
    sample.meta = {"image_id": 77, "coco_annotation_file": str(gt_file)}
    with pytest.raises(ValueError, match="image id 77 is not in"):
        OVDMetric().update(sample, Prediction("", []))

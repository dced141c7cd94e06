"""OVD (open-vocabulary detection on COCO): box and mask mAP with pycocotools, standard protocol.

Ground truth is the dataset's own COCO annotation file (``sample.meta["coco_annotation_file"]``, or
the config's ``annotation_file``), not boxes rebuilt from the processed samples as the reference does
(§9.1), so objects that preprocessing dropped still count as misses. Each parsed object becomes one
COCO result; its label is mapped to a category id by name, case-insensitively and ignoring
surrounding/repeated whitespace; labels that name no category are dropped and reported per label.
``COCOeval`` runs with default parameters, ``params.imgIds`` = the images that were evaluated.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pydantic import Field

from padt_core import rle
from padt_core.plugins import PluginConfig

from .base import Metric, finite_score, mask_or_none, valid_box

__all__ = ["OVDMetric", "OVDMetricConfig", "normalise_label"]

IouType = Literal["bbox", "segm"]


class OVDMetricConfig(PluginConfig):
    """Recipe/driver section for ``name: ovd``."""

    name: Literal["ovd"] = "ovd"
    annotation_file: str | None = Field(
        None, description="COCO ground-truth json; default: each sample's meta['coco_annotation_file']"
    )
    verbose: bool = Field(False, description="let pycocotools print its loading messages and summary tables")


def normalise_label(label: str) -> str:
    """The key labels and category names are compared by: case-folded, whitespace collapsed and stripped."""
    return " ".join(str(label).split()).casefold()


class OVDMetric(Metric):
    """COCO mAP (bbox and segm) of the parsed objects of OVD samples.

    ``compute()`` keys: ``ovd_map``, ``ovd_map_segm`` (AP@[.50:.95], COCOeval ``stats[0]``),
    ``ovd_map50``, ``ovd_map50_segm`` (``stats[1]``); ``images`` evaluated; ``results_bbox``,
    ``results_segm`` (results scored); ``unmapped_objects`` and ``unmapped_labels`` (normalised label
    → count); ``no_box``, ``no_mask`` (mapped objects without a usable box/mask, left out of that
    evaluation); ``no_score`` (mapped objects without a finite score, scored as 1.0); plus the shared
    counts. mAP is NaN when COCOeval has nothing to average (no ground truth in the evaluated images).
    """

    name: ClassVar[str] = "ovd"
    Config: ClassVar[type[PluginConfig]] = OVDMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("ovd",)
    headline: ClassVar[tuple[str, ...]] = ("ovd_map", "ovd_map_segm")

    @classmethod
    def reference_variant(cls) -> type[Metric]:
        from .ovd_reference import OVDReferenceMetric  # imported late: it builds on this module

        return OVDReferenceMetric

    def reset(self) -> None:
        super().reset()
        self._gt_file: str | None = None
        self._image_ids: set[int] = set()
        self._results: dict[str, list[dict]] = {"bbox": [], "segm": []}
        self.unmapped_labels: Counter[str] = Counter()
        self._object_counts = {"no_box": 0, "no_mask": 0, "no_score": 0}

    # --- ground truth -------------------------------------------------------------------------
    def _ground_truth(self, path: str) -> tuple[COCO, dict[str, int]]:
        """The COCO ground truth of ``path`` and its normalised category name → id map (cached)."""
        # Kept across reset(): the ground truth does not change between evaluations.
        cache: dict[str, tuple[COCO, dict[str, int]]] = self.__dict__.setdefault("_gt_cache", {})
        if path not in cache:
            if not Path(path).is_file():
                raise FileNotFoundError(f"ovd metric: COCO annotation file not found: {path}")
            with self._quiet():
                coco = COCO(path)
            cache[path] = (coco, _categories(coco))
        return cache[path]

    def _resolve_gt_file(self, sample: Any) -> str:
        configured = self.config.annotation_file
        path = configured or (getattr(sample, "meta", None) or {}).get("coco_annotation_file")
        if not path:
            raise ValueError(
                f"ovd metric: sample {sample.id!r} has no meta['coco_annotation_file'] and the metric config sets "
                "no annotation_file; OVD is scored against the dataset's COCO ground-truth file"
            )
        path = os.path.abspath(os.fspath(path))
        if self._gt_file is None:
            self._gt_file = path
        elif path != self._gt_file:
            raise ValueError(
                f"ovd metric: sample {sample.id!r} uses ground truth {path}, earlier samples {self._gt_file}; "
                "evaluate one annotation file at a time"
            )
        return path

    # --- streaming ----------------------------------------------------------------------------
    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        coco, categories = self._ground_truth(self._resolve_gt_file(sample))
        meta = getattr(sample, "meta", None) or {}
        if "image_id" not in meta:
            raise ValueError(f"ovd metric: sample {sample.id!r} has no meta['image_id'] (its COCO image id)")
        image_id = int(meta["image_id"])
        if image_id not in coco.imgs:
            raise ValueError(f"ovd metric: sample {sample.id!r}: image id {image_id} is not in {self._gt_file}")
        self._image_ids.add(image_id)
        image = coco.imgs[image_id]
        size = (int(image["height"]), int(image["width"]))
        for obj in objects:
            label = normalise_label(getattr(obj, "label", "") or "")
            category_id = categories.get(label)
            if category_id is None:
                self.unmapped_labels[label] += 1
                continue
            score = finite_score(getattr(obj, "score", None))
            if score is None:
                # Without a score head every object ranks equally; 1.0 keeps them in the evaluation.
                self._object_counts["no_score"] += 1
                score = 1.0
            base = {"image_id": image_id, "category_id": category_id, "score": score}
            box = valid_box(getattr(obj, "box", None))
            if box is None:
                self._object_counts["no_box"] += 1
            else:
                x1, y1, x2, y2 = box
                self._results["bbox"].append({**base, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            mask = mask_or_none(getattr(obj, "mask", None), size)
            if mask is None:
                self._object_counts["no_mask"] += 1
            else:
                # No "bbox" in segm results: pycocotools would take the box area as the instance area
                # and change the small/medium/large split of mask AP (detectron2 drops it likewise).
                self._results["segm"].append({**base, "segmentation": rle.encode(mask)})

    # --- results ------------------------------------------------------------------------------
    def results(self, iou_type: IouType = "bbox") -> list[dict]:
        """The COCO results list scored for ``iou_type`` (``bbox``: xywh pixels; ``segm``: RLE)."""
        if iou_type not in self._results:
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        return copy.deepcopy(self._results[iou_type])

    def write_results(self, path: str | os.PathLike, iou_type: IouType = "bbox") -> Path:
        """Write the results JSON scored for ``iou_type``; ``COCO.loadRes(path)`` + ``COCOeval`` reproduce it."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.results(iou_type)))
        return out

    @property
    def image_ids(self) -> list[int]:
        """COCO ids of the evaluated images (``params.imgIds``), sorted."""
        return sorted(self._image_ids)

    def _evaluate(self, coco: COCO, iou_type: IouType) -> tuple[float, float]:
        image_ids = self.image_ids
        if iou_type == "segm" and any("segmentation" not in a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_ids))):
            return math.nan, math.nan  # box-only ground truth: mask AP is undefined
        with self._quiet():
            results = self.results(iou_type)  # loadRes writes into the dicts: hand it copies
            detections = coco.loadRes(results) if results else _empty_results(coco)
            evaluator = COCOeval(coco, detections, iouType=iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        ap, ap50 = (float(v) for v in evaluator.stats[:2])
        return (math.nan if ap < 0 else ap), (math.nan if ap50 < 0 else ap50)  # -1 = nothing to average

    def _compute(self) -> dict[str, float | int | dict]:
        if self._gt_file is None:
            box = segm = (math.nan, math.nan)
        else:
            coco, _ = self._ground_truth(self._gt_file)
            box, segm = self._evaluate(coco, "bbox"), self._evaluate(coco, "segm")
        return {
            "ovd_map": box[0],
            "ovd_map_segm": segm[0],
            "ovd_map50": box[1],
            "ovd_map50_segm": segm[1],
            "images": len(self._image_ids),
            "results_bbox": len(self._results["bbox"]),
            "results_segm": len(self._results["segm"]),
            "unmapped_objects": sum(self.unmapped_labels.values()),
            "unmapped_labels": dict(self.unmapped_labels.most_common()),
            **self._object_counts,
        }

    def _quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.config.verbose else contextlib.redirect_stdout(io.StringIO())


def _categories(coco: COCO) -> dict[str, int]:
    """Normalised category name → id; two categories with one normalised name are an error."""
    by_name: dict[str, int] = {}
    for cat in coco.loadCats(coco.getCatIds()):
        key = normalise_label(cat["name"])
        if key in by_name:
            raise ValueError(f"ovd metric: categories {by_name[key]} and {cat['id']} share the name {key!r}")
        by_name[key] = int(cat["id"])
    return by_name


def _empty_results(coco: COCO) -> COCO:
    """A results object with no detections (``COCO.loadRes`` fails on an empty list)."""
    empty = COCO()
    empty.dataset = {"images": list(coco.dataset["images"]), "categories": copy.deepcopy(coco.dataset["categories"])}
    empty.dataset["annotations"] = []
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty

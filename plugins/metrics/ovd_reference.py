"""OVD under the reference's protocol (reference §9.1): box mAP against its *preprocessed* ground truth.

``eval_coco.py`` does not score against the official COCO annotations. It rebuilds the ground truth
from the processed val file, so the objects its preprocessing dropped are absent: objects covering
no VRT cell (a ``cell_size``-px cell, 28 for Qwen2.5-VL, covered by at least ``coverage`` = 1/28 of
its area, §6.2) and categories with more than 50 objects in the image (the ``coco`` reader already
leaves those out of the sample). Here the ground truth is rebuilt the same way from the OVD samples'
objects: box = normalised xyxy × original size, each of ``x, y, w, h`` rounded; ``area`` and
``iscrowd`` copied (area from the box when the source has none); images and categories from the
official file. Predicted labels map to categories by exact lower-cased name (unmatched ones are
dropped and counted), boxes are rounded to integer ``[x, y, w, h]`` like the reference's decoder
output, and only boxes are scored (``COCOeval`` bbox, default parameters, ``imgIds`` = the
evaluated images): ``ovd_map_reference`` = ``stats[0]``, ``ovd_map50_reference`` = ``stats[1]``.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, ClassVar, Literal

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pydantic import Field

from padt_core.data.sample import object_cells
from padt_core.plugins import PluginConfig

from .base import finite_score, gt_box_pixels, valid_box
from .ovd import OVDMetric, _empty_results, normalise_label
from .reference import rounded_xywh

__all__ = ["OVDReferenceMetric", "OVDReferenceMetricConfig"]


class OVDReferenceMetricConfig(PluginConfig):
    """Driver section for ``name: ovd_reference`` (the ``ovd`` options, plus the preprocessing rule)."""

    name: Literal["ovd_reference"] = "ovd_reference"
    annotation_file: str | None = Field(
        None, description="COCO json for images/categories; default: each sample's meta['coco_annotation_file']"
    )
    verbose: bool = Field(False, description="let pycocotools print its loading messages and summary tables")
    cell_size: int = Field(28, ge=1, description="VRT cell size of the preprocessing (28 px: Qwen2.5-VL)")
    coverage: float = Field(1 / 28, gt=0, le=1, description="share of a cell an object must cover to be kept")


class OVDReferenceMetric(OVDMetric):
    """Box mAP against the ground truth rebuilt from the samples' preprocessed objects.

    ``compute()`` keys: ``ovd_map_reference``, ``ovd_map50_reference``; ``gt_objects`` (kept),
    ``dropped_objects`` (no covered cell); ``images``, ``results_bbox``, ``unmapped_objects``,
    ``unmapped_labels``, ``no_box``, ``no_score``; plus the shared counts.
    """

    name: ClassVar[str] = "ovd_reference"
    Config: ClassVar[type[PluginConfig]] = OVDReferenceMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("ovd",)
    headline: ClassVar[tuple[str, ...]] = ("ovd_map_reference",)

    @classmethod
    def reference_variant(cls) -> None:
        return None  # it is the variant

    def reset(self) -> None:
        super().reset()
        self._annotations: list[dict] = []
        self._object_counts = {"no_box": 0, "no_score": 0}
        self.dropped_objects = 0

    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        coco, _ = self._ground_truth(self._resolve_gt_file(sample))
        meta = getattr(sample, "meta", None) or {}
        if "image_id" not in meta:
            raise ValueError(f"ovd_reference metric: sample {sample.id!r} has no meta['image_id'] (its COCO image id)")
        image_id = int(meta["image_id"])
        if image_id not in coco.imgs:
            raise ValueError(
                f"ovd_reference metric: sample {sample.id!r}: image id {image_id} is not in {self._gt_file}"
            )
        if image_id in self._image_ids:
            raise ValueError(
                f"ovd_reference metric: image {image_id} is evaluated twice (samples must be one per image)"
            )
        self._image_ids.add(image_id)
        image = coco.imgs[image_id]
        size = (int(image["height"]), int(image["width"]))
        by_name = {str(c["name"]).lower(): int(c["id"]) for c in coco.loadCats(coco.getCatIds())}
        self._add_truth(sample, image_id, size, by_name)
        for obj in objects:
            label = str(getattr(obj, "label", "") or "").strip().lower()  # exact name, as the reference
            category_id = by_name.get(label)
            if category_id is None:
                self.unmapped_labels[normalise_label(label)] += 1
                continue
            box = valid_box(getattr(obj, "box", None))
            if box is None:
                self._object_counts["no_box"] += 1
                continue
            score = finite_score(getattr(obj, "score", None))
            if score is None:
                self._object_counts["no_score"] += 1
                score = 1.0
            result = {"image_id": image_id, "category_id": category_id, "score": score}
            self._results["bbox"].append({**result, "bbox": list(rounded_xywh(box))})

    def _add_truth(self, sample: Any, image_id: int, size: tuple[int, int], by_name: dict[str, int]) -> None:
        """The sample's objects that survive the preprocessing, as COCO annotations."""
        h, w = size
        grid = (max(1, round(h / self.config.cell_size)), max(1, round(w / self.config.cell_size)))
        for obj in getattr(sample, "objects", None) or []:
            if not object_cells(obj, grid, size, self.config.coverage):
                self.dropped_objects += 1
                continue
            category_id = obj.category_id if obj.category_id is not None else by_name.get(str(obj.label).lower())
            if category_id is None:
                raise ValueError(
                    f"ovd_reference metric: sample {sample.id!r}: object label {obj.label!r} names no category "
                    f"of {self._gt_file}"
                )
            x, y, bw, bh = rounded_xywh(gt_box_pixels(obj, size))
            self._annotations.append(
                {
                    "id": len(self._annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [x, y, bw, bh],
                    "area": float(obj.area) if obj.area is not None else float(bw * bh),
                    "iscrowd": int(bool(obj.iscrowd)),
                }
            )

    def _rebuilt_ground_truth(self) -> COCO:
        official, _ = self._ground_truth(self._gt_file)
        coco = COCO()
        coco.dataset = {
            "images": list(official.dataset["images"]),
            "categories": list(official.dataset["categories"]),
            "annotations": [dict(a) for a in self._annotations],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def _compute(self) -> dict[str, float | int | dict]:
        ap = ap50 = math.nan
        if self._gt_file is not None:
            coco = self._rebuilt_ground_truth()
            with self._quiet():
                results = self.results("bbox")
                detections = coco.loadRes(results) if results else _empty_results(coco)
                evaluator = COCOeval(coco, detections, iouType="bbox")
                evaluator.params.imgIds = self.image_ids
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            ap, ap50 = (float(v) for v in evaluator.stats[:2])
            ap, ap50 = (math.nan if ap < 0 else ap), (math.nan if ap50 < 0 else ap50)
        return {
            "ovd_map_reference": ap,
            "ovd_map50_reference": ap50,
            "gt_objects": len(self._annotations),
            "dropped_objects": self.dropped_objects,
            "images": len(self._image_ids),
            "results_bbox": len(self._results["bbox"]),
            "unmapped_objects": sum(self.unmapped_labels.values()),
            "unmapped_labels": dict(self.unmapped_labels.most_common()),
            **self._object_counts,
        }

"""RES (referring expression segmentation): cIoU and gIoU of the answer's mask (reference §9.2, fixed).

The answer's object is chosen as for REC (highest score, else first). Masks are compared at the
original image size; the ground truth is the sample object's COCO RLE. With ``I_i``/``U_i`` the
intersection/union pixel counts of sample ``i``:

* ``res_ciou = Σ I_i / Σ U_i`` — cumulative over the split (large objects weigh more);
* ``res_giou = mean_i I_i / U_i`` — the per-sample mean (what the reference prints as "CIoU").

No object or no usable mask → ``I_i = 0``, ``U_i`` = ground-truth area (IoU 0). An empty ground truth
with an empty prediction has ``U_i = 0`` and per-sample IoU 1 (nothing to find, nothing found).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from padt_core import rle
from padt_core.plugins import PluginConfig

from .base import Metric, image_size_of, mask_or_none, ratio, select_object
from .rec import single_gt_object

__all__ = ["RESMetric", "RESMetricConfig"]


class RESMetricConfig(PluginConfig):
    """Recipe/driver section for ``name: res`` (no options)."""

    name: Literal["res"] = "res"


class RESMetric(Metric):
    """cIoU and gIoU over a split of referring samples with ground-truth masks.

    ``compute()`` keys: ``res_ciou``, ``res_giou``; ``intersection`` and ``union`` (cumulative pixel
    counts); ``no_mask`` (samples whose selected object had no usable mask: missing, or not of the
    image's size); plus the shared counts. ``per_sample`` maps sample id → IoU.
    """

    name: ClassVar[str] = "res"
    Config: ClassVar[type[PluginConfig]] = RESMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("res",)
    headline: ClassVar[tuple[str, ...]] = ("res_ciou", "res_giou")

    @classmethod
    def reference_variant(cls) -> type[Metric]:
        from .reference import RESReferenceMetric  # imported late: it builds on this module

        return RESReferenceMetric

    def reset(self) -> None:
        super().reset()
        self.intersection = 0  # python ints: exact however large the split
        self.union = 0
        self.no_mask = 0
        self.per_sample: dict[str, float] = {}

    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        gt_obj = single_gt_object(sample, self.name)
        size = image_size_of(sample)
        gt = self._gt_mask(sample, gt_obj, size)
        chosen = select_object(objects)
        pred = mask_or_none(getattr(chosen, "mask", None), size) if chosen is not None else None
        if chosen is not None and pred is None:
            self.no_mask += 1
        if pred is None:
            inter, union = 0, int(gt.sum())
        else:
            inter, union = int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())
        self.intersection += inter
        self.union += union
        self.per_sample[str(sample.id)] = inter / union if union else 1.0

    @staticmethod
    def _gt_mask(sample: Any, obj: Any, size: tuple[int, int]) -> np.ndarray:
        gt_rle = getattr(obj, "mask", None)
        if not isinstance(gt_rle, dict):
            raise ValueError(f"res metric: sample {sample.id!r} has no ground-truth mask (RLE); RES needs one")
        gt = rle.decode(gt_rle)
        if gt.shape != tuple(size):
            raise ValueError(
                f"res metric: sample {sample.id!r}: ground-truth RLE size {gt.shape[0]}x{gt.shape[1]} (h x w) "
                f"does not match the image size {size[0]}x{size[1]}"
            )
        return gt

    def _compute(self) -> dict[str, float | int | dict]:
        n = self._counts["samples"]
        ciou = ratio(self.intersection, self.union) if self.union or not n else 1.0
        return {
            "res_ciou": ciou,
            "res_giou": ratio(sum(self.per_sample.values()), n),
            "intersection": self.intersection,
            "union": self.union,
            "no_mask": self.no_mask,
        }

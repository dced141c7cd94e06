"""REC / RES under the reference's evaluation protocol (reference §9.2), for numbers next to the paper's.

The reference's ``eval_refcoco.py`` differs from the standard protocol of :mod:`.rec` / :mod:`.res`:

* **Keys, not samples.** Ground truth is keyed by ``(image id, sentence)``; every predicted object is
  keyed by ``(image id, its parsed label)``. An object scores for a query only when the model
  repeated the query sentence inside its quotes (the *echo rule*); an object whose label is another
  sentence of the same image scores for that sentence instead. Samples with the same key share one
  ground truth (the last one read) and one pool of predicted objects.
* **Best of all objects.** Per key the maximum IoU over all its predicted objects counts, box and
  mask separately; a key without a predicted object scores 0.
* **Integer boxes.** Box IoU on ``[x, y, w, h]`` rounded to integer pixels (ground truth: the
  normalised box times the image size, each of ``x, y, w, h`` rounded; prediction: rounded likewise).
  A union of 0 gives IoU 0, and so does an empty mask pair.
* **Averaging.** Each sample (each item of the evaluated split file) takes its key's score, and the
  split's figure is the mean over samples: the variant over VLM-R1's split files that the paper
  reports. ``rec_acc50_reference`` = share of samples with IoU ≥ 0.5 (printed "AP_50" there);
  ``res_ciou_reference`` = mean of the per-sample mask IoUs (printed "CIoU" there, although it is
  not the cumulative ΣI/ΣU that :mod:`.res` reports as ``res_ciou``).

Counts: ``keys`` (distinct keys), ``duplicate_keys`` (samples whose key an earlier sample had),
``echo_dropped`` (samples that got an answer with objects, none of them labelled with the query
sentence: the echo rule drops their own answer), ``unkeyed_objects`` (objects whose label is no
sentence of their image: scored nowhere). Definitions and a worked example: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar, Literal

import numpy as np

from padt_core import rle
from padt_core.plugins import PluginConfig

from .base import Metric, gt_box_pixels, image_size_of, mask_or_none, ratio, valid_box
from .rec import IOU_THRESHOLD, single_gt_object

__all__ = [
    "RECReferenceMetric",
    "RECReferenceMetricConfig",
    "RESReferenceMetric",
    "RESReferenceMetricConfig",
    "reference_box_iou",
    "reference_key",
    "rounded_xywh",
]

Key = tuple[str, str]


def reference_key(sample: Any, label: str) -> Key:
    """``(image id, label)``: the reference's ``"<image_id>_<label>"`` key (image path when no id).

    Args:
        sample: the sample whose image the key names (``meta["image_id"]``, else ``sample.image``).
        label: the query sentence (ground truth) or an object's parsed label (prediction).
    """
    meta = getattr(sample, "meta", None) or {}
    image = meta.get("image_id")
    return (str(image if image is not None else getattr(sample, "image", "")), label)


def rounded_xywh(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """An xyxy pixel box as the reference's integer ``[x, y, w, h]`` (each value rounded on its own).

    Example:
        >>> rounded_xywh((0.4, 1.5, 2.6, 10.0))
        (0, 2, 2, 8)
    """
    x1, y1, x2, y2 = box
    return (round(x1), round(y1), round(x2 - x1), round(y2 - y1))


def reference_box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes as ``eval_refcoco.py`` computes it (union 0 → 0).

    Example:
        >>> reference_box_iou((0, 0, 3, 10), (0, 0, 1, 10))
        0.3333333333333333
    """
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


class _KeyedReferring(Metric):
    """Shared keying of the reference REC/RES metrics: ground truth per key, predicted objects per key."""

    def reset(self) -> None:
        super().reset()
        self._truth: dict[Key, Any] = {}  # key -> what the subclass compares against (last sample wins)
        self._pool: dict[Key, list[Any]] = defaultdict(list)  # key -> what the objects keyed there offer
        self._sample_keys: list[tuple[str, Key]] = []
        self.duplicate_keys = 0
        self.echo_dropped = 0

    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        gt = single_gt_object(sample, self.name)
        size = image_size_of(sample)
        sentence = str(gt.label)
        key = reference_key(sample, sentence)
        truth = self._truth_of(sample, gt, size)
        self.duplicate_keys += key in self._truth
        self._truth[key] = truth
        self._sample_keys.append((str(sample.id), key))
        echoed = False
        for obj in objects:
            label = str(getattr(obj, "label", "") or "").strip()
            echoed |= label == sentence
            offer = self._offer(obj, size)
            if offer is not None:
                self._pool[reference_key(sample, label)].append(offer)
        self.echo_dropped += bool(objects) and not echoed

    def _scores(self) -> tuple[dict[str, float], dict[str, int]]:
        """Per-sample score (its key's best) and the key counts."""
        best = {
            key: max((self._score(truth, o) for o in self._pool.get(key, ())), default=0.0)
            for key, truth in self._truth.items()
        }
        unkeyed = sum(len(v) for k, v in self._pool.items() if k not in self._truth)
        per_sample = {sid: best[key] for sid, key in self._sample_keys}
        counts = {
            "keys": len(self._truth),
            "duplicate_keys": self.duplicate_keys,
            "echo_dropped": self.echo_dropped,
            "unkeyed_objects": unkeyed,
        }
        return per_sample, counts

    # subclass hooks: what a key's truth is, what one predicted object offers, and their score
    def _truth_of(self, sample: Any, gt: Any, size: tuple[int, int]) -> Any:
        raise NotImplementedError

    def _offer(self, obj: Any, size: tuple[int, int]) -> Any | None:
        raise NotImplementedError

    def _score(self, truth: Any, offer: Any) -> float:
        raise NotImplementedError


class RECReferenceMetricConfig(PluginConfig):
    """Driver section for ``name: rec_reference`` (no options: the reference's protocol is fixed)."""

    name: Literal["rec_reference"] = "rec_reference"


class RECReferenceMetric(_KeyedReferring):
    """Acc@0.5 as the reference computes it: echo-keyed, best box of all objects, integer boxes.

    ``compute()`` keys: ``rec_acc50_reference``; ``hits``; ``keys``, ``duplicate_keys``,
    ``echo_dropped``, ``unkeyed_objects``; plus the shared counts. ``per_sample`` maps sample id →
    its key's best box IoU (after :meth:`compute`).
    """

    name: ClassVar[str] = "rec_reference"
    Config: ClassVar[type[PluginConfig]] = RECReferenceMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("rec",)
    headline: ClassVar[tuple[str, ...]] = ("rec_acc50_reference",)

    def _truth_of(self, sample: Any, gt: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
        return rounded_xywh(gt_box_pixels(gt, size))

    def _offer(self, obj: Any, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        box = valid_box(getattr(obj, "box", None))
        return None if box is None else rounded_xywh(box)

    def _score(self, truth: tuple[int, int, int, int], offer: tuple[int, int, int, int]) -> float:
        return reference_box_iou(truth, offer)

    def _compute(self) -> dict[str, float | int | dict]:
        self.per_sample, counts = self._scores()
        hits = sum(iou >= IOU_THRESHOLD for iou in self.per_sample.values())
        return {"rec_acc50_reference": ratio(hits, len(self.per_sample)), "hits": hits, **counts}


class RESReferenceMetricConfig(PluginConfig):
    """Driver section for ``name: res_reference`` (no options)."""

    name: Literal["res_reference"] = "res_reference"


class RESReferenceMetric(_KeyedReferring):
    """The reference's RES "CIoU": mean over samples of the key's best mask IoU.

    ``compute()`` keys: ``res_ciou_reference``; ``no_mask`` (objects without a usable mask, which
    offer nothing); ``keys``, ``duplicate_keys``, ``echo_dropped``, ``unkeyed_objects``; plus the
    shared counts. Predicted masks are kept run-length encoded until :meth:`compute`.
    """

    name: ClassVar[str] = "res_reference"
    Config: ClassVar[type[PluginConfig]] = RESReferenceMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("res",)
    headline: ClassVar[tuple[str, ...]] = ("res_ciou_reference",)

    def reset(self) -> None:
        super().reset()
        self.no_mask = 0

    def _truth_of(self, sample: Any, gt: Any, size: tuple[int, int]) -> dict:
        from .res import RESMetric

        RESMetric._gt_mask(sample, gt, size)  # the same checks as the standard metric (RLE present, size)
        return gt.mask

    def _offer(self, obj: Any, size: tuple[int, int]) -> dict | None:
        mask = mask_or_none(getattr(obj, "mask", None), size)
        if mask is None:
            self.no_mask += 1
            return None
        return rle.encode(mask)

    def _score(self, truth: dict, offer: dict) -> float:
        gt, pred = rle.decode(truth), rle.decode(offer)
        union = int(np.logical_or(gt, pred).sum())
        return int(np.logical_and(gt, pred).sum()) / union if union else 0.0

    def _compute(self) -> dict[str, float | int | dict]:
        self.per_sample, counts = self._scores()
        mean = ratio(sum(self.per_sample.values()), len(self.per_sample))
        return {"res_ciou_reference": mean, "no_mask": self.no_mask, **counts}

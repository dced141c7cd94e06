"""RIC (referring image captioning): CIDEr-D of the caption and greedy grounding precision/recall.

The reference releases no RIC evaluation (§9.3); the definitions here are ours (``docs/metrics.md``).

* Caption: the candidate is the completion text tokenised by :func:`.cider.tokenize`, which drops
  every ``<|...|>`` token (the VRTs), quotes, brackets and other punctuation, so ``a "man"
  (<|VRT_3|><|VRT_4|>) rides`` reads ``a man rides``. References of an image are
  ``sample.meta["captions"]``, else the answers (``<|Obj_k|>`` removed) of all its samples.
  Samples are grouped into images by ``meta["image_id"]``, else by image path; every sample is one
  candidate scored against its image's references, and each image counts once in the document
  frequencies. ``ric_cider`` is the mean over samples.
* Grounding: per sample, predicted objects are matched one-to-one to ground-truth objects by box IoU
  ≥ 0.5, greedily in descending IoU order (ties: earlier predicted object, then earlier ground truth).
  Over the split, ``ric_gp = Σ matched / Σ predicted`` and ``ric_gr = Σ matched / Σ ground truth``.
  A predicted object without a usable box is predicted but never matched.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from padt_core.plugins import PluginConfig

from .base import Metric, box_iou, gt_box_pixels, image_size_of, ratio, valid_box
from .cider import cider_d, tokenize

__all__ = ["RICMetric", "RICMetricConfig", "greedy_matches"]


class RICMetricConfig(PluginConfig):
    """Recipe/driver section for ``name: ric``."""

    name: Literal["ric"] = "ric"
    match_iou: float = Field(0.5, gt=0.0, le=1.0, description="box IoU at which a predicted object matches")


def greedy_matches(predicted: list[tuple | None], truth: list[tuple], threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one ``(predicted index, truth index)`` pairs with IoU ≥ ``threshold``, best IoU first.

    ``predicted`` boxes may be ``None`` (never matched). Ties in IoU go to the earlier predicted
    object, then the earlier ground truth, so the result is deterministic.
    """
    pairs = []
    for i, box in enumerate(predicted):
        if box is None:
            continue
        for j, gt in enumerate(truth):
            iou = box_iou(box, gt)
            if iou >= threshold:
                pairs.append((-iou, i, j))
    pairs.sort()
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches = []
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            matches.append((i, j))
    return matches


class RICMetric(Metric):
    """CIDEr-D and greedy grounding precision/recall over a split of captioning samples.

    ``compute()`` keys: ``ric_cider``, ``ric_gp``, ``ric_gr``; ``images`` (distinct reference sets),
    ``matched``, ``gt_objects``, ``no_box`` (predicted objects without a usable box); plus the shared
    counts (``parsed_objects`` is the ``ric_gp`` denominator). A sample is ``unparseable`` only when
    its ground truth has objects and the answer has none: RIC objects have no quoted label, so the
    parser's ``skipped`` notes are expected and only counted in ``with_skipped``.
    ``per_sample`` maps sample id → CIDEr-D after :meth:`compute`.
    """

    name: ClassVar[str] = "ric"
    Config: ClassVar[type[PluginConfig]] = RICMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("ric",)
    headline: ClassVar[tuple[str, ...]] = ("ric_cider", "ric_gp", "ric_gr")
    reference_note: ClassVar[str] = "the reference releases no RIC evaluation script (§9.3): standard protocol only"
    skipped_is_malformed: ClassVar[bool] = False

    def reset(self) -> None:
        super().reset()
        self._candidates: list[tuple[str, tuple, list[str]]] = []  # (sample id, image key, tokens)
        self._references: dict[tuple, list[list[str]]] = {}
        self._from_captions: set[tuple] = set()  # image keys whose references came from meta["captions"]
        self.matched = 0
        self.gt_objects = 0
        self.no_box = 0
        self.per_sample: dict[str, float] = {}

    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        truth = list(getattr(sample, "objects", None) or [])
        boxes = [valid_box(getattr(obj, "box", None)) for obj in objects]
        matched = 0
        if truth and any(b is not None for b in boxes):  # the image size is only needed to match boxes
            size = image_size_of(sample)
            matched = len(greedy_matches(boxes, [gt_box_pixels(obj, size) for obj in truth], self.config.match_iou))
        self.matched += matched
        self.no_box += sum(b is None for b in boxes)
        self.gt_objects += len(truth)
        key = self._image_key(sample)
        self._add_references(key, sample)
        self._candidates.append((str(sample.id), key, tokenize(getattr(prediction, "text", "") or "")))

    @staticmethod
    def _image_key(sample: Any) -> tuple:
        meta = getattr(sample, "meta", None) or {}
        if meta.get("image_id") is not None:
            return ("image_id", str(meta["image_id"]))
        return ("image", str(getattr(sample, "image", sample.id)))

    def _add_references(self, key: tuple, sample: Any) -> None:
        captions = (getattr(sample, "meta", None) or {}).get("captions")
        if captions:
            # Every sample of an image carries the same caption list; the first one defines it.
            if key not in self._from_captions:
                self._references[key] = [tokenize(c) for c in captions]
                self._from_captions.add(key)
        elif key not in self._from_captions:
            self._references.setdefault(key, []).append(tokenize(getattr(sample, "answer", "") or ""))

    def _compute(self) -> dict[str, float | int | dict]:
        keys = list(self._references)
        index = {key: i for i, key in enumerate(keys)}
        corpus, scores = cider_d(
            [tokens for _, _, tokens in self._candidates],
            [self._references[key] for key in keys],
            [index[key] for _, key, _ in self._candidates],
        )
        self.per_sample = {sample_id: score for (sample_id, _, _), score in zip(self._candidates, scores)}
        return {
            "ric_cider": corpus,
            "ric_gp": ratio(self.matched, self._counts["parsed_objects"]),
            "ric_gr": ratio(self.matched, self.gt_objects),
            "images": len(keys),
            "matched": self.matched,
            "gt_objects": self.gt_objects,
            "no_box": self.no_box,
        }

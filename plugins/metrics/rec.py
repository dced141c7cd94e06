"""REC (referring expression comprehension): Acc@0.5 of the answer's box (reference §9.2, not its quirks).

One object answers the query (:func:`select_object`: highest score, else first); it is a hit when its
box overlaps the ground-truth box (normalised xyxy × original image size) with IoU ≥ 0.5. No object,
or no usable box, is a miss. In a sample with several images the object must also be in the
ground truth's image (``wrong_image`` counts those that are not; ``docs/multi-image.md``). Unlike the
reference, the prediction is matched to its sample by id, so a model need not repeat the query
sentence inside the quotes to be scored.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from padt_core.plugins import PluginConfig

from .base import Metric, box_iou, gt_box_pixels, image_size_of, ratio, select_object, valid_box

__all__ = ["RECMetric", "RECMetricConfig", "single_gt_object"]

IOU_THRESHOLD = 0.5  # fixed: the key is Acc@0.5 (``rec_acc50``)


class RECMetricConfig(PluginConfig):
    """Recipe/driver section for ``name: rec`` (no options: Acc@0.5 is a fixed protocol)."""

    name: Literal["rec"] = "rec"


def single_gt_object(sample: Any, metric: str) -> Any:
    """The one ground-truth object of a referring sample; ``ValueError`` if there is not exactly one."""
    objects = list(getattr(sample, "objects", None) or [])
    if len(objects) != 1:
        raise ValueError(
            f"{metric} metric: sample {sample.id!r} has {len(objects)} ground-truth objects; a referring "
            "sample has exactly one (multi-part referents are one object with a merged mask)"
        )
    return objects[0]


class RECMetric(Metric):
    """Acc@0.5 over a split of referring samples.

    ``compute()`` keys: ``rec_acc50`` = hits / samples; ``hits``; ``no_box`` (samples whose selected
    object had no usable box); plus the shared counts. ``per_sample`` maps sample id → IoU of the
    selected box (0 for a miss without box).
    """

    name: ClassVar[str] = "rec"
    Config: ClassVar[type[PluginConfig]] = RECMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("rec",)
    headline: ClassVar[tuple[str, ...]] = ("rec_acc50",)

    @classmethod
    def reference_variant(cls) -> type[Metric]:
        from .reference import RECReferenceMetric  # imported late: it builds on this module

        return RECReferenceMetric

    def reset(self) -> None:
        super().reset()
        self.hits = 0
        self.no_box = 0
        self.wrong_image = 0
        self.per_sample: dict[str, float] = {}

    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        gt = single_gt_object(sample, self.name)
        chosen = select_object(objects)
        box = valid_box(getattr(chosen, "box", None)) if chosen is not None else None
        if chosen is not None and box is None:
            self.no_box += 1
        size = image_size_of(sample)
        if getattr(sample, "images", None):  # several images: the box is in the pixels of the object's image
            image = getattr(gt, "image", 0)
            size = sample.image_sizes[image] if getattr(sample, "image_sizes", None) else size
            if box is not None and getattr(chosen, "image", 0) != image:
                self.wrong_image += 1
                box = None
        iou = box_iou(box, gt_box_pixels(gt, size)) if box is not None else 0.0
        self.per_sample[str(sample.id)] = iou
        self.hits += int(iou >= IOU_THRESHOLD)

    def _compute(self) -> dict[str, float | int | dict]:
        out = {"rec_acc50": ratio(self.hits, self._counts["samples"]), "hits": self.hits, "no_box": self.no_box}
        if self.wrong_image:
            out["wrong_image"] = self.wrong_image
        return out

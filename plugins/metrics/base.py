"""The streaming metric contract and the geometry every metric shares (boxes, masks, image sizes).

A metric is fed one ``(sample, prediction)`` pair at a time, keyed by ``sample.id`` (never by text the
model echoed), and turns its accumulated state into a flat dict in :meth:`Metric.compute`::

    metric = RECMetric()
    for sample, prediction in zip(samples, predictions):
        metric.update(sample, prediction)
    report = metric.compute()  # {"rec_acc50": 0.81, "samples": 5000, ...}

Samples and predictions are read by duck typing: a sample needs ``id``, ``task``, ``objects``
(each with ``box`` = normalised xyxy and optional ``mask`` = COCO RLE), ``image_size`` = ``(h, w)``
or ``None`` and ``meta``; a prediction needs ``text``, ``objects`` (each with ``label``, ``box`` =
xyxy pixels or ``None``, ``score`` or ``None``, ``mask`` = bool ``[H, W]`` or ``None``),
``skipped`` and ``truncated`` (``padt_core.model.Prediction``). Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from padt_core import rle
from padt_core.plugins import PluginConfig

__all__ = [
    "Metric",
    "box_iou",
    "finite_score",
    "gt_box_pixels",
    "image_size_of",
    "mask_or_none",
    "ratio",
    "select_object",
    "valid_box",
]

Box = tuple[float, float, float, float]


class Metric:
    """Base of the metric plugins: streaming ``reset`` / ``update`` / ``compute`` plus shared counts.

    Class attributes a subclass sets:
        name: registry name, which is also the task name the evaluation driver asks for.
        Config: pydantic config model (recipe section ``{name: ..., <options>}``).
        sample_tasks: sample tasks this metric scores (usually just its own name).
        headline: keys of :meth:`compute` that the evaluation report puts at its top level.
        skipped_is_malformed: whether a non-empty ``prediction.skipped`` makes a sample unparseable
            (false for RIC, whose objects carry no quoted label by design, so the parser notes every
            label-less run in ``skipped``).

    Counts every metric reports:
        samples: ``(sample, prediction)`` pairs seen.
        parsed_objects: objects in those predictions.
        unparseable: samples whose answer could not be read as intended: the ground truth has at
            least one object but the prediction has none, or (where ``skipped_is_malformed``) the
            parser skipped part of the answer. Each sample counts once.
        with_skipped: samples whose ``prediction.skipped`` is non-empty (whatever the task).
        truncated: samples whose generation ended without an end-of-sequence token.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]
    sample_tasks: ClassVar[tuple[str, ...]]
    headline: ClassVar[tuple[str, ...]]
    skipped_is_malformed: ClassVar[bool] = True
    #: Why there is no reference-protocol variant, said in the report when ``--protocol reference``
    #: or ``both`` falls back to this metric's own numbers (see :meth:`reference_variant`).
    reference_note: ClassVar[str] = "no reference-protocol variant: scored with the standard protocol only"

    def __init__(self, config: PluginConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config(**{"name": self.name, **config})
        self.config = config
        self.reset()

    @classmethod
    def reference_variant(cls) -> type[Metric] | None:
        """The metric that scores this task as the reference's evaluation scripts do (``protocol:
        reference``, keys suffixed ``_reference``), or ``None`` when there is none."""
        return None

    # --- streaming API ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything seen so far (subclasses extend this with their own state)."""
        self._seen: set[str] = set()
        self._counts = {"samples": 0, "parsed_objects": 0, "unparseable": 0, "with_skipped": 0, "truncated": 0}

    def update(self, sample: Any, prediction: Any) -> None:
        """Add one ``(sample, prediction)`` pair. Raises ``ValueError`` on a repeated sample id."""
        sample_id = str(sample.id)
        if sample_id in self._seen:
            # A repeated id would count one sample twice (and skew cumulative numbers silently).
            raise ValueError(f"{self.name} metric: sample {sample_id!r} was already added; sample ids must be unique")
        task = getattr(sample, "task", None)
        if task not in self.sample_tasks:
            raise ValueError(
                f"{self.name} metric scores samples of task {' or '.join(map(repr, self.sample_tasks))}, "
                f"sample {sample_id!r} has task {task!r}"
            )
        objects = list(getattr(prediction, "objects", None) or [])
        # Score first: if the metric rejects the sample (bad ground truth), nothing is counted.
        self._update(sample, prediction, objects)
        self._seen.add(sample_id)
        skipped = bool(getattr(prediction, "skipped", None))
        expected = bool(getattr(sample, "objects", None))
        self._counts["samples"] += 1
        self._counts["parsed_objects"] += len(objects)
        self._counts["with_skipped"] += int(skipped)
        self._counts["truncated"] += int(bool(getattr(prediction, "truncated", False)))
        self._counts["unparseable"] += int((expected and not objects) or (skipped and self.skipped_is_malformed))

    @property
    def num_samples(self) -> int:
        """Samples added since the last :meth:`reset`."""
        return self._counts["samples"]

    def compute(self) -> dict[str, float | int | dict]:
        """The metric's numbers (headline keys first) and counts; NaN where a ratio is 0/0."""
        return {**self._compute(), **self._counts}

    # --- subclass hooks -----------------------------------------------------------------------
    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        raise NotImplementedError

    def _compute(self) -> dict[str, float | int | dict]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (an undefined rate, not a zero one)."""
    return float(numerator) / float(denominator) if denominator else math.nan


def image_size_of(sample: Any) -> tuple[int, int]:
    """``(height, width)`` of the sample's original image.

    Taken from ``sample.image_size``, else from the ``size`` of a ground-truth RLE, else from the image
    file's header (PIL reads only the header). Raises ``ValueError`` when none of these is available,
    because boxes normalised to ``[0, 1]`` cannot be compared with pixel boxes without it.
    """
    size = getattr(sample, "image_size", None)
    if size is not None:
        return int(size[0]), int(size[1])
    for obj in getattr(sample, "objects", None) or []:
        mask = getattr(obj, "mask", None)
        if isinstance(mask, dict) and "size" in mask:
            return int(mask["size"][0]), int(mask["size"][1])
    image = getattr(sample, "image", None)
    if image and Path(str(image)).is_file():
        from PIL import Image

        with Image.open(image) as im:
            return im.height, im.width
    raise ValueError(
        f"sample {getattr(sample, 'id', '?')!r}: the original image size is unknown (no image_size, no mask, "
        f"image file {image!r} not found); it is needed to turn normalised boxes into pixels"
    )


def gt_box_pixels(obj: Any, size: tuple[int, int]) -> Box:
    """A ground-truth object's normalised xyxy box in pixels of an image of ``size = (h, w)``."""
    h, w = size
    x1, y1, x2, y2 = (float(v) for v in obj.box)
    return (x1 * w, y1 * h, x2 * w, y2 * h)


def valid_box(box: Any) -> Box | None:
    """``box`` as a float xyxy tuple, or ``None`` when it is missing or malformed.

    Malformed = not four numbers, a non-finite number, or ``x2 < x1`` / ``y2 < y1``. Such a box is
    treated as *no box* rather than clipped, so a broken head cannot score by accident.
    """
    if box is None:
        return None
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return None
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        return None
    return values  # type: ignore[return-value]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes in continuous pixel coordinates (no ``+1``); 0 when both are empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def finite_score(score: Any) -> float | None:
    """``score`` as a float, or ``None`` when it is missing, not a number, or not finite."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def select_object(objects: Sequence[Any]) -> Any | None:
    """The object that answers a single-referent query (REC/RES).

    Rule: the highest-scoring object among those with a finite score (the first on ties); when no
    object has a score, the first object; ``None`` when there is no object.
    """
    best, best_score = None, -math.inf
    for obj in objects:
        score = finite_score(getattr(obj, "score", None))
        if score is not None and score > best_score:
            best, best_score = obj, score
    if best is not None:
        return best
    return objects[0] if objects else None


def mask_or_none(mask: Any, size: tuple[int, int]) -> np.ndarray | None:
    """A predicted mask as bool ``[h, w]`` at ``size``, or ``None`` when missing or malformed.

    Accepts an array (anything ``np.asarray`` takes; non-zero = foreground) or a COCO RLE dict.
    A mask of another size is malformed: predictions are made at the original image size, so a
    mismatch means the prediction belongs to another image and resizing it would hide that.
    """
    if mask is None:
        return None
    try:
        array = rle.decode(mask) if isinstance(mask, dict) else np.asarray(mask)
    except (KeyError, TypeError, ValueError):
        return None
    if array.ndim != 2 or tuple(array.shape) != tuple(size):
        return None
    return array.astype(bool, copy=False)

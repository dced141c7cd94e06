"""COCO-format helpers shared by the ``coco``, ``refcoco`` and ``ric`` readers.

One place turns a COCO annotation dict into an :class:`ObjectAnn` (box normalisation, polygons and
RLEs to one compressed RLE, size and emptiness checks), so the three readers reject exactly the
same bad annotations with the same reasons.
"""

from __future__ import annotations

import contextlib
import io
import zlib
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from padt_core.data.reader import read_json
from padt_core.data.sample import MaskSizeError, ObjectAnn, box_from_xywh, rle_area, segmentation_to_rle

__all__ = ["BadRecord", "coco_object", "load_coco", "stable_int"]


class BadRecord(Exception):
    """A record that must be skipped: ``reason`` is the counter key, the message says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def load_coco(path: str | Path) -> COCO:
    """A pycocotools ``COCO`` index of ``path`` (its progress prints are swallowed)."""
    what = "COCO annotation file"
    dataset = read_json(path, what)  # malformed JSON: one error naming the file, line and column
    if not isinstance(dataset, dict):
        raise ValueError(f"{what} {path}: expected a JSON object with images/annotations/categories")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_object(ann: dict[str, Any], height: int, width: int, label: str) -> ObjectAnn:
    """A COCO annotation of an ``height × width`` image as an :class:`ObjectAnn` labelled ``label``.

    Annotations without ``segmentation`` become box-only objects (the reference uses their box as
    the mask, §6.2). Raises :class:`BadRecord` for a malformed box, an RLE of another size, or a
    mask with no foreground pixel.
    """
    ann_id = ann.get("id")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise BadRecord("bad_box", f"annotation {ann_id} has no [x, y, w, h] bbox (got {bbox!r})")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise BadRecord("empty_box", f"annotation {ann_id} has an empty bbox {bbox!r}")
    segmentation = ann.get("segmentation")
    mask = None
    if segmentation:
        try:
            mask = segmentation_to_rle(segmentation, height, width)
        except MaskSizeError as err:
            raise BadRecord("rle_size", f"annotation {ann_id}: {err}") from None
        except (TypeError, ValueError, KeyError) as err:
            raise BadRecord("bad_mask", f"annotation {ann_id} has an unreadable segmentation: {err}") from None
        if rle_area(mask) == 0:
            raise BadRecord("empty_mask", f"annotation {ann_id} ({label!r}) has an empty mask")
    area = ann.get("area")
    category = ann.get("category_id")
    return ObjectAnn(
        label=label,
        box=box_from_xywh(bbox, width, height),
        mask=mask,
        iscrowd=bool(ann.get("iscrowd", 0)),
        area=None if area is None else float(area),
        category_id=None if category is None else int(category),
        ann_id=None if ann_id is None else int(ann_id),
    )


def stable_int(value: Any) -> int:
    """A non-negative int for seeding from an id that may be a string (crc32, stable across runs)."""
    if isinstance(value, int) and value >= 0:
        return value
    return zlib.crc32(str(value).encode("utf-8"))

"""COCO run-length encoding in one place: masks to RLE and back, COCO segmentations to RLE, areas.

Every RLE padt writes is JSON-friendly: ``{"size": [h, w], "counts": str}`` (compressed counts as
text). Encoding, polygon rasterising and areas are pycocotools'; decoding is a checked numpy one
(pycocotools' decoder warns under numpy 2 and reads past runs that do not add up to the mask size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["MaskSizeError", "area", "decode", "encode", "from_segmentation", "to_cocotools"]


class MaskSizeError(ValueError):
    """A mask's size does not match its image's size."""


def _json_friendly(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def encode(mask: np.ndarray | torch.Tensor) -> dict:
    """A ``[h, w]`` mask (bool, or any numbers: non-zero = foreground) as a compressed COCO RLE.

    Example:
        >>> encode(np.array([[0, 1], [1, 1]], dtype=bool))
        {'size': [2, 2], 'counts': '101'}
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask to encode must be [h, w], got shape {mask.shape}")
    return _json_friendly(mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8)))


def _counts_from_string(text: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (the inverse of pycocotools' ``rleToString``)."""
    data = text.encode("ascii") if isinstance(text, str) else text
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:  # runs after the second are stored as deltas to the run two before
            x += counts[-2]
        counts.append(x)
    return counts


def decode(rle: dict) -> np.ndarray:
    """A COCO RLE (compressed ``str``/``bytes`` or uncompressed ``list`` counts) as bool ``[h, w]``.

    Raises ``ValueError`` when the runs do not add up to ``h * w`` (a corrupt or truncated RLE).

    Example:
        >>> decode({"size": [3, 2], "counts": [1, 4, 1]}).tolist()
        [[False, True], [True, True], [True, False]]
    """
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    runs = np.asarray(counts if isinstance(counts, list) else _counts_from_string(counts), dtype=np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise ValueError(f"corrupt RLE: runs add up to {int(runs.sum())} pixels, size {h}x{w} needs {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True  # runs alternate background, foreground, starting with background
    return np.repeat(values, runs).reshape(w, h).T  # COCO RLEs are column-major


def to_cocotools(rle: dict) -> dict:
    """An RLE pycocotools accepts: compressed counts as bytes; uncompressed (list) counts encoded."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def from_segmentation(segmentation: Any, height: int, width: int) -> dict:
    """COCO ``segmentation`` (polygons, uncompressed or compressed RLE) → one compressed RLE.

    Multi-part polygons are OR-ed into one mask (reference §6.4). Degenerate polygons (< 3 points)
    are ignored; if nothing is left the result is an empty mask. Raises :class:`MaskSizeError` when an
    RLE's ``size`` is not ``[height, width]``.
    """
    if isinstance(segmentation, dict):
        size = [int(s) for s in segmentation.get("size", ())]
        if size != [height, width]:
            raise MaskSizeError(f"RLE size {size} does not match the image size [{height}, {width}]")
        counts = segmentation.get("counts")
        if isinstance(counts, list) and sum(counts) != height * width:  # pycocotools would not notice
            raise ValueError(f"corrupt RLE: runs add up to {sum(counts)} pixels, size {height}x{width}")
        return _json_friendly(to_cocotools(segmentation))
    # pycocotools treats a first item of length 4 as a *box*; drop such degenerate polygons first.
    polygons = [[float(v) for v in poly] for poly in segmentation or [] if len(poly) >= 6 and len(poly) % 2 == 0]
    if not polygons:
        return encode(np.zeros((height, width), dtype=bool))
    return _json_friendly(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


def area(rle: dict) -> int:
    """Foreground pixel count of an RLE (without decoding it)."""
    return int(mask_utils.area(to_cocotools(rle)))

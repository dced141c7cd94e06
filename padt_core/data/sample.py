"""Samples: what a dataset reader produces and what the collator consumes (reference §6).

A :class:`Sample` is one prompt/answer pair about one image. Its ``answer`` is a *template*: every
object is a placeholder ``<|Obj_k|>`` (``k`` = index into ``objects``) that the collator replaces with
the object's VRTs, drawn on the grid the processor actually produces for the image. That is why a
sample stores masks and boxes, never patch ids: patch ids depend on the backbone's grid (reference
§2.4, weakness 19), so they are computed late by :func:`object_cells`.

Masks are COCO RLEs at the original image resolution; boxes are ``xyxy`` normalised by the image's
width and height. The RLE helpers here (``rle_decode``, ``segmentation_to_rle``, ``rle_area``,
``MaskSizeError``) are :mod:`padt_core.rle`'s, under the names readers have always imported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..rle import MaskSizeError
from ..rle import area as rle_area
from ..rle import decode as rle_decode
from ..rle import from_segmentation as segmentation_to_rle
from .tasks import check_tasks

__all__ = [
    "OBJ_PLACEHOLDER",
    "MaskSizeError",
    "ObjectAnn",
    "Sample",
    "Task",
    "box_from_xywh",
    "cell_coverage",
    "decode_mask",
    "fill_placeholders",
    "object_cells",
    "placeholder",
    "placeholder_indices",
    "rle_area",
    "rle_decode",
    "segmentation_to_rle",
]

Task = str  # a task some registered dataset plugin declares (``data/tasks.py``), e.g. ``rec``

OBJ_PLACEHOLDER = "<|Obj_{}|>"
_PLACEHOLDER_RE = re.compile(r"<\|Obj_(\d+)\|>")

# Coverage is compared with a relative tolerance so that a cell covered by exactly ``coverage`` of
# its area (e.g. one 28-px row of a 28×28 cell at 1/28) counts whatever the float rounding.
_COVERAGE_RTOL = 1e-9


# ---------------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------------


@dataclass
class ObjectAnn:
    """One annotated object of a sample.

    Attributes:
        label: category name (OVD), referring sentence (REC/RES) or ``""`` (RIC), as the reference.
        box: ``(x1, y1, x2, y2)`` normalised to ``[0, 1]`` by the original image width/height.
        mask: COCO RLE ``{"size": [h, w], "counts": str}`` at original resolution, or ``None`` for a
            box-only annotation (its cells then come from the box).
        iscrowd: COCO crowd flag (crowd regions are kept as objects, reference §6.2).
        area: annotation area in original pixels, as given by the source.
        category_id: source category id, when there is one.
        ann_id: source annotation id, when there is one (used in error messages).
        extra: further targets by key, filled by the reader (``{"keypoints": [[x, y, v], ...]}``,
            ``{"depth": 3.2}``): numbers, lists or arrays, in whatever
            convention the head that reads the key documents (positions normalised like ``box`` by
            default). The collator hands them to the decoder as ``ObjectTargets.extras[key]``; a
            head lists the keys it needs in ``target_keys``. ``box`` and ``mask`` are not extras.
        image: which of the sample's images the object is in (``0`` for a single-image sample); its
            box and mask are that image's.
    """

    label: str
    box: tuple[float, float, float, float]
    mask: dict | None = None
    iscrowd: bool = False
    area: float | None = None
    category_id: int | None = None
    ann_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.image, bool) or not isinstance(self.image, int) or self.image < 0:
            raise ValueError(
                f"{self.describe()}: image must be the index of one of the sample's images, got {self.image!r}"
            )
        if len(self.box) != 4:
            raise ValueError(f"{self.describe()}: box must have 4 numbers (x1, y1, x2, y2), got {self.box!r}")
        x1, y1, x2, y2 = (float(v) for v in self.box)
        if not (0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0):
            raise ValueError(f"{self.describe()}: box {self.box!r} is not normalised xyxy within [0, 1]")
        self.box = (x1, y1, x2, y2)
        if self.mask is not None:
            if not isinstance(self.mask, dict) or "size" not in self.mask or "counts" not in self.mask:
                raise ValueError(f"{self.describe()}: mask must be a COCO RLE dict with `size` and `counts`")
            counts = self.mask["counts"]
            if isinstance(counts, bytes):  # pycocotools returns bytes; keep json-friendly str
                self.mask = {"size": [int(s) for s in self.mask["size"]], "counts": counts.decode("ascii")}
        if not isinstance(self.extra, dict) or not all(isinstance(k, str) for k in self.extra):
            raise ValueError(f"{self.describe()}: extra must be a dict with string keys, got {self.extra!r}")
        reserved = sorted(set(self.extra) & {"box", "mask"})
        if reserved:
            raise ValueError(f"{self.describe()}: extra key(s) {reserved} are annotation fields; set them directly")

    def describe(self) -> str:
        """Short description for error messages: ``object 'red star' (ann 12)``."""
        ann = f" (ann {self.ann_id})" if self.ann_id is not None else ""
        return f"object {self.label!r}{ann}"


@dataclass
class Sample:
    """One training/evaluation example: an image (or several), a prompt and an answer template.

    Attributes:
        id: unique id within its dataset (``"<dataset>/<record>"``).
        image: path of the image file (the first one of a multi-image sample).
        task: a task a registered dataset plugin declares (PaDT's: ``rec``, ``res``, ``ovd``, ``ric``).
        prompt: user text (the image is added by the chat template).
        answer: target text with ``<|Obj_k|>`` placeholders; every object is referenced, and no
            placeholder points past ``objects``.
        objects: the objects the placeholders refer to.
        image_size: ``(height, width)`` of the original image, when the reader knows it.
        meta: free-form provenance (source file, reference patch ids, ...).
        images: every image of a sample with several, in prompt order (``images[0] == image``; the
            prompt's ``<|img|>`` slots place them, else they come first; ``docs/multi-image.md``).
            Empty for a single-image sample. Objects say which image they are in (``ObjectAnn.image``).
        image_sizes: ``(height, width)`` of each of ``images``, when the reader knows them.
    """

    id: str
    image: str
    task: Task
    prompt: str
    answer: str
    objects: list[ObjectAnn]
    image_size: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] | None = None

    @property
    def image_paths(self) -> list[str]:
        """Every image of the sample, in order (one for a single-image sample)."""
        return list(self.images) if self.images else [self.image]

    def __post_init__(self) -> None:
        check_tasks([self.task], f"sample {self.id}")
        if self.images:
            self.images = [str(p) for p in self.images]
            if self.image != self.images[0]:
                raise ValueError(f"sample {self.id}: image {self.image!r} is not the first of images {self.images}")
        beyond = [k for k, o in enumerate(self.objects) if o.image >= len(self.image_paths)]
        if beyond:
            k = beyond[0]
            raise ValueError(
                f"sample {self.id}: object {k} is in image {self.objects[k].image} but the sample has "
                f"{len(self.image_paths)} image(s)"
            )
        if self.image_sizes is not None:
            self.image_sizes = [(int(h), int(w)) for h, w in self.image_sizes]
            if len(self.image_sizes) != len(self.image_paths):
                raise ValueError(
                    f"sample {self.id}: {len(self.image_sizes)} image sizes for {len(self.image_paths)} images"
                )
        used = set(placeholder_indices(self.answer))
        n = len(self.objects)
        missing = sorted(set(range(n)) - used)
        extra = sorted(i for i in used if i >= n)
        if missing or extra:
            raise ValueError(
                f"sample {self.id}: answer template and objects disagree ({n} objects; "
                f"unreferenced objects {missing}, placeholders without object {extra}): {self.answer!r}"
            )
        if self.image_size is not None:
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def render(self, fills: Sequence[str]) -> str:
        """The answer with ``<|Obj_k|>`` replaced by ``fills[k]`` (e.g. VRT strings)."""
        return fill_placeholders(self.answer, fills)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``Sample.from_dict`` restores it)."""
        out = asdict(self)
        out["image_size"] = None if self.image_size is None else list(self.image_size)
        for obj in out["objects"]:
            obj["box"] = list(obj["box"])
            if not obj["image"]:
                del obj["image"]  # single-image records stay as they were written before multi-image samples
        if not self.images:
            del out["images"], out["image_sizes"]
        else:
            out["image_sizes"] = None if self.image_sizes is None else [list(s) for s in self.image_sizes]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        data = dict(data)
        data["objects"] = [ObjectAnn(**{**o, "box": tuple(o["box"])}) for o in data["objects"]]
        if data.get("image_size") is not None:
            data["image_size"] = tuple(data["image_size"])
        if data.get("image_sizes") is not None:
            data["image_sizes"] = [tuple(s) for s in data["image_sizes"]]
        return cls(**data)


# ---------------------------------------------------------------------------------------------------
# Answer placeholders
# ---------------------------------------------------------------------------------------------------


def placeholder(index: int) -> str:
    """``<|Obj_{index}|>``."""
    return OBJ_PLACEHOLDER.format(index)


def placeholder_indices(template: str) -> list[int]:
    """Object indices of the placeholders of ``template``, in order of appearance."""
    return [int(m.group(1)) for m in _PLACEHOLDER_RE.finditer(template)]


def fill_placeholders(template: str, fills: Sequence[str]) -> str:
    """Replace every ``<|Obj_k|>`` of ``template`` with ``fills[k]``."""

    def sub(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(fills):
            raise ValueError(f"template refers to <|Obj_{index}|> but only {len(fills)} fills were given")
        return fills[index]

    return _PLACEHOLDER_RE.sub(sub, template)


# ---------------------------------------------------------------------------------------------------
# Masks and boxes
# ---------------------------------------------------------------------------------------------------


def box_from_xywh(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` in pixels → ``xyxy`` normalised by the image size, clipped to ``[0, 1]``."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
    x2, y2 = min(max((x + w) / width, x1), 1.0), min(max((y + h) / height, y1), 1.0)
    return (x1, y1, x2, y2)


def decode_mask(obj: ObjectAnn, image_size: tuple[int, int], record: str | None = None) -> np.ndarray:
    """The object's mask as a boolean ``[h, w]`` array at the original image resolution.

    Args:
        obj: an object with an RLE ``mask``.
        image_size: ``(height, width)`` of the image the object belongs to.
        record: optional record name (sample id, file) for the error message.

    Raises:
        ValueError: the object has no mask.
        MaskSizeError: the RLE's size is not ``image_size`` (the annotation belongs to another image
            or the image file was resized after annotation).
    """
    where = f" of {record}" if record else ""
    if obj.mask is None:
        raise ValueError(f"{obj.describe()}{where} has no mask")
    size = tuple(int(s) for s in obj.mask["size"])
    if size != tuple(image_size):
        raise MaskSizeError(
            f"{obj.describe()}{where}: RLE size {size[0]}x{size[1]} (h x w) does not match the image size "
            f"{image_size[0]}x{image_size[1]}"
        )
    return rle_decode(obj.mask)


def _integrate(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Integrals of ``values`` (``[n, k]``, one row per pixel) between consecutive ``edges`` along axis 0.

    ``edges`` (``[cells + 1]``, pixel units within ``[0, n]``) may be fractional: pixel ``i`` spans
    ``[i, i + 1)`` and contributes in proportion to its overlap. Prefix sums make this exact for
    integer edges and O(n·k) instead of the dense ``[cells, n]`` weight matmul.
    """
    n = values.shape[0]
    prefix = np.zeros((n + 1, *values.shape[1:]), dtype=np.float64)
    np.cumsum(values, axis=0, out=prefix[1:])
    pixel = np.clip(np.floor(edges).astype(np.int64), 0, n - 1)
    below = prefix[pixel] + (edges - pixel)[:, None] * values[pixel]  # integral over [0, edge)
    return np.diff(below, axis=0)


def _check_grid(grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    gh, gw = (int(g) for g in grid)
    h, w = (int(s) for s in image_size)
    if gh <= 0 or gw <= 0 or h <= 0 or w <= 0:
        raise ValueError(f"grid {grid} and image size {image_size} must be positive")
    return gh, gw, h, w


def cell_coverage(obj: ObjectAnn, grid: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Fraction of each VRT cell covered by the object, ``[gh, gw]`` float64 in raster layout.

    With a mask this is the exact area average of the mask over each cell's footprint in the
    original image (area resampling: cell ``(r, c)`` spans rows ``[r·h/gh, (r+1)·h/gh)`` and columns
    ``[c·w/gw, (c+1)·w/gw)``, integrated separably with prefix sums); without one it is the analytic
    overlap of the box with each cell. The reference resizes the mask bilinearly to 28-px multiples
    and averages 28×28 blocks (§6.2), which approximates the same quantity.
    """
    gh, gw, h, w = _check_grid(grid, image_size)
    if obj.mask is not None:
        mask = decode_mask(obj, (h, w))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if len(rows) == 0:
            return np.zeros((gh, gw), dtype=np.float64)
        # Integrate over the mask's bounding box only; cells outside it get 0 from clipped edges.
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = mask[y0:y1, x0:x1].astype(np.float64)
        row_edges = np.clip(np.arange(gh + 1) * (h / gh) - y0, 0, y1 - y0)
        col_edges = np.clip(np.arange(gw + 1) * (w / gw) - x0, 0, x1 - x0)
        area = _integrate(_integrate(crop, row_edges).T, col_edges).T
        return area / ((h / gh) * (w / gw))
    x1, y1, x2, y2 = obj.box

    def axis(lo: float, hi: float, cells: int) -> np.ndarray:
        edges = np.arange(cells + 1, dtype=np.float64) / cells
        return np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0.0, None) * cells

    return axis(y1, y2, gh)[:, None] * axis(x1, x2, gw)[None, :]


def object_cells(
    obj: ObjectAnn, grid: tuple[int, int], image_size: tuple[int, int], coverage: float, relative: float = 0.0
) -> list[int]:
    """Raster ids of the VRT cells the object covers by at least ``coverage`` of their area.

    Args:
        obj: the object (its mask if it has one, else its box).
        grid: ``(gh, gw)``, the VRT grid the processor produces for this image; it covers the whole
            image after resizing, so the grid need not match ``round(h/cell) × round(w/cell)``.
        image_size: ``(height, width)`` of the original image (the mask's resolution).
        coverage: minimum covered fraction, in (0, 1]: the recipe's ``data.coverage``, else the
            backbone's ``default_coverage`` (the reference's one pixel row of a cell, 1/28 for
            Qwen2.5-VL's 28-px cells, §6.2).
        relative: a cell must also cover at least this fraction of the object's best-covered cell's
            coverage (0: off). For objects of one or two cells, ``coverage`` alone keeps every cell
            they barely touch (most of such a cell is a neighbour or background); ``relative=0.5``
            keeps the cells the object really covers, and always its best one.

    Returns:
        Sorted cell ids ``row * gw + col``; empty when the object covers no cell enough.

    Example:
        >>> obj = ObjectAnn(label="box", box=(0.0, 0.0, 0.6, 0.5))  # 1.2 of 2 cells wide, 1 of 2 high
        >>> object_cells(obj, (2, 2), (64, 64), 1 / 32), object_cells(obj, (2, 2), (64, 64), 1 / 32, relative=0.5)
        ([0, 1], [0])
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if not 0.0 <= relative <= 1.0:
        raise ValueError(f"relative coverage must be in [0, 1], got {relative}")
    cov = cell_coverage(obj, grid, image_size).ravel()
    threshold = max(coverage, relative * float(cov.max(initial=0.0)))
    return np.flatnonzero(cov >= threshold * (1.0 - _COVERAGE_RTOL)).tolist()

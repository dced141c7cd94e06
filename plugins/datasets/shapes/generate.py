"""Synthetic shapes: a small COCO / RefCOCO / RIC-style dataset written to disk, deterministic by seed.

Each image holds 1–6 non-overlapping coloured shapes (8 kinds, 6 colours, small or large) on a
textured background (low-frequency noise or a gradient, plus pixel noise). The generator writes the
same on-disk formats as the real datasets, so the ``shapes`` plugin reads it back through the real
readers (``coco`` for OVD, ``refcoco`` for REC/RES, ``ric`` for captions)::

    ROOT/
      shapes_manifest.json           parameters + counts; its presence marks a complete dataset
      images/{split}_{i:06d}.png
      annotations/instances_{split}.json   COCO: circles/ellipses as RLE, other shapes as polygons;
                                           each annotation also carries `colour` and `size`
      annotations/captions_{split}.json    the same plus `captions` with <box_id: N/> markers (RIC)
      refshapes/instances.json       REFER layout: all images of both splits ...
      refshapes/refs(unc).p          ... and one ref per object with its referring expressions

Referring expressions (minimal and unambiguous among the objects of the image) and captions are
written by :mod:`padt_plugins.datasets.shapes.text`. ``difficulty="full"`` mixes in same colour + shape
distractors, so expressions need size and spatial words, and adds the most specific description
as a second sentence; ``difficulty="easy"`` (the quick demo, see NOTES-tiny-training) never repeats
a colour + shape pair in an image and always says ``the <colour> <shape>``.

Determinism: image ``i`` of a split draws everything from ``numpy.random.default_rng([seed,
split, i])``, so the same seed gives byte-identical json and pickles and pixel-identical PNGs, and
image ``i`` does not depend on how many images precede it or on how many workers write them.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from padt_core import rle

from .text import COLOURS, SHAPES, SIZES, SPATIAL_GAP, caption, refer_expressions, resolve_expression

__all__ = [
    "COLOURS",
    "FORMAT_VERSION",
    "MANIFEST",
    "SHAPES",
    "SIZES",
    "SPATIAL_GAP",
    "ShapesMismatchError",
    "ShapesParams",
    "ensure_shapes",
    "refer_expressions",
    "resolve_expression",
    "write_shapes",
]

FORMAT_VERSION = 1
MANIFEST = "shapes_manifest.json"
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
# Ids of the val split start here so images and annotations are unique across splits (REFER keeps
# both splits in one instances.json); annotation id = image id * 10 + object index (≤ 6 objects).
_VAL_ID_OFFSET = 1_000_000
_MAX_OBJECTS = 6

#: Circles and ellipses are stored as RLE, the other shapes as polygons (both COCO encodings).
_RLE_SHAPES = frozenset({"circle", "ellipse"})
_PLACEMENT_GAP = 4  # px between object boxes
_PLACEMENT_TRIES = 200
_DISTRACTOR_RATE = 0.15  # full: chance that an object repeats an earlier object's colour + shape

# Unit polygons (extent 1, centred on 0, y down).
_A = 1 / 6
_UNIT_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "triangle": [(0.0, -0.433), (0.5, 0.433), (-0.5, 0.433)],
    "star": [
        (r * math.cos(math.radians(-90 + 36 * k)), r * math.sin(math.radians(-90 + 36 * k)))
        for k, r in zip(range(10), [0.5, 0.2] * 5)
    ],
    "hexagon": [(0.5 * math.cos(math.radians(60 * k)), 0.5 * math.sin(math.radians(60 * k))) for k in range(6)],
    "cross": [
        (-_A, -0.5),
        (_A, -0.5),
        (_A, -_A),
        (0.5, -_A),
        (0.5, _A),
        (_A, _A),
        (_A, 0.5),
        (-_A, 0.5),
        (-_A, _A),
        (-0.5, _A),
        (-0.5, -_A),
        (-_A, -_A),
    ],
    "diamond": [(0.0, -0.5), (0.33, 0.0), (0.0, 0.5), (-0.33, 0.0)],
}


class ShapesMismatchError(FileExistsError):
    """A shapes root already holds data generated with other parameters."""


@dataclass(frozen=True)
class ShapesParams:
    """Everything that determines a shapes dataset (stored in the manifest)."""

    seed: int
    n_train: int
    n_val: int
    image_size: tuple[int, int] = (224, 224)  # (height, width)
    difficulty: Literal["easy", "full"] = "full"
    min_objects: int = 1
    max_objects: int = _MAX_OBJECTS
    object_scale: float = 1.0  # multiplies SIZES (after the image-size scaling)

    def __post_init__(self) -> None:
        size = self.image_size
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        object.__setattr__(self, "image_size", size)
        if self.difficulty not in ("easy", "full"):
            raise ValueError(f"difficulty must be 'easy' or 'full', got {self.difficulty!r}")
        if not 1 <= self.min_objects <= self.max_objects <= _MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {_MAX_OBJECTS}, got {self.min_objects}, {self.max_objects}"
            )
        if min(size) < 112:
            raise ValueError(f"image_size {size} is too small: shapes need at least 112 px per side")
        if self.n_train < 0 or self.n_val < 0:
            raise ValueError(f"image counts must be >= 0, got n_train={self.n_train}, n_val={self.n_val}")
        if not 0.5 <= self.object_scale <= 2.0:
            raise ValueError(f"object_scale must be in [0.5, 2.0], got {self.object_scale}")
        if round(SIZES["large"][1] * self.object_scale * min(size) / 224) > min(size) * 0.75:
            raise ValueError(f"object_scale {self.object_scale}: large shapes would not fit a {size} image")

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "image_size": list(self.image_size),
            "difficulty": self.difficulty,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            # Only when set: manifests written before the option existed still match the default.
            **({"object_scale": self.object_scale} if self.object_scale != 1.0 else {}),
        }


@dataclass
class _Shape:
    """One placed object of a scene."""

    shape: str
    colour: str
    size: str
    mask: np.ndarray  # bool [h, w]
    segmentation: Any  # COCO polygons or RLE
    bbox: list[int]  # tight [x, y, w, h] of the mask
    outline: list[float]  # analytic [x0, y0, x1, y1] used for placement

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return (x + w / 2, y + h / 2)


# ---------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """A muted textured background ``[h, w, 3]`` float and its kind (``noisy`` or ``gradient``)."""
    base = rng.uniform(70, 170)
    tint = rng.uniform(-18, 18, size=3)
    if rng.random() < 0.5:
        cells = int(rng.integers(3, 8))
        coarse = (base + tint + rng.uniform(-35, 35, size=(cells, cells, 3))).clip(0, 255).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        image, kind = np.asarray(smooth, dtype=np.float64), "noisy"
    else:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        t = ((xs - width / 2) * math.cos(angle) + (ys - height / 2) * math.sin(angle)) / max(height, width) + 0.5
        other = base + tint + rng.uniform(-50, 50, size=3)
        image, kind = (base + tint) * (1 - t[..., None]) + other * t[..., None], "gradient"
    image = image + rng.normal(0, 4, size=image.shape)  # fine texture; stronger noise only bloats the PNGs
    return image, kind


def _outline(shape: str, cx: float, cy: float, extent: float, angle: float) -> tuple[list[float] | None, list[float]]:
    """``(polygon, box)``: the flat polygon (``None`` for circles/ellipses) and the float ``[x0, y0, x1, y1]``."""
    if shape in _RLE_SHAPES:
        a = extent / 2
        b = a if shape == "circle" else 0.55 * a
        cos, sin = math.cos(angle), math.sin(angle)
        hw, hh = math.hypot(a * cos, b * sin), math.hypot(a * sin, b * cos)
        return None, [cx - hw, cy - hh, cx + hw, cy + hh]
    cos, sin = math.cos(angle), math.sin(angle)
    flat: list[float] = []
    for u, v in _UNIT_POLYGONS[shape]:
        # Rounded so the json is short and identical across platforms' last-ulp trigonometry.
        flat += [round(cx + extent * (u * cos - v * sin), 2), round(cy + extent * (u * sin + v * cos), 2)]
    xs, ys = flat[0::2], flat[1::2]
    return flat, [min(xs), min(ys), max(xs), max(ys)]


def _rasterize(
    shape: str, polygon: list[float] | None, cx: float, cy: float, extent: float, angle: float, height: int, width: int
) -> tuple[np.ndarray, Any]:
    """``(mask, segmentation)``: COCO polygons for most shapes, an RLE for circles and ellipses."""
    if polygon is not None:
        return rle.decode(rle.from_segmentation([polygon], height, width)), [polygon]
    ys, xs = np.mgrid[0:height, 0:width]
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy  # pixel centres, as pycocotools rasterizes polygons
    a = extent / 2
    b = a if shape == "circle" else 0.55 * a
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return mask, rle.encode(mask)


def _tight_box(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _apart(a: Sequence[float], b: Sequence[float], gap: float) -> bool:
    """Whether two ``[x0, y0, x1, y1]`` boxes are at least ``gap`` apart along some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _attributes(rng: np.random.Generator, n: int, difficulty: str) -> list[tuple[str, str, str]]:
    """``(shape, colour, size)`` per object; ``easy`` never repeats a colour + shape pair."""
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    out: list[tuple[str, str, str]] = []
    used: set[tuple[str, str]] = set()
    for i in range(n):
        if difficulty == "full" and i > 0 and rng.random() < _DISTRACTOR_RATE:
            shape, colour = out[int(rng.integers(i))][:2]
        else:
            free = [p for p in pairs if difficulty == "full" or p not in used]
            shape, colour = free[int(rng.integers(len(free)))]
        used.add((shape, colour))
        out.append((shape, colour, "large" if rng.random() < 0.5 else "small"))
    return out


def _scene(rng: np.random.Generator, params: ShapesParams) -> tuple[np.ndarray, list[_Shape], str]:
    """One image ``[h, w, 3]`` uint8, its objects and its background kind."""
    height, width = params.image_size
    scale = min(height, width) / 224 * params.object_scale  # SIZES are px at 224
    image, kind = _background(rng, height, width)
    n = int(rng.integers(params.min_objects, params.max_objects + 1))
    # Large shapes first: they are the hard ones to fit.
    attrs = sorted(_attributes(rng, n, params.difficulty), key=lambda a: a[2] != "large")
    placed: list[_Shape] = []
    for shape, colour, size in attrs:
        lo, hi = SIZES[size]
        extent = float(rng.integers(round(lo * scale), round(hi * scale) + 1))
        angle = rng.uniform(0, math.pi) if shape == "ellipse" else math.radians(rng.uniform(-12, 12))
        margin = extent * 0.6 + 2  # keeps the rotated shape inside the image
        boxes = [o.outline for o in placed]
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            polygon, outline = _outline(shape, cx, cy, extent, angle)
            # Cheap test on the analytic outline box; rasterize only the accepted position.
            if all(_apart(outline, other, _PLACEMENT_GAP + 1) for other in boxes):
                mask, segmentation = _rasterize(shape, polygon, cx, cy, extent, angle, height, width)
                if mask.any():
                    placed.append(_Shape(shape, colour, size, mask, segmentation, _tight_box(mask), outline))
                break
        # An object that does not fit after many tries is left out: the scene just has fewer objects.
    # Raster order of object centres (top-to-bottom, then left-to-right) keeps annotation order natural.
    placed.sort(key=lambda o: (o.centre[1], o.centre[0]))
    for obj in placed:
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float64)
        image[obj.mask] = colour + rng.normal(0, 4, size=(int(obj.mask.sum()), 3))
    return image.clip(0, 255).round().astype(np.uint8), placed, kind


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def _image_id(split: str, index: int) -> int:
    return index + 1 + (_VAL_ID_OFFSET if split == "val" else 0)


def _make_image(args: tuple[ShapesParams, str, int, str]) -> dict[str, Any]:
    """Generate, save and annotate image ``index`` of ``split`` (worker function; pure in its inputs)."""
    params, split, index, out_dir = args
    rng = np.random.default_rng([params.seed, _SPLIT_CODE[split], index])
    pixels, shapes, background = _scene(rng, params)
    image_id = _image_id(split, index)
    file_name = f"{split}_{index:06d}.png"
    Image.fromarray(pixels).save(Path(out_dir) / "images" / file_name, format="PNG", compress_level=1)
    height, width = params.image_size
    category = {s: k + 1 for k, s in enumerate(SHAPES)}
    anns, described = [], []
    for j, s in enumerate(shapes):
        ann_id = image_id * 10 + j
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category[s.shape],
                "bbox": s.bbox,
                "area": int(s.mask.sum()),
                "iscrowd": 0,
                "segmentation": s.segmentation,
                "colour": s.colour,
                "size": s.size,
            }
        )
        described.append({"shape": s.shape, "colour": s.colour, "size": s.size, "centre": s.centre})
    ann_ids = [a["id"] for a in anns]
    refs = []
    for j, ann in enumerate(anns):
        sentences = refer_expressions(described, j, params.difficulty, gap=SPATIAL_GAP * min(height, width) / 224)
        if not sentences:
            continue  # no unambiguous expression (identical twins side by side): no ref for this object
        refs.append(
            {
                "ref_id": ann["id"],
                "ann_id": ann["id"],
                "image_id": image_id,
                "category_id": ann["category_id"],
                "split": split,
                "file_name": file_name,
                "sent_ids": [ann["id"] * 10 + k for k in range(len(sentences))],
                "sentences": [
                    {"sent_id": ann["id"] * 10 + k, "sent": text, "raw": text, "tokens": text.split()}
                    for k, text in enumerate(sentences)
                ],
            }
        )
    image = {"id": image_id, "file_name": file_name, "height": height, "width": width, "background": background}
    captions = [caption(described, ann_ids, background, params.difficulty)] if shapes else []
    return {"image": image, "annotations": anns, "refs": refs, "captions": captions}


def _dump_json(path: Path, data: Any) -> None:
    # Fixed separators and no timestamps: the same seed must give byte-identical files.
    path.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=True) + "\n", encoding="ascii")


def write_shapes(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    seed: int,
    image_size: int | tuple[int, int] = 224,
    difficulty: Literal["easy", "full"] = "full",
    *,
    min_objects: int = 1,
    max_objects: int = _MAX_OBJECTS,
    object_scale: float = 1.0,
    workers: int = 1,
) -> dict[str, Any]:
    """Write a shapes dataset to ``out_dir`` (created; existing files of the same names are replaced).

    Args:
        out_dir: dataset root (see the module docstring for the layout).
        n_train: images of the ``train`` split.
        n_val: images of the ``val`` split.
        seed: everything is a function of it; the same seed gives identical files.
        image_size: side in px, or ``(height, width)``; object sizes scale with the shorter side.
        difficulty: ``full`` (distractors, size and spatial expressions) or ``easy`` (colour + shape).
        min_objects: fewest objects per image (1–6).
        max_objects: most objects per image (1–6); fewer when they do not fit.
        object_scale: multiplies every object size (0.5–2); 1.5 makes the smallest shapes cover a 32-px cell.
        workers: processes that render images (the output does not depend on it); 0 = all CPU cores.

    Returns:
        The manifest written to ``out_dir/shapes_manifest.json``: parameters, per-split counts, files.
    """
    params = ShapesParams(seed, n_train, n_val, image_size, difficulty, min_objects, max_objects, object_scale)
    root = Path(out_dir)
    for sub in ("images", "annotations", "refshapes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    info = {"description": "padt synthetic shapes", "version": FORMAT_VERSION, **params.to_json()}
    workers = workers or os.cpu_count() or 1
    jobs = [(params, split, i, str(root)) for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    if workers > 1 and len(jobs) > 1:
        # "spawn": the caller may be a training process with live OpenMP/torch threads, which a
        # forked child could inherit in a locked state.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_make_image, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    else:
        results = [_make_image(job) for job in jobs]
    all_images, all_anns, all_refs, counts = [], [], [], {}
    files = [MANIFEST, "refshapes/instances.json", "refshapes/refs(unc).p"]
    for split in SPLITS:
        part = [r for (_, s, _, _), r in zip(jobs, results) if s == split]
        images = [r["image"] for r in part]
        anns = [a for r in part for a in r["annotations"]]
        refs = [ref for r in part for ref in r["refs"]]
        instances = {"info": info, "images": images, "annotations": anns, "categories": categories}
        _dump_json(root / "annotations" / f"instances_{split}.json", instances)
        captioned = [{**r["image"], "captions": r["captions"]} for r in part]
        _dump_json(root / "annotations" / f"captions_{split}.json", {**instances, "images": captioned})
        files += [f"annotations/instances_{split}.json", f"annotations/captions_{split}.json"]
        all_images += images
        all_anns += anns
        all_refs += refs
        counts[split] = {
            "images": len(images),
            "objects": len(anns),
            "refs": len(refs),
            "sentences": sum(len(r["sentences"]) for r in refs),
            "captions": sum(len(r["captions"]) for r in part),
            "objects_without_ref": len(anns) - len(refs),
        }
    refer = {"info": info, "images": all_images, "annotations": all_anns, "categories": categories}
    _dump_json(root / "refshapes" / "instances.json", refer)
    # Pickle memoises by object identity, which differs when results come back from worker
    # processes; a json round trip gives every run the same object graph, hence the same bytes.
    with (root / "refshapes" / "refs(unc).p").open("wb") as f:
        pickle.dump(json.loads(json.dumps(all_refs)), f, protocol=4)
    manifest = {"format": "padt-shapes", "version": FORMAT_VERSION, "params": params.to_json(), "counts": counts,
                "files": sorted(files)}  # fmt: skip
    # Written last: a manifest means the dataset is complete.
    _dump_json(root / MANIFEST, manifest)
    return manifest


def ensure_shapes(
    root: str | os.PathLike, params: ShapesParams, *, regenerate: bool = False, workers: int = 1
) -> dict[str, Any]:
    """Make sure ``root`` holds the shapes dataset of ``params``, generating it on first use.

    The data is written to a temporary sibling folder and renamed into place, so concurrent callers
    (several ranks) never see a half-written dataset; the loser of the race reuses the winner's.

    Raises:
        ShapesMismatchError: ``root`` holds shapes data made with other parameters (and not
            ``regenerate``), or is a non-empty folder that is not a shapes dataset.
    """
    root = Path(root)
    existing = _read_manifest(root)
    if existing is not None and _matches(existing, params):
        return existing
    if existing is not None and not regenerate:
        raise ShapesMismatchError(
            f"{root} holds shapes data generated with {existing.get('params')} (format {existing.get('version')}); "
            f"this config asks for {params.to_json()} (format {FORMAT_VERSION}). "
            "Point `root` at another folder, delete this one, or set `regenerate: true`."
        )
    if existing is None and root.exists() and any(root.iterdir()):
        raise ShapesMismatchError(
            f"{root} is not empty and has no {MANIFEST}: it is not a shapes dataset (or a generation was "
            "interrupted); refusing to write into it. Use an empty or new folder."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = write_shapes(tmp, **_writer_kwargs(params), workers=workers)
    if existing is not None:  # regenerate: the old folder is ours (it has a manifest)
        shutil.rmtree(root)
    try:
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        winner = _read_manifest(root)
        if winner is None or not _matches(winner, params):
            raise
        return winner
    return manifest


def _writer_kwargs(params: ShapesParams) -> dict[str, Any]:
    return {
        "n_train": params.n_train,
        "n_val": params.n_val,
        "seed": params.seed,
        "image_size": params.image_size,
        "difficulty": params.difficulty,
        "min_objects": params.min_objects,
        "max_objects": params.max_objects,
        "object_scale": params.object_scale,
    }


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="ascii"))


def _matches(manifest: dict[str, Any], params: ShapesParams) -> bool:
    return manifest.get("version") == FORMAT_VERSION and manifest.get("params") == params.to_json()

"""``padt data shapes``: write the synthetic shapes dataset from the command line (see :mod:`.generate`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from padt_core.cli import Command, print_json


def cmd_data_shapes(args: argparse.Namespace) -> int:
    """Write the synthetic shapes dataset (or reuse an identical one); print a JSON summary."""
    import time

    from .generate import MANIFEST, ShapesMismatchError, ShapesParams, ensure_shapes

    params = ShapesParams(
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        image_size=args.image_size,
        difficulty=args.difficulty,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        object_scale=args.object_scale,
    )
    root = Path(args.out_dir)
    previous = _read_json(root / MANIFEST)
    start = time.perf_counter()
    try:
        manifest = ensure_shapes(root, params, regenerate=args.overwrite, workers=args.workers)
    except ShapesMismatchError as err:
        raise _shapes_conflict(root, previous, params.to_json()) if previous else err from None
    reused = previous is not None and previous == manifest
    summary = {
        "root": str(root),
        "generated": not reused,
        "seconds": round(time.perf_counter() - start, 2),
        "params": manifest["params"],
        "counts": manifest["counts"],
        "files": manifest["files"],
        "images": str(root / "images"),
    }
    print_json(summary)
    return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def _shapes_conflict(root: Path, previous: dict[str, Any], asked: dict[str, Any]) -> FileExistsError:
    """The error for a folder holding shapes data made with other parameters, naming what differs."""
    old = previous.get("params") or {}
    differ = [f"{key}={old.get(key)!r} (asked {value!r})" for key, value in asked.items() if old.get(key) != value]
    what = ", ".join(differ) or f"format version {previous.get('version')!r}"
    return FileExistsError(
        f"{root} already holds shapes data generated with other parameters: {what}; "
        "pass --overwrite to regenerate it, or choose another OUT_DIR"
    )


def _configure_shapes(shapes: argparse.ArgumentParser) -> None:
    shapes.add_argument("out_dir", metavar="OUT_DIR", help="dataset root (a recipe's `root:`)")
    shapes.add_argument("--n-train", type=int, required=True, metavar="N", help="images of the train split")
    shapes.add_argument("--n-val", type=int, required=True, metavar="M", help="images of the val split")
    shapes.add_argument("--seed", type=int, required=True, metavar="S", help="the same seed gives identical files")
    shapes.add_argument("--image-size", type=int, default=224, metavar="PX", help="image side (default: 224)")
    shapes.add_argument(
        "--difficulty",
        choices=["easy", "full"],
        default="full",
        help="full: distractors, size and spatial expressions (default); easy: colour + shape only",
    )
    shapes.add_argument("--min-objects", type=int, default=1, metavar="K", help="fewest objects per image (1-6)")
    shapes.add_argument("--max-objects", type=int, default=6, metavar="K", help="most objects per image (1-6)")
    shapes.add_argument(
        "--object-scale", type=float, default=1.0, metavar="X", help="multiplies every object size (0.5-2; default: 1)"
    )
    shapes.add_argument(
        "--workers", type=int, default=1, metavar="K", help="processes that render images (0 = all cores; default: 1)"
    )
    shapes.add_argument(
        "--overwrite", action="store_true", help="regenerate a dataset made with other parameters in OUT_DIR"
    )
    shapes.set_defaults(handler=cmd_data_shapes)


#: ``padt data shapes``, registered under the ``padt.commands`` entry-point group (``data.shapes``).
COMMAND = Command("write the synthetic shapes dataset (COCO, RefCOCO and RIC formats)", _configure_shapes)

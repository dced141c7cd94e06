"""``padt eval``: predict over evaluation samples, score them, write a report JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_file, atomic_write_text
from ._common import _build_or_load, _refuse_existing, _strict_json, check_device, positive_int


def cmd_eval(args: argparse.Namespace) -> int:
    """Predict over evaluation samples, score them, write the report JSON and print the metrics."""

    from ..eval.table import format_report
    from ..plugins import get_plugin

    for task in args.task or ():
        get_plugin("metrics", task)  # an unknown --task fails now, listing the registered metrics
    device = check_device(args.device)
    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if args.predictions is not None:
        _refuse_existing(Path(args.predictions), args.overwrite)
    if args.data is not None and not Path(args.data).is_file():
        raise FileNotFoundError(f"evaluation data not found: {args.data}")
    model = _build_or_load(args.model, ())
    model.to(device=device).eval()
    report, predictions, samples = _evaluate(model, args)
    atomic_write_text(out, json.dumps(_strict_json(report), indent=2) + "\n")  # whole or not at all
    if args.predictions is not None:
        _write_predictions(Path(args.predictions), predictions, samples)
    print(format_report(report))
    for task, counts in report["counts"].items():
        print(f"{task}: {json.dumps(counts, default=str)}")
    print(f"report: {out}")
    if args.predictions is not None:
        print(f"predictions: {args.predictions}")
    return 0


def _write_predictions(path: Path, predictions: list[Any], samples: list[Any]) -> None:
    """One JSON line per sample: its id, task, image and prompt, then the prediction with every head's
    output key (masks as COCO RLE), as ``padt predict --out`` writes it. Written to a temporary file, then renamed."""
    from .predict import _prediction_json

    with atomic_file(path) as f:
        for sample, prediction in zip(samples, predictions):
            record = {"id": sample.id, "task": sample.task, "image": str(sample.image), "prompt": sample.prompt}
            if getattr(sample, "images", None):  # one conversation about several images (docs/multi-image.md)
                record["images"] = [str(p) for p in sample.images]
            record.update(_prediction_json(prediction, rle=True))
            f.write(json.dumps(_strict_json(record)) + "\n")


def _evaluate(model: Any, args: argparse.Namespace) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """``evaluate_model`` with the command's options: ``(report, predictions, samples)``; the report gains
    an ``eval`` entry saying what ran."""
    import time
    from collections import Counter

    from ..eval.run import evaluate_model

    data = args.data if args.data is not None else _recipe_val(model)
    generation = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    batch_size = args.batch_size or model.recipe.eval.batch_size
    start = time.perf_counter()
    report, predictions, samples = evaluate_model(
        model, data, args.task, batch_size, args.max_samples, protocol=args.protocol, **generation
    )
    report["eval"] = {
        "model": args.model,
        "protocol": args.protocol,
        "data": args.data or "the model recipe's data.val",
        "tasks": list(args.task or sorted({str(s.task) for s in samples})),
        "samples": dict(sorted(Counter(str(s.task) for s in samples).items())),
        "batch_size": batch_size,
        "generation": generation,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return report, predictions, samples


def _recipe_val(model: Any) -> list[Any]:
    """The ``data.val`` sections of the model's own (resolved) recipe: ``padt eval``'s default data."""
    sections = list(model.recipe.data.val)
    if not sections:
        raise ValueError(f"recipe {model.recipe.name!r} of the model has no data.val datasets; pass --data")
    return sections


def _configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="saved model directory (or a recipe path or name)")
    parser.add_argument(
        "--data",
        default=None,
        metavar="YAML",
        help="a recipe (its data.val), or a YAML dataset section {name: ..., ...} or list of them "
        "(default: the data.val of the model's own recipe)",
    )
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="TASK",
        help="metric to compute (repeat: --task rec --task ovd); default: every task in the data",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="N", help="default: the recipe's eval.batch_size"
    )
    parser.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="only the first N samples of each task (of each split)",
    )
    parser.add_argument(
        "--protocol",
        choices=("standard", "reference", "both"),
        default="standard",
        help="standard: padt's metric definitions; reference: the reference's evaluation scripts (echo-keyed "
        "best-of-all-objects REC/RES, OVD against its preprocessed ground truth; keys *_reference); both "
        "(default: standard; docs/metrics.md)",
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N", help="default: the recipe's")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the report JSON")
    parser.add_argument(
        "--predictions",
        default=None,
        metavar="FILE",
        help="also write every prediction as JSON lines (sample id, task, image, prompt, then every head's "
        "output by key; masks as COCO RLE)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out / --predictions files")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(handler=cmd_eval)

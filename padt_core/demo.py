"""``padt demo``: generate shapes, train a tiny PaDT model, evaluate it, draw a gallery.

The default recipe, ``tiny_shapes_pretrained``, puts an ImageNet-pretrained EfficientNet-Lite0 (frozen,
weights from a pip package) under a tiny from-scratch LLM; ``recipe_name="tiny_qwen_shapes"`` trains the
tiny Qwen2.5-VL from scratch instead. ``long`` trains on the ``full`` split (same colour + shape
distractors, so expressions need size and position words).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from .atomic import atomic_path, atomic_write_text
from .data.image import load_image

__all__ = ["DEMO_RECIPE", "demo_data", "format_table", "run_demo"]

DEMO_RECIPE = "tiny_shapes_pretrained"
METRIC_KEYS = (
    "rec_acc50",
    "rec_label_acc",
    "res_ciou",
    "res_giou",
    "ovd_map",
    "ovd_map_segm",
    "ric_cider",
    "ric_gp",
    "ric_gr",
)
TASKS = ("rec", "res", "ovd", "ric")

# Budgets: (train images, val images, optimiser steps); docs/results/demo.md has the measured wall times and the
# levers tried against them (700 steps fit 10 minutes but cost REC Acc@0.5 ~0.17; batch 8 x 1800 steps and
# length-grouped batches were no better per CPU second).
BUDGETS = {"quick": (200, 24, 40), "default": (2000, 100, 900), "long": (4000, 200, 2700)}


def format_table(report: dict[str, Any]) -> str:
    rows = [(k, report[k]) for k in METRIC_KEYS if k in report]
    width = max(len(k) for k, _ in rows) if rows else 10
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {'n/a' if v is None or v != v else f'{v:.4f}'}" for k, v in rows]
    return "\n".join(lines)


def demo_data(out: Path, budget: str, seed: int, difficulty: str) -> str:
    """The demo's ``data.train`` section (a recipe override value): its shapes split under ``out/data``.

    ``regenerate``: the folder is the demo's own, so data of an earlier run with other scene parameters
    is replaced rather than refused. ``workers: 0`` renders on every core (the files do not depend on it;
    2000 images: 50 s on one core, 32 s on two).
    """
    n_train, n_val, _ = BUDGETS[budget]
    root = out / "data" / f"shapes-{difficulty}-{n_train}-{n_val}-{seed}"
    return (
        f"{{name: shapes, root: {root}, tasks: [rec, res, ovd, ric], "
        f"n_train: {n_train}, n_val: {n_val}, seed: {seed}, difficulty: {difficulty}, regenerate: true, workers: 0}}"
    )


def run_demo(
    out_dir: str | Path = "runs/demo",
    budget: str = "default",
    overwrite: bool = False,
    seed: int = 0,
    overrides: list[str] | None = None,
    gallery_size: int = 8,
    difficulty: str | None = None,
    recipe_name: str = DEMO_RECIPE,
) -> dict[str, Any]:
    """Data → train → eval → ``report.json`` + ``gallery.png`` in ``out_dir``; returns the report.

    Args:
        out_dir: run folder (data, model, report, gallery).
        budget: ``quick``, ``default`` or ``long`` (images and steps: ``BUDGETS``).
        overwrite: replace a run already in ``out_dir``.
        seed: data and training seed.
        overrides: dotted recipe overrides applied last.
        gallery_size: tiles in the gallery.
        difficulty: shapes split; default ``full`` for ``long``, else ``easy``.
        recipe_name: bundled recipe name or path.

    Example:
        >>> report = run_demo("runs/demo", budget="quick")  # doctest: +SKIP
        >>> report["rec_acc50"], report["rec_label_acc"]  # doctest: +SKIP
    """
    from . import load
    from .data.reader import build_dataset
    from .eval.evaluate import evaluate
    from .eval.run import predict_samples
    from .recipe import load_recipe
    from .train.run import train
    from .viz import draw_prediction, gallery

    out = Path(out_dir)
    report_file, gallery_file = out / "report.json", out / "gallery.png"
    if (report_file.exists() or (out / "model").exists()) and not overwrite:
        raise FileExistsError(f"{out} already holds a demo run; pass --overwrite to replace it or --out another dir")
    n_train, n_val, steps = BUDGETS[budget]
    difficulty = difficulty or ("full" if budget == "long" else "easy")
    data = demo_data(out, budget, seed, difficulty)
    recipe = load_recipe(
        recipe_name,
        [
            f"data.train=[{data}]",
            f"data.val=[{data[:-1]}, split: val}}]",
            f"train.max_steps={steps}",
            f"train.seed={seed}",
            f"train.save_steps={max(steps, 1)}",
            *(overrides or []),
        ],
    )
    started = time.time()
    summary = train(recipe, output_dir=out / "model", overwrite=overwrite)
    train_seconds = time.time() - started

    model = load(out / "model").eval()
    samples = list(build_dataset(recipe.data.val[0], templates=recipe.data.templates).samples())
    predictions = predict_samples(model, samples, batch_size=recipe.eval.batch_size)
    metrics, configs = list(TASKS), {}
    vocabulary = _categories(samples)
    if vocabulary:  # does the REC answer name the referred kind (the OVD categories: the eight shapes)?
        metrics.append("rec_label")
        configs["rec_label"] = {"vocabulary": vocabulary}
    report = evaluate(predictions, samples, metrics, configs)
    report["recipe"] = recipe.name
    report["budget"] = {
        "name": budget,
        "difficulty": difficulty,
        "train_images": n_train,
        "val_images": n_val,
        "steps": recipe.train.max_steps,  # an override (train.max_steps=...) wins over the budget
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
    }
    report["train"] = {"final_loss": summary["train_loss"], "skipped": summary["skipped"]}
    atomic_write_text(report_file, json.dumps(_finite(report), indent=2, default=_jsonable, allow_nan=False))

    tiles, captions, seen = [], [], set()
    for sample, prediction in zip(samples, predictions):
        if sample.task not in ("rec", "ovd") or len(tiles) >= gallery_size or (sample.image, sample.task) in seen:
            continue
        seen.add((sample.image, sample.task))
        image = load_image(sample.image)
        grid = _grid(model, image)
        tiles.append(draw_prediction(image, prediction, grid))
        captions.append(f"{sample.task}: {sample.objects[0].label if sample.task == 'rec' else 'detect all'}")
    picture = gallery(tiles, columns=4, captions=captions)
    with atomic_path(gallery_file) as tmp:
        picture.save(tmp, format="PNG")
    return report


def _categories(samples: list) -> list[str]:
    """Category names of the COCO file the OVD samples are scored against (empty without OVD samples)."""
    for sample in samples:
        path = (sample.meta or {}).get("coco_annotation_file") if sample.task == "ovd" else None
        if path:
            return [c["name"] for c in json.loads(Path(path).read_text())["categories"]]
    return []


def _grid(model, image: Image.Image) -> tuple[int, int]:
    batch = model.backbone.process([model.backbone.format_prompt("x", True)], [image])
    return tuple(batch["image_grids"][0])


def _finite(value: Any) -> Any:
    """NaN (a metric with nothing to score) becomes null, as in ``padt eval``'s report."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)

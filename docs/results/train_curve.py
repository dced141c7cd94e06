"""Loss-curve evidence: train ``recipes/tiny_qwen_shapes.yaml`` for N steps and record every loss term.

Run from the repository root::

    python docs/results/train_curve.py                       # 200 steps -> docs/results/train_curve.json
    python docs/results/train_curve.py --steps 50 --output /tmp/curve.json

The recipe is used as written (model, optimiser, batch 16, LR warm-up, prototype warm-up of 100 steps,
cosine schedule) except for ``train.max_steps`` (the schedule is laid out over these steps), a loss
log at every step, no intermediate checkpoints and a smaller generated shapes set (``--n-train``
images, all four tasks) in a temporary folder. The JSON holds, per step, the total loss, each term
(token, box_giou, box_l1, score, mask_dice, mask_focal), the learning rate and the gradient norm, plus
first-N vs last-N means; the same summary is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny_qwen_shapes.yaml"
TERMS = ("loss", "loss_token", "loss_box_giou", "loss_box_l1", "loss_score", "loss_mask_dice", "loss_mask_focal")


def train_curve(
    steps: int = 200,
    n_train: int = 200,
    window: int = 20,
    seed: int = 42,
    threads: int | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Train the tiny shapes recipe for ``steps`` steps; per-step losses and first/last-``window`` means."""
    from padt_bench.generate import machine_info

    from padt_core.train.run import train

    if steps < 2 * window:
        raise ValueError(f"steps ({steps}) must be at least 2 x window ({window})")
    if threads is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="padt-curve-") as tmp:
        root = data_root or str(Path(tmp) / "shapes")
        tasks = ["rec", "res", "ovd", "ric"]
        data = {"name": "shapes", "root": root, "split": "train", "tasks": tasks, "n_train": n_train, "n_val": 0}
        overrides = {
            "data.train": [data],
            "data.val": [],
            "train.max_steps": steps,
            "train.logging_steps": 1,
            "train.save_steps": steps,
            "train.seed": seed,
        }
        start = time.perf_counter()
        summary = train(str(RECIPE), overrides, output_dir=Path(tmp) / "run")
        seconds = time.perf_counter() - start
    logs = [h for h in summary["log_history"] if "loss" in h]
    curve = {key: [h.get(key) for h in logs] for key in ("step", *TERMS, "learning_rate", "grad_norm")}
    means = {
        key.removeprefix("loss_") if key != "loss" else "total": {
            f"first_{window}": round(statistics.fmean(curve[key][:window]), 4),
            f"last_{window}": round(statistics.fmean(curve[key][-window:]), 4),
        }
        for key in TERMS
    }
    from padt_core.recipe import load_recipe

    recipe = load_recipe(str(RECIPE), overrides)
    return {
        "benchmark": "train_curve",
        "recipe": "recipes/tiny_qwen_shapes.yaml",
        "overrides": {k: v for k, v in overrides.items() if k != "data.train"}
        | {"data.train": [{**data, "root": "<tmp>"}]},
        "settings": {
            "steps": steps,
            "batch_size": recipe.train.batch_size,
            "lr": recipe.train.lr,
            "lr_warmup_steps": recipe.train.warmup_steps,
            "prototype_warmup_steps": recipe.train.prototype_warmup_steps,
            "samples": summary["samples"],
            "window": window,
        },
        "machine": machine_info(torch.device("cpu"), torch.float32),
        "train_seconds": round(seconds, 1),
        "skipped": summary["skipped"],
        "means": means,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=200, help="generated train images (x4 tasks -> samples)")
    parser.add_argument("--window", type=int, default=20, help="steps averaged at the start and at the end")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data-root", default=None, help="shapes folder to reuse (default: a temporary one)")
    parser.add_argument("--output", default=str(Path(__file__).with_suffix(".json")), help="JSON file to write")
    args = parser.parse_args(argv)
    result = train_curve(args.steps, args.n_train, args.window, args.seed, args.threads, args.data_root)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    w = args.window
    print(f"{args.steps} steps in {result['train_seconds']} s; mean of the first {w} vs last {w} steps:")
    for term, m in result["means"].items():
        print(f"  {term:<11} {m[f'first_{w}']:>9.4f} -> {m[f'last_{w}']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

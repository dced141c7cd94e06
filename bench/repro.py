"""``padt bench repro``: the paper's claim in miniature — VRTs + decoder heads vs boxes written as text.

Issue 9. The same tiny Qwen2.5-VL trained on the same generated shapes data twice:

- ``padt``: ``tiny_qwen_shapes`` (VRTs, prototype bank, box/score/mask heads);
- ``text_coordinates``: ``tiny_qwen_shapes_textbox`` (Qwen2.5-VL's ``{"bbox_2d": [...]}`` as text, plain CE).

Equal budget for both: the same steps, batch (the recipes'), data, evaluation and learning-rate search —
each method trains once per learning rate in ``lrs`` on seed 0, then its best learning rate (final
REC Acc@0.5, then OVD mAP, then the smaller lr) on the remaining seeds, its seed-0 run reused. Both
methods therefore get ``len(lrs) + seeds - 1`` runs.

Writes, in ``out``:

- ``repro.json``: top-level ``padt`` and ``text_coordinates``, each with the seed-mean final
  ``rec_acc50`` and ``ovd_map`` (and std), ``per_seed`` finals and curves, ``lr_sweep``; plus
  ``comparison`` (issue 9's target per seed), ``plan``, ``command``, ``machine``, ``settings`` and the raw
  ``runs`` that make the file resumable;
- ``repro.png``: REC Acc@0.5 and OVD mAP vs training step, seed mean with the seed min–max band;
- the ``padt bench repro`` section of ``README.md`` (between its markers; the rest is left alone).

Budget: ``default`` fits 60 minutes on 2 CPU cores with ``jobs=2`` (two one-thread runs side by
side), ``quick`` 10 minutes; :func:`plan_budget` prints the estimate from measured step and eval
times before anything starts.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .sweep import RunSpec, ShapesData, estimate_seconds, mean_std, plot_curves, run_sweep, scaled_warmups

__all__ = ["BUDGETS", "METHODS", "bench_repro", "best_lr", "plan_budget", "render_readme_section"]

METHODS: dict[str, str] = {"padt": "tiny_qwen_shapes", "text_coordinates": "tiny_qwen_shapes_textbox"}
DEFAULT_LRS = (1e-3, 2e-3)  # around the tiny recipes' 2e-3 (no divergence there from scratch)
EVAL_TASKS = ("rec", "ovd")
# (train images, val images, steps, eval points, eval samples per task)
BUDGETS: dict[str, tuple[int, int, int, int, int]] = {
    "default": (2000, 100, 800, 5, 100),  # ~52 min with jobs=2 (plan_budget); 900 steps would not fit
    "quick": (300, 40, 100, 2, 40),  # ~7 min
}
TARGET_MINUTES = {"default": 60, "quick": 10}

README_START = "<!-- padt bench repro: start -->"
README_END = "<!-- padt bench repro: end -->"
_PLOT = (("rec_acc50", "REC Acc@0.5"), ("ovd_map", "OVD mAP"))


def _config(method: str, lr: float) -> str:
    return f"{method}@lr={lr:g}"


def plan_budget(
    *,
    methods: int,
    lrs: int,
    seeds: int,
    steps: int,
    points: int,
    samples: int,
    train_images: int,
    val_images: int,
    jobs: int,
) -> dict[str, Any]:
    """Estimated wall time of a repro run from the measured per-step / per-eval / per-run costs.

    Two phases (the lr sweep, then the other seeds at the best lr), each run in rounds of ``jobs``.
    """
    rounds = math.ceil(methods * lrs / jobs) + math.ceil(methods * (seeds - 1) / jobs)
    estimate = estimate_seconds(
        rounds=rounds, steps=steps, points=points, samples=samples, images=train_images + val_images, jobs=jobs
    )
    return {"runs": methods * (lrs + seeds - 1), **estimate}


def best_lr(runs: Mapping[str, Any], method: str, lrs: Sequence[float]) -> float | None:
    """The method's best learning rate on seed 0: final REC Acc@0.5, then OVD mAP, then the smaller lr.

    ``None`` until every lr of the sweep has finished.
    """
    scored = []
    for lr in lrs:
        run = runs.get(f"{_config(method, lr)}/seed0")
        if run is None:
            return None
        final = run["final"]
        scored.append((-(final.get("rec_acc50") or 0.0), -(final.get("ovd_map") or 0.0), lr))
    return min(scored)[2]


def bench_repro(
    out: str | os.PathLike = "docs/results",
    *,
    methods: Sequence[str] = tuple(METHODS),
    recipes: Mapping[str, str] | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    seeds: int = 3,
    steps: int | None = None,
    train_images: int | None = None,
    val_images: int | None = None,
    quick: bool = False,
    difficulty: str = "full",
    jobs: int = 2,
    overwrite: bool = False,
    work_dir: str | os.PathLike | None = None,
    eval_points: int | None = None,
    eval_samples: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the comparison; write ``repro.json``, ``repro.png``, the README section; return the JSON.

    ``recipes`` maps a method to another recipe (default :data:`METHODS`). ``methods`` can leave one
    arm out (e.g. ``["padt"]`` to check the pipeline). Other arguments as in
    :func:`padt_bench.ablate.bench_ablate`; the rest of the budget comes from :data:`BUDGETS`.
    """
    from padt_core.recipe import load_recipe

    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    recipe_of = {**METHODS, **(recipes or {})}
    unknown = [m for m in methods if m not in recipe_of]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or list(methods)}; choose from {', '.join(recipe_of)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeated: {list(methods)}")
    if not lrs or any(not lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise ValueError(f"lrs must be distinct positive learning rates, got {list(lrs)}")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    # A missing or invalid recipe fails now, not in a worker later; the batch is each recipe's own.
    batch = {m: load_recipe(recipe_of[m]).train.batch_size for m in methods}
    budget = "quick" if quick else "default"
    n_train, n_val, default_steps, default_points, default_samples = BUDGETS[budget]
    n_train, n_val = train_images or n_train, val_images or n_val
    steps = steps or default_steps
    points, samples = eval_points or default_points, eval_samples or default_samples
    work = Path(work_dir or "runs/repro")
    out_dir = Path(out)
    data = ShapesData(str(work / "data" / f"shapes-{difficulty}-{n_train}-{n_val}"), n_train, n_val, difficulty)
    plan = plan_budget(
        methods=len(methods),
        lrs=len(lrs),
        seeds=seeds,
        steps=steps,
        points=points,
        samples=samples,
        train_images=n_train,
        val_images=n_val,
        jobs=jobs,
    )
    plan["target_minutes"] = TARGET_MINUTES[budget]
    say(
        f"padt bench repro ({budget}): {plan['runs']} runs of {steps} steps ({len(methods)} method(s) x "
        f"({len(lrs)} lrs on seed 0 + {seeds - 1} more seeds)), {jobs} at a time; estimated "
        f"{plan['estimated_minutes']} min on 2 cores (target <= {plan['target_minutes']} min)"
    )
    settings = {
        "benchmark": "repro",
        "methods": {m: recipe_of[m] for m in methods},
        "steps": steps,
        "batch_size": batch,
        "lrs": list(lrs),
        "seeds": seeds,
        "data": data.to_json(),
        "eval": {"tasks": list(EVAL_TASKS), "points": points, "samples_per_task": samples, "split": "val"},
    }
    command = command or "padt bench repro" + (" --quick" if quick else "")
    started = time.time()

    def summarise(results: dict[str, Any]) -> dict[str, Any]:
        extra = {m: _method_summary(results["runs"], m, recipe_of[m], lrs) for m in methods}
        extra["comparison"] = _comparison(extra)
        return {**extra, "plan": plan, "command": command, "machine": _machine(jobs)}

    def specs_for(method: str, lr: float, seed_list: Sequence[int]) -> list[RunSpec]:
        recipe = recipe_of[method]
        overrides = (f"train.lr={lr}", *scaled_warmups(recipe, steps))
        return [RunSpec(_config(method, lr), recipe, seed, steps, overrides) for seed in seed_list]

    common = {
        "work_dir": work,
        "jobs": jobs,
        "summarise": summarise,
        "log": say,
        "points": points,
        "eval_samples": samples,
        "eval_tasks": EVAL_TASKS,
    }
    sweep = [s for m in methods for lr in lrs for s in specs_for(m, lr, [0])]
    results = run_sweep(sweep, out_dir / "repro.json", settings, data, overwrite=overwrite, **common)
    best = {m: best_lr(results["runs"], m, lrs) for m in methods}
    say("best learning rates on seed 0: " + ", ".join(f"{m} {lr:g}" for m, lr in best.items()))
    rest = [s for m in methods for s in specs_for(m, best[m], range(1, seeds))]
    if rest:
        results = run_sweep([*sweep, *rest], out_dir / "repro.json", settings, data, **common)
    results["wall_seconds"] = round(time.time() - started, 1)
    plot_curves(
        {m: [r["curve"] for r in results[m]["per_seed"].values()] for m in methods},
        _PLOT,
        out_dir / "repro.png",
        title=f"tiny Qwen2.5-VL, {steps} steps, {difficulty} shapes, best lr per method; band = seed min–max",
    )
    readme = out_dir / "README.md"
    readme.write_text(update_readme(readme.read_text() if readme.exists() else "", render_readme_section(results)))
    return results


def _method_summary(runs: Mapping[str, Any], method: str, recipe: str, lrs: Sequence[float]) -> dict[str, Any]:
    lr = best_lr(runs, method, lrs)
    sweep = []
    for candidate in lrs:
        run = runs.get(f"{_config(method, candidate)}/seed0")
        if run is not None:
            sweep.append({"lr": candidate, "seed": 0, **run["final"]})
    mine = [] if lr is None else [r for r in runs.values() if r["config"] == _config(method, lr)]
    rec, ovd = (
        mean_std([r["final"].get("rec_acc50") for r in mine]),
        mean_std([r["final"].get("ovd_map") for r in mine]),
    )
    return {
        "recipe": recipe,
        "lr": lr,
        "seeds": sorted(r["seed"] for r in mine),
        "rec_acc50": rec["mean"],
        "rec_acc50_std": rec["std"],
        "ovd_map": ovd["mean"],
        "ovd_map_std": ovd["std"],
        "per_seed": {
            str(r["seed"]): {"final": r["final"], "curve": r["curve"], "seconds_per_step": r["seconds_per_step"]}
            for r in sorted(mine, key=lambda r: r["seed"])
        },
        "lr_sweep": sweep,
    }


def _comparison(summaries: Mapping[str, Any]) -> dict[str, Any] | None:
    """Issue 9's target, seed by seed: PaDT REC ≥ 1.5× the baseline's (and > 0), and higher OVD mAP."""
    padt, text = summaries.get("padt"), summaries.get("text_coordinates")
    if not padt or not text:
        return None
    per_seed = {}
    for seed in sorted(set(padt["per_seed"]) & set(text["per_seed"]), key=int):
        p, t = padt["per_seed"][seed]["final"], text["per_seed"][seed]["final"]
        p_rec, t_rec = p.get("rec_acc50") or 0.0, t.get("rec_acc50") or 0.0
        p_ovd, t_ovd = p.get("ovd_map") or 0.0, t.get("ovd_map") or 0.0
        per_seed[seed] = {
            "rec_ratio": p_rec / t_rec if t_rec else None,  # None: the baseline scored 0
            "rec_target_met": p_rec > 0 and p_rec >= 1.5 * t_rec,
            "ovd_higher": p_ovd > t_ovd,
        }
    return {
        "per_seed": per_seed,
        "target_met_all_seeds": bool(per_seed)
        and all(s["rec_target_met"] and s["ovd_higher"] for s in per_seed.values()),
    }


def _machine(jobs: int) -> dict[str, Any]:
    import torch

    from .generate import machine_info

    return {**machine_info(torch.device("cpu"), torch.float32), "torch_threads": 1, "parallel_runs": jobs}


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def render_readme_section(results: Mapping[str, Any]) -> str:
    """The ``padt bench repro`` section of ``docs/results/README.md`` (markers included)."""
    s = results["settings"]
    lines = [
        README_START,
        "## PaDT vs text coordinates (`padt bench repro`, issue 9)",
        "",
        f"Tiny Qwen2.5-VL from scratch, {s['steps']} steps at batch "
        f"{'/'.join(str(b) for b in dict.fromkeys(s['batch_size'].values()))}, `{s['data']['difficulty']}` shapes "
        f"({s['data']['n_train']} train / {s['data']['n_val']} held-out images); lr searched over "
        f"{', '.join(f'{lr:g}' for lr in s['lrs'])} on seed 0 for each method, the best on {s['seeds']} seeds. "
        f"Evaluated on {s['eval']['samples_per_task']} held-out samples per task (evenly spaced over the split).",
        "",
        "| method | recipe | best lr | seeds | REC Acc@0.5 | OVD mAP |",
        "|---|---|---|---|---|---|",
    ]
    for method in s["methods"]:
        m = results.get(method)
        if not m:
            continue
        lr = "n/a" if m["lr"] is None else f"{m['lr']:g}"
        lines.append(
            f"| {method} | `{m['recipe']}` | {lr} | {', '.join(map(str, m['seeds']))} | "
            f"{_fmt(m['rec_acc50'], m['rec_acc50_std'])} | {_fmt(m['ovd_map'], m['ovd_map_std'])} |"
        )
    comparison = results.get("comparison")
    if comparison:
        met = "met" if comparison["target_met_all_seeds"] else "not met"
        lines += ["", f"Target (PaDT REC ≥ 1.5× baseline and higher OVD mAP, every seed): **{met}**."]
    lines += [
        "",
        "```bash",
        results.get("command", "padt bench repro"),
        "```",
        "",
        "![REC Acc@0.5 and OVD mAP vs steps](repro.png) — full numbers, curves and the lr sweep: `repro.json`.",
        README_END,
    ]
    return "\n".join(lines)


def update_readme(text: str, section: str) -> str:
    """``text`` with its repro section replaced by ``section`` (appended when it has none)."""
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text)
    head = text.rstrip() + "\n\n" if text.strip() else "# Results\n\nMeasured results of the padt benchmarks.\n\n"
    return head + section + "\n"

"""``padt bench ablate``: the three quality switches beyond the reference, each on its own and together.

Issue 8's ablation. One recipe (``tiny_qwen_shapes``), one shapes dataset, one step budget; only the
switches differ between configurations:

============== ========================================================================================
reference      all off: plain greedy decoding, no prototype positions, decoder without cell geometry
no_repeat      ``generation.logits_processors=[no_repeat_vrt]`` (no VRT twice in one run)
positional     ``vrt.position=learned`` (2-D position embedding added to prototypes)
cell_geometry  ``decoder.trunk.cell_positions=true`` + box head ``prior: hull`` +
               ``train.decoder_cell_subsets=true``
all            the three together
no_geometry    no-repeat + positional, cell geometry off (the tiny recipes' defaults before this ablation)
============== ========================================================================================

Configurations run by default are the first five; ``no_geometry`` is asked for by name (``--configs``).

Every configuration trains ``seeds`` times (``train.seed``: initialisation and data order; the data
stays the same) and is evaluated on the held-out split at a few points of each run (see
:mod:`padt_bench.sweep`). Writes ``ablation.json`` (per run: final numbers and curve; per
configuration: mean ± std over seeds), ``ablation.md`` (table, command, settings) and ``ablation.png``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .sweep import CURVE_KEYS, RunSpec, ShapesData, estimate_seconds, mean_std, plot_curves, run_sweep, scaled_warmups

__all__ = ["ABLATION_RECIPE", "BUDGETS", "CONFIGS", "DEFAULT_CONFIGS", "bench_ablate", "configuration_overrides"]

ABLATION_RECIPE = "tiny_qwen_shapes"

# The recipe switches of each configuration, all stated explicitly so that a change of the recipe's
# defaults cannot change what a configuration means.
_OFF = {
    "no_repeat": ["generation.logits_processors=[]"],
    "positional": ["vrt.position=none"],
    "cell_geometry": [
        "decoder.trunk.cell_positions=false",
        "decoder.heads.0={name: box, prior: none}",
        "train.decoder_cell_subsets=false",
    ],
}
_ON = {
    "no_repeat": ["generation.logits_processors=[no_repeat_vrt]"],
    "positional": ["vrt.position=learned"],
    "cell_geometry": [
        "decoder.trunk.cell_positions=true",
        "decoder.heads.0={name: box, prior: hull}",
        "train.decoder_cell_subsets=true",
    ],
}
CONFIGS: dict[str, tuple[str, ...]] = {
    "reference": (),
    "no_repeat": ("no_repeat",),
    "positional": ("positional",),
    "cell_geometry": ("cell_geometry",),
    "all": ("no_repeat", "positional", "cell_geometry"),
    "no_geometry": ("no_repeat", "positional"),
}

# (train images, val images, steps, eval points, eval samples per task). ``default`` is the demo's
# budget: 900 steps at batch 16, ~11 min of training per run at one thread (0.75 s/step), 15 runs in
# ~2 h with jobs=2. ``quick`` (one seed by default, ~6 min) checks the pipeline and says little about
# the switches.
BUDGETS: dict[str, tuple[int, int, int, int, int]] = {
    "default": (2000, 100, 900, 5, 200),
    "quick": (300, 40, 100, 2, 40),
}
EVAL_TASKS = ("rec", "res", "ovd")
_TABLE = (
    ("rec_acc50", "REC Acc@0.5"),
    ("res_giou", "RES gIoU"),
    ("ovd_map", "OVD mAP"),
    ("distinct_cells", "distinct cells / object"),
    ("on_target", "VRTs on target"),
)


DEFAULT_CONFIGS: tuple[str, ...] = ("reference", "no_repeat", "positional", "cell_geometry", "all")


def configuration_overrides(config: str) -> list[str]:
    """The dotted overrides of one ablation configuration (every switch set explicitly)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown ablation configuration {config!r}; choose from {', '.join(CONFIGS)}")
    on = set(CONFIGS[config])
    return [o for switch in _ON for o in (_ON[switch] if switch in on else _OFF[switch])]


def bench_ablate(
    out: str | os.PathLike = "docs/results",
    *,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    seeds: int | Sequence[int] | None = None,
    steps: int | None = None,
    train_images: int | None = None,
    val_images: int | None = None,
    quick: bool = False,
    difficulty: str = "full",
    jobs: int = 1,
    overwrite: bool = False,
    work_dir: str | os.PathLike | None = None,
    recipe: str = ABLATION_RECIPE,
    eval_points: int | None = None,
    eval_samples: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the ablation (resuming ``<out>/ablation.json``), write its JSON, table and plot; return the JSON.

    ``seeds`` is a count (seeds 0..n-1) or explicit seeds (default 3, ``quick`` 1). ``steps``, ``train_images``,
    ``val_images``, ``eval_points``, ``eval_samples`` default to the ``default`` or ``quick`` budget.
    ``difficulty`` ``full`` (default) keeps the size and left/right expressions that positional
    prototypes are for. ``work_dir`` (default ``runs/ablation``) holds the data, logs and run dirs.
    """
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        raise ValueError(f"unknown ablation configuration(s) {unknown or configs}; choose from {', '.join(CONFIGS)}")
    if seeds is None:
        seeds = 1 if quick else 3  # quick checks the pipeline: one seed per configuration
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError(f"seeds must name at least one seed, got {seeds!r}")
    n_train, n_val, default_steps, default_points, default_samples = BUDGETS["quick" if quick else "default"]
    n_train, n_val = train_images or n_train, val_images or n_val
    steps = steps or default_steps
    points, samples = eval_points or default_points, eval_samples or default_samples
    out_dir = Path(out)
    work = Path(work_dir or "runs/ablation")
    data = ShapesData(str(work / "data" / f"shapes-{difficulty}-{n_train}-{n_val}"), n_train, n_val, difficulty)
    warmups = scaled_warmups(recipe, steps)
    specs = [
        RunSpec(config, recipe, seed, steps, (*configuration_overrides(config), *warmups))
        for config in configs
        for seed in seed_list
    ]
    settings = {
        "benchmark": "ablate",
        "recipe": recipe,
        "steps": steps,
        "data": data.to_json(),
        "eval": {"tasks": list(EVAL_TASKS), "points": points, "samples_per_task": samples, "split": "val"},
        "budget_overrides": warmups,
    }
    command = command or "padt bench ablate" + (" --quick" if quick else "")
    plan = estimate_seconds(
        rounds=math.ceil(len(specs) / jobs),
        steps=steps,
        points=points,
        samples=samples,
        images=n_train + n_val,
        jobs=jobs,
    )
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    say(
        f"padt bench ablate: {len(specs)} runs of {steps} steps ({len(configs)} configurations x {len(seed_list)} "
        f"seeds), {jobs} at a time; estimated {plan['estimated_minutes']} min on 2 cores if none is done yet"
    )
    started = time.time()

    def summarise(results: dict[str, Any]) -> dict[str, Any]:
        summary = _summary(results["runs"], list(CONFIGS))
        return {"summary": summary, "plan": plan, "command": command, "machine": _machine(jobs)}

    results = run_sweep(
        specs,
        out_dir / "ablation.json",
        settings,
        data,
        work_dir=work,
        jobs=jobs,
        overwrite=overwrite,
        summarise=summarise,
        points=points,
        eval_samples=samples,
        eval_tasks=EVAL_TASKS,
        log=say,
    )
    (out_dir / "ablation.md").write_text(render_markdown(results))
    series = {c: [r["curve"] for r in results["runs"].values() if r["config"] == c] for c in CONFIGS}
    plot_curves(
        {c: curves for c, curves in series.items() if curves},
        _TABLE,
        out_dir / "ablation.png",
        title=f"{recipe}, {steps} steps, {difficulty} shapes; line = seed mean, band = seed min–max",
    )
    results["wall_seconds"] = round(time.time() - started, 1)
    return results


def _summary(runs: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """Per configuration: seeds done and mean ± std of each final number."""
    out: dict[str, Any] = {}
    for config in order:
        mine = [r for r in runs.values() if r["config"] == config]
        if mine:
            out[config] = {
                "seeds": sorted(r["seed"] for r in mine),
                **{k: mean_std([r["final"].get(k) for r in mine]) for k in CURVE_KEYS},
            }
    return out


def _machine(jobs: int) -> dict[str, Any]:
    import torch

    from .generate import machine_info

    return {**machine_info(torch.device("cpu"), torch.float32), "torch_threads": 1, "parallel_runs": jobs}


def _cell(stat: Mapping[str, Any], digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")


def render_markdown(results: Mapping[str, Any]) -> str:
    """``ablation.md``: what ran, the table of seed means ± std, per-seed finals, the plot."""
    s = results["settings"]
    data = s["data"]
    lines = [
        "# Ablation: the quality switches beyond the reference (issue 8)",
        "",
        f"Recipe `{s['recipe']}`, {s['steps']} steps at the recipe's batch and learning rate, "
        f"`{data['difficulty']}` shapes ({data['n_train']} train / {data['n_val']} held-out images, data seed "
        f"{data['seed']}); evaluated on {s['eval']['samples_per_task']} held-out samples per task (evenly spaced "
        f"over the split) at "
        f"{s['eval']['points']} points of each run. Mean ± sample std over seeds (train.seed).",
        "",
        "```bash",
        results.get("command", "padt bench ablate"),
        "```",
        "",
        "| configuration | seeds | " + " | ".join(name for _, name in _TABLE) + " |",
        "|---|---|" + "---|" * len(_TABLE),
    ]
    for config, row in results.get("summary", {}).items():
        seeds = ", ".join(map(str, row["seeds"]))
        lines.append(f"| {config} | {seeds} | " + " | ".join(_cell(row[k]) for k, _ in _TABLE) + " |")
    lines += [
        "",
        "Switches: "
        + "; ".join(f"`{name}` = {', '.join(f'`{o}`' for o in on)}" for name, on in _ON.items())
        + ". `reference` has all three off, `all` all three on.",
        "distinct cells / object: mean distinct VRT cells per emitted object (REC answers); VRTs on target: "
        "fraction of VRTs emitted in REC answers that lie on the referred object's cells "
        "(`padt_core/eval/vrt_cells.py`).",
        "",
        "![ablation curves](ablation.png)",
        "",
        "## Per seed (final step)",
        "",
        "| run | " + " | ".join(name for _, name in _TABLE) + " | s/step |",
        "|---|" + "---|" * (len(_TABLE) + 1),
    ]
    for key, run in sorted(results["runs"].items()):
        cells = ["n/a" if run["final"].get(k) is None else f"{run['final'][k]:.3f}" for k, _ in _TABLE]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {run['seconds_per_step']:.2f} |")
    machine = results.get("machine", {})
    lines += [
        "",
        f"Machine: {machine.get('device_name', '?')}, {machine.get('cpu_count', '?')} cores, torch "
        f"{machine.get('torch', '?')}, one torch thread per run, {machine.get('parallel_runs', 1)} runs in parallel.",
        "",
    ]
    return "\n".join(lines)

"""Training sweeps for the result benchmarks: many short runs on one shapes dataset, each with a curve.

``padt bench ablate`` and ``padt bench repro`` both train a recipe under several configurations and
seeds and compare held-out numbers. This module is what they share:

- :class:`ShapesData`: one generated shapes dataset (train + held-out val split) used by every run, made
  once by the parent process before any run starts.
- :class:`RunSpec`: one run = a configuration label, a recipe, dotted overrides, a seed, a step count.
- :func:`train_run`: trains one run in this process and evaluates it on the held-out split at a few
  step points *during* that run (a ``TrainerCallback``), so a curve is one training run, not one run per
  point. Each point records ``rec_acc50`` / ``res_giou`` / ``ovd_map`` (whichever tasks are evaluated)
  and, for VRT models, ``distinct_cells`` and ``on_target`` (:mod:`padt_core.eval.vrt_cells`).
- :func:`run_sweep`: runs the specs not yet in a results JSON file — in this process or in ``jobs``
  worker processes — and rewrites the file after every finished run, so an interrupted sweep keeps what
  finished and a rerun resumes. A file written with other settings is an error unless ``overwrite``.
- :func:`mean_std`, :func:`plot_curves`: seed summaries and a curve plot with the seed spread as a band.

Every run uses ``threads`` torch threads (default 1) so that two runs share 2 cores side by side.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

__all__ = [
    "CURVE_KEYS",
    "RunSpec",
    "ShapesData",
    "SweepError",
    "estimate_seconds",
    "eval_points",
    "mean_std",
    "plot_curves",
    "run_sweep",
    "scaled_warmups",
    "train_run",
]

# Numbers recorded at each curve point (those of tasks not evaluated are left out).
CURVE_KEYS = ("rec_acc50", "res_giou", "ovd_map", "distinct_cells", "on_target")
_TASK_KEYS = {"rec": "rec_acc50", "res": "res_giou", "ovd": "ovd_map"}
RESULTS_FORMAT = 1


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others are in the results file."""


# ---------------------------------------------------------------------------------------------------
# What a run is
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesData:
    """The generated shapes dataset every run of a sweep trains and evaluates on.

    ``seed`` is the *data* seed and stays fixed across runs; a run's own seed (``train.seed``) changes
    its initialisation and data order only. ``tasks`` is the training mix (the recipe's by default).
    """

    root: str
    n_train: int
    n_val: int
    difficulty: str = "full"
    seed: int = 0
    tasks: tuple[str, ...] = ("rec", "res", "ovd", "ric")

    def __post_init__(self) -> None:
        if self.n_train < 1:
            raise ValueError(f"train images must be at least 1, got {self.n_train}")
        if self.n_val < 1:
            raise ValueError(f"val images must be at least 1, got {self.n_val}")
        if self.difficulty not in ("easy", "full"):
            raise ValueError(f"difficulty must be 'easy' or 'full', got {self.difficulty!r}")

    def section(self, split: str) -> dict[str, Any]:
        """The recipe's ``data.train`` / ``data.val`` section for ``split``."""
        return {
            "name": "shapes",
            "root": str(self.root),
            "split": split,
            "tasks": list(self.tasks),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "seed": self.seed,
            "difficulty": self.difficulty,
        }

    def ensure(self) -> None:
        """Generate the dataset once, before runs start (two workers must not race to write it)."""
        from padt_plugins.datasets.shapes import ShapesParams, ensure_shapes

        ensure_shapes(self.root, ShapesParams(self.seed, self.n_train, self.n_val, difficulty=self.difficulty))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "root"} | {"tasks": list(self.tasks)}


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep: ``config`` names the configuration (a table row), ``seed`` the repeat."""

    config: str
    recipe: str
    seed: int
    steps: int
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"run {self.config!r}: steps must be at least 1, got {self.steps}")
        if "/" in self.config:
            raise ValueError(f"configuration name {self.config!r} must not contain '/' (it is part of run keys)")

    @property
    def key(self) -> str:
        """Unique name of the run in a results file (what resuming skips)."""
        return f"{self.config}/seed{self.seed}"


def eval_points(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps ending at ``steps`` (e.g. 900, 4 → 225, 450, 675, 900)."""
    if count < 1:
        raise ValueError(f"eval points must be at least 1, got {count}")
    return sorted({max(1, round(steps * (i + 1) / count)) for i in range(count)})


def scaled_warmups(recipe: str, steps: int) -> list[str]:
    """Overrides that shrink the recipe's LR and prototype warm-ups in proportion to a shorter budget.

    The tiny recipes' warm-ups are sized for their ``max_steps`` (e.g. 100 prototype warm-up steps of
    900); a 120-step quick run would otherwise spend nearly all its steps warming up. Budgets at or
    above the recipe's own ``max_steps`` keep the recipe's values.
    """
    from padt_core.recipe import load_recipe

    cfg = load_recipe(recipe).train
    if cfg.max_steps <= 0 or steps >= cfg.max_steps:
        return []
    scale = steps / cfg.max_steps
    return [
        f"train.warmup_steps={round(cfg.warmup_steps * scale)}",
        f"train.prototype_warmup_steps={round(cfg.prototype_warmup_steps * scale)}",
    ]


# Costs measured on the 2-core development machine (torch CPU, one thread per run, batch 16,
# tiny_qwen_shapes): a training step; one evaluation of 100 held-out samples per task (REC and RES share
# their generations; OVD answers are longer) of a trained model; the fixed cost of a run (process start,
# imports, model build, reading the data); generating one shapes image; and how much slower each of two
# one-thread runs side by side is than one run alone.
STEP_SECONDS = 0.75
EVAL_SECONDS_PER_100 = 7.0
RUN_OVERHEAD_SECONDS = 12.0
DATA_SECONDS_PER_IMAGE = 0.016
PARALLEL_SLOWDOWN = 1.2  # measured 0.83 (text boxes) to 1.0 s/step (PaDT) with two runs and a loaded machine


def estimate_seconds(*, rounds: int, steps: int, points: int, samples: int, images: int, jobs: int) -> dict[str, Any]:
    """Wall time of a sweep run in ``rounds`` of ``jobs`` parallel runs, from the measured costs above."""
    per_run = steps * STEP_SECONDS + points * EVAL_SECONDS_PER_100 * samples / 100 + RUN_OVERHEAD_SECONDS
    if jobs > 1:
        per_run *= PARALLEL_SLOWDOWN
    data = images * DATA_SECONDS_PER_IMAGE
    return {
        "rounds_of_parallel_runs": rounds,
        "seconds_per_run": round(per_run),
        "data_seconds": round(data),
        "estimated_minutes": round((data + rounds * per_run) / 60, 1),
        "assumes": {
            "step_seconds": STEP_SECONDS,
            "eval_seconds_per_100_samples_per_task": EVAL_SECONDS_PER_100,
            "run_overhead_seconds": RUN_OVERHEAD_SECONDS,
            "parallel_slowdown": PARALLEL_SLOWDOWN if jobs > 1 else 1.0,
        },
    }


# ---------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------


def train_run(
    spec: RunSpec,
    data: ShapesData,
    work_dir: str | os.PathLike,
    *,
    points: int = 4,
    eval_samples: int | None = 100,
    eval_tasks: Sequence[str] = ("rec", "res", "ovd"),
    threads: int | None = 1,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` on ``data`` and evaluate on its val split at ``points`` steps of the same run.

    ``eval_samples`` caps the evaluated samples per task (evenly spaced over the val split, the same for
    every run and point). Returns the run's record: spec, curve (one dict per point: ``step``, the
    metrics, eval seconds), ``final`` (the last point's metrics), train/eval seconds, final loss.
    The run's model directory under ``work_dir`` is deleted afterwards unless ``keep_model``.
    """
    import torch
    from transformers import TrainerCallback

    from padt_core.eval.evaluate import evaluate
    from padt_core.eval.run import load_eval_samples, predict_samples
    from padt_core.eval.vrt_cells import processor_grid, vrt_cell_stats
    from padt_core.recipe import load_recipe
    from padt_core.train.run import train

    if threads is not None:
        torch.set_num_threads(threads)
    unknown = sorted(set(eval_tasks) - set(_TASK_KEYS))
    if unknown or not eval_tasks:
        raise ValueError(f"eval tasks must be among {sorted(_TASK_KEYS)}, got {list(eval_tasks)}")
    recipe = load_recipe(
        spec.recipe,
        [
            *spec.overrides,
            f"data.train=[{json.dumps(data.section('train'))}]",
            f"data.val=[{json.dumps(data.section('val'))}]",
            f"train.max_steps={spec.steps}",
            f"train.seed={spec.seed}",
            # Past the last step: the Trainer writes no checkpoint (optimiser state we would only delete).
            f"train.save_steps={spec.steps + 1}",
        ],
    )
    samples = [s for s in load_eval_samples(recipe.data.val, templates=recipe.data.templates) if s.task in eval_tasks]
    if eval_samples is not None:
        samples = _cap_per_task(samples, eval_samples)
    missing = sorted(set(eval_tasks) - {s.task for s in samples})
    if missing:
        raise ValueError(f"the val split of {data.root} has no samples for tasks {missing}")
    at = set(eval_points(spec.steps, points))
    curve: list[dict[str, Any]] = []

    def measure(model: Any, step: int) -> None:
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            predictions = predict_samples(model, samples, batch_size=recipe.eval.batch_size)
        finally:
            model.train(was_training)
        report = evaluate(predictions, samples, list(eval_tasks))
        point: dict[str, Any] = {"step": step}
        point |= {_TASK_KEYS[t]: _finite(report.get(_TASK_KEYS[t])) for t in eval_tasks}
        if "rec" in eval_tasks:
            cells = vrt_cell_stats(samples, predictions, processor_grid(model), coverage=model.coverage)
            point |= {"distinct_cells": cells["distinct_cells"], "on_target": cells["on_target"]}
        point["eval_seconds"] = round(time.perf_counter() - started, 2)
        curve.append(point)

    class _Track(TrainerCallback):
        # on_step_end sees the weights after the optimiser step of ``global_step``, the last one included.
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step in at and model is not None:
                measure(model, state.global_step)

    out = Path(work_dir) / "models" / spec.key.replace("/", "-")
    started = time.perf_counter()
    summary = train(recipe, output_dir=out, overwrite=True, callbacks=[_Track()])
    total = time.perf_counter() - started
    if not keep_model:
        shutil.rmtree(out, ignore_errors=True)
    eval_seconds = sum(p["eval_seconds"] for p in curve)
    final = {k: v for k, v in (curve[-1] if curve else {}).items() if k in CURVE_KEYS}
    return {
        "config": spec.config,
        "recipe": spec.recipe,
        "seed": spec.seed,
        "steps": spec.steps,
        "overrides": list(spec.overrides),
        "final": final,
        "curve": curve,
        "train_seconds": round(total - eval_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "seconds_per_step": round((total - eval_seconds) / max(summary["global_step"], 1), 3),
        "final_loss": _finite(summary["train_loss"]),
        "skipped": summary["skipped"],
    }


def _cap_per_task(samples: Sequence[Any], cap: int) -> list[Any]:
    """At most ``cap`` samples per task, evenly spaced over the split (in split order).

    Not the first ``cap`` (``evaluate_model(max_samples=...)``): the shapes val split lists ~7 referring
    sentences per image, so the first 100 REC samples would come from ~14 images. REC and RES list the
    same sentences in the same order, so the same positions are picked and share one generation.
    """
    by_task: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_task.setdefault(s.task, []).append(i)
    keep: set[int] = set()
    for indices in by_task.values():
        n = len(indices)
        keep |= set(indices) if n <= cap else {indices[k * n // cap] for k in range(cap)}
    return [s for i, s in enumerate(samples) if i in keep]


def _finite(value: Any) -> float | None:
    """JSON has no NaN: an undefined metric (nothing to score) is ``None``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------
# Many runs, one results file
# ---------------------------------------------------------------------------------------------------


def run_sweep(
    specs: Sequence[RunSpec],
    results_file: str | os.PathLike,
    settings: Mapping[str, Any],
    data: ShapesData,
    *,
    work_dir: str | os.PathLike,
    jobs: int = 1,
    overwrite: bool = False,
    summarise: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
    **run_options: Any,
) -> dict[str, Any]:
    """Run every spec not yet in ``results_file``; rewrite the file after each run; return its content.

    Args:
        specs: the runs; their keys (``config/seedN``) must be unique.
        results_file: JSON file ``{"format", "settings", "runs": {key: record}, ...}``. If it exists it is
            resumed — only when its ``settings`` equal ``settings`` — or replaced with ``overwrite``.
        settings: everything that makes runs comparable (budget, data, eval); JSON-serialisable.
        data: the shared dataset; generated here, once, before any run.
        work_dir: where runs keep their model directories and logs (``logs/<config>-seedN.log``).
        jobs: runs at a time; above 1 each run is its own process (spawned, one torch thread each).
        overwrite: start a new file even if one with other settings or finished runs exists.
        summarise: ``results -> extra top-level keys`` (tables, means), applied at every write.
        log: progress lines (default: stderr).
        run_options: passed to :func:`train_run` (``points``, ``eval_samples``, ``eval_tasks``, ``threads``).

    Raises:
        FileExistsError: ``results_file`` holds runs made with other settings and not ``overwrite``.
        SweepError: some runs failed (after the others finished and were written); see their logs.
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    keys = [s.key for s in specs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"runs listed twice: {repeated}")
    path = Path(results_file)
    settings = json.loads(json.dumps(settings))  # what reading the file back gives, for comparison
    results = load_results(path, settings, overwrite=overwrite)
    todo = [s for s in specs if s.key not in results["runs"]]
    done = len(specs) - len(todo)
    if done:
        say(f"{path}: {done} of {len(specs)} runs already done, {len(todo)} to go")
    _write(path, results, summarise)
    if not todo:
        return results
    data.ensure()
    work = Path(work_dir)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}

    def finished(spec: RunSpec, record: dict[str, Any] | None, error: str | None) -> None:
        if error is not None:
            failed[spec.key] = error
            say(f"[{spec.key}] FAILED: {error.strip().splitlines()[-1]} (log: {_log_path(work, spec)})")
            return
        results["runs"][spec.key] = record
        _write(path, results, summarise)
        final = ", ".join(f"{k} {v:.3f}" for k, v in record["final"].items() if v is not None)
        say(f"[{spec.key}] done in {record['train_seconds'] + record['eval_seconds']:.0f} s: {final}")

    if jobs == 1:
        for spec in todo:
            say(f"[{spec.key}] training {spec.steps} steps")
            finished(spec, *_run_logged(spec, data, str(work), run_options))
    else:
        # Spawned workers start clean (no forked torch thread pools); one run per worker process so a
        # run's memory is returned when it ends.
        os.environ.setdefault("OMP_NUM_THREADS", str(run_options.get("threads") or 1))
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}  # 3.10 lacks the option
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), **fresh)
        with pool:
            running: dict[Future, RunSpec] = {}
            for spec in todo:
                running[pool.submit(_run_logged, spec, data, str(work), run_options)] = spec
            for spec in todo[:jobs]:
                say(f"[{spec.key}] training {spec.steps} steps")
            while running:
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ready:
                    finished(running.pop(future), *future.result())
    if failed:
        raise SweepError(
            f"{len(failed)} of {len(todo)} runs failed ({', '.join(sorted(failed))}); the others are in {path}, "
            f"and rerunning the same command retries only the failed ones. Logs: {work / 'logs'}"
        )
    return results


def load_results(path: Path, settings: Mapping[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """The results to extend: the file's when it matches ``settings``, a new one with ``overwrite``."""
    fresh = {"format": RESULTS_FORMAT, "settings": dict(settings), "runs": {}}
    if overwrite or not path.exists():
        return fresh
    try:
        existing = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileExistsError(f"{path} exists but is not a readable results file ({err}); pass --overwrite") from None
    if not isinstance(existing, dict) or existing.get("format") != RESULTS_FORMAT or "runs" not in existing:
        raise FileExistsError(f"{path} exists but is not a sweep results file; pass --overwrite or choose --out")
    old = existing.get("settings", {})
    if old != settings:
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        shown = "; ".join(f"{k}: {old.get(k)!r} in the file, {settings.get(k)!r} now" for k in diff[:4])
        raise FileExistsError(
            f"{path} holds {len(existing['runs'])} runs made with other settings ({shown}); "
            "pass --overwrite to replace it or --out to write elsewhere"
        )
    return existing


def _write(path: Path, results: dict[str, Any], summarise: Callable | None) -> None:
    if summarise is not None:
        results.update(summarise(results))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)  # atomic: an interrupt never leaves half a file


def _log_path(work: Path, spec: RunSpec) -> Path:
    return work / "logs" / f"{spec.key.replace('/', '-')}.log"


def _run_logged(
    spec: RunSpec, data: ShapesData, work_dir: str, options: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`train_run` with its output (progress bars, Trainer logs) in the run's log file.

    Returns ``(record, None)`` or ``(None, traceback)``: one failed run must not stop the others.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    log = _log_path(Path(work_dir), spec)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        try:
            return train_run(spec, data, work_dir, **options), None
        except Exception:  # reported by the parent, with the log path
            trace = traceback.format_exc()
            print(trace, file=stream)
            return None, trace


# ---------------------------------------------------------------------------------------------------
# Summaries and plots
# ---------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}`` over the values that are not ``None``; std is the sample std (n ≥ 2)."""
    present = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) >= 2 else None,
        "n": len(present),
    }


def plot_curves(
    series: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    metrics: Sequence[tuple[str, str]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Metric-vs-step panels: per label the seed mean as a line, the seeds' min–max as a band.

    Args:
        series: ``label -> curves`` (one curve per seed: a list of points with ``step`` and metric keys).
        metrics: ``(key, panel title)`` per panel.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on the machines these run on
    import matplotlib.pyplot as plt

    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax, (key, name) in zip(axes.flat, metrics):
        for label, curves in series.items():
            by_step: dict[int, list[float]] = {}
            for curve in curves:
                for point in curve:
                    if point.get(key) is not None:
                        by_step.setdefault(int(point["step"]), []).append(float(point[key]))
            if not by_step:
                continue
            steps = sorted(by_step)
            mean = [statistics.fmean(by_step[s]) for s in steps]
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{label} (n={len(curves)})")
            low, high = [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""The evaluation driver: one report over several tasks from the registered metric plugins.

``evaluate(predictions, samples, tasks)`` pairs every prediction with its sample (position in the
lists, or the sample id when ``predictions`` is a mapping), feeds each pair to the metric plugin of
every requested task that scores that kind of sample (``Metric.sample_tasks``, normally the sample's
``task``), and merges the results::

    {"rec_acc50": 0.81, "res_ciou": 0.72, "res_giou": 0.70,
     "counts": {"rec": {"samples": 5000, "parsed_objects": 5012, "unparseable": 3, ...}, "res": {...}}}

Top-level keys are each metric's ``headline`` keys; everything else a metric computes (counts,
mAP50, unmapped labels, ...) goes under ``counts[task]``. ``protocol="reference"`` scores each task
with its metric's reference-protocol variant instead (the reference's evaluation scripts, keys
suffixed ``_reference``, counts under ``counts["<task>_reference"]``), ``"both"`` with both; a task
without a variant (RIC: the reference releases no script) keeps its standard numbers and the report's
``protocol_notes`` say so. :func:`evaluate_splits` scores each ``meta["split"]`` of the samples on its
own and averages the split figures. Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..plugins import get_plugin

__all__ = ["PROTOCOLS", "evaluate", "evaluate_splits", "pair_predictions"]

Protocol = Literal["standard", "reference", "both"]
PROTOCOLS: tuple[str, ...] = ("standard", "reference", "both")


def pair_predictions(
    predictions: Sequence[Any] | Mapping[str | tuple[str, str], Any], samples: Sequence[Any]
) -> list[tuple[Any, Any]]:
    """``[(sample, prediction)]`` in sample order.

    A sequence of predictions is positional (``predictions[i]`` answers ``samples[i]``, as
    ``PaDTModel.predict`` returns them). A mapping is keyed by ``(task, sample id)`` or by sample id
    alone; readers give the ``rec`` and ``res`` samples of one referring sentence the same id and
    prompt, so one prediction keyed by id answers both. Either way the pairing never looks at the
    completion text. Raises ``ValueError`` on a length mismatch, a repeated ``(task, id)``, or a
    sample with no prediction in the mapping.
    """
    keys = [(str(s.task), str(s.id)) for s in samples]
    duplicates = sorted(f"{task}:{sid}" for (task, sid), n in Counter(keys).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate samples (task:id): {', '.join(duplicates[:5])}; ids must be unique per task")
    if isinstance(predictions, Mapping):
        keyed = {(tuple(map(str, k)) if isinstance(k, tuple) else str(k)): v for k, v in predictions.items()}
        pairs, missing = [], []
        for sample, key in zip(samples, keys):
            prediction = keyed.get(key, keyed.get(key[1]))
            if prediction is None:
                missing.append(f"{key[0]}:{key[1]}")
            pairs.append((sample, prediction))
        if missing:
            raise ValueError(f"{len(missing)} samples have no prediction (first: {', '.join(missing[:5])})")
        return pairs
    predictions = list(predictions)
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples; pass one per sample")
    return list(zip(samples, predictions))


def evaluate(
    predictions: Sequence[Any] | Mapping[str | tuple[str, str], Any],
    samples: Sequence[Any],
    tasks: Sequence[str],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    protocol: Protocol = "standard",
) -> dict[str, Any]:
    """Score ``predictions`` against ``samples`` for each of ``tasks``.

    Args:
        predictions: one ``Prediction`` per sample, in sample order, or a mapping keyed by
            ``(task, sample id)`` or sample id (see :func:`pair_predictions`).
        samples: the evaluated samples (``padt_core.data.sample.Sample``); samples whose task no
            requested metric scores are ignored.
        tasks: metric plugin names, e.g. ``["rec", "res"]``; each is looked up with
            ``get_plugin("metrics", task)`` (a miss lists the registered metrics).
        configs: optional metric options per task, e.g. ``{"ovd": {"annotation_file": "..."}}``,
            validated by the metric's ``Config`` (unknown keys are an error); the reference
            variant of a task gets the same options.
        protocol: ``standard`` (padt's definitions), ``reference`` (the reference's evaluation
            scripts, keys ``<key>_reference``) or ``both``.

    Returns:
        ``{headline key: value, ..., "counts": {task: {other keys of that metric}}}``; with a
        protocol other than ``standard`` also ``protocol`` and, when a task has no reference
        variant, ``protocol_notes`` (task → why).

    Example:
        >>> report = evaluate(predictions, samples, ["rec"], protocol="both")  # doctest: +SKIP
        >>> report["rec_acc50"], report["rec_acc50_reference"]  # doctest: +SKIP
        (0.5, 1.0)

    Raises:
        ValueError: empty or repeated ``tasks``; predictions that do not pair with the samples
            (including a repeated ``(task, sample id)``); a requested task that no sample belongs to
            (its metric would be undefined).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks to evaluate; name at least one metric (rec, res, ovd, ric)")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks repeated: {tasks}")
    configs = dict(configs or {})
    unknown = sorted(set(configs) - set(tasks))
    if unknown:
        raise ValueError(f"configs given for tasks that are not evaluated: {unknown} (tasks: {tasks})")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    metrics: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for task in tasks:
        cls = get_plugin("metrics", task)
        options = dict(configs.get(task, {}))
        variant = cls.reference_variant() if protocol != "standard" else None
        if protocol != "reference" or variant is None:
            metrics[task] = cls(options)
        if variant is not None:
            metrics[f"{task}_reference"] = variant(options)
        elif protocol != "standard":
            notes[task] = cls.reference_note
    pairs = pair_predictions(predictions, samples)
    for sample, prediction in pairs:
        for metric in metrics.values():
            if sample.task in metric.sample_tasks:
                metric.update(sample, prediction)

    report: dict[str, Any] = {}
    counts: dict[str, dict] = {}
    for task, metric in metrics.items():
        if not metric.num_samples:
            present = sorted({str(s.task) for s in samples})
            raise ValueError(
                f"no sample to score for task {task!r} (the metric reads samples of task "
                f"{' or '.join(metric.sample_tasks)}; the samples have tasks: {', '.join(present) or 'none'})"
            )
        result = metric.compute()
        report.update({key: result[key] for key in metric.headline})
        counts[task] = {key: value for key, value in result.items() if key not in metric.headline}
    if protocol != "standard":  # a standard report keeps exactly its metrics' keys
        report["protocol"] = protocol
    if notes:
        report["protocol_notes"] = notes
    report["counts"] = counts
    return report


def evaluate_splits(
    predictions: Sequence[Any] | Mapping[str | tuple[str, str], Any],
    samples: Sequence[Any],
    tasks: Sequence[str],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    protocol: Protocol = "standard",
) -> dict[str, Any]:
    """:func:`evaluate` per ``sample.meta["split"]`` and the unweighted mean of the split figures.

    With samples of one split (or none naming a split) this is :func:`evaluate`. Otherwise each split
    is scored on its own (the reference keys by image and sentence within a split, so pooling splits
    would mix them) and the report holds, at its top level, each headline key's mean over the splits
    that have it (an "Avg." column of per-split figures: every split weighs the same, whatever its
    size); ``splits`` maps split → its headline numbers; ``counts`` holds ``"<split>/<task>"``.

    Args:
        predictions, samples, tasks, configs, protocol: as for :func:`evaluate`.

    Example:
        >>> report = evaluate_splits(predictions, samples, ["rec"])  # doctest: +SKIP
        >>> report["splits"]["refcoco_val"]["rec_acc50"], report["rec_acc50"]  # doctest: +SKIP
    """
    pairs = pair_predictions(predictions, samples)
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for sample, prediction in pairs:
        split = (getattr(sample, "meta", None) or {}).get("split")
        groups.setdefault("" if split is None else str(split), []).append((sample, prediction))
    if len(groups) <= 1:
        return evaluate([p for _, p in pairs], [s for s, _ in pairs], tasks, configs, protocol)
    if "" in groups:
        raise ValueError(
            f"{len(groups[''])} samples name no meta['split'] while others do ({', '.join(sorted(groups)[1:4])}, ...); "
            "evaluate splits separately or give every sample its split"
        )
    per_split = {}
    for split, group in groups.items():
        tasks_here = [t for t in tasks if any(s.task in get_plugin("metrics", t).sample_tasks for s, _ in group)]
        options = {t: c for t, c in (configs or {}).items() if t in tasks_here}
        per_split[split] = evaluate([p for _, p in group], [s for s, _ in group], tasks_here, options, protocol)
    report: dict[str, Any] = {}
    headline = [k for r in per_split.values() for k in r if k not in ("counts", "protocol", "protocol_notes")]
    for key in dict.fromkeys(headline):
        values = [r[key] for r in per_split.values() if key in r]
        report[key] = math.fsum(values) / len(values) if all(v == v for v in values) else math.nan
    if protocol != "standard":
        report["protocol"] = protocol
    notes = {t: n for r in per_split.values() for t, n in r.get("protocol_notes", {}).items()}
    if notes:
        report["protocol_notes"] = notes
    report["average"] = f"unweighted mean over {len(per_split)} splits"
    report["splits"] = {
        split: {k: v for k, v in r.items() if k not in ("counts", "protocol", "protocol_notes")}
        for split, r in per_split.items()
    }
    report["counts"] = {f"{split}/{task}": c for split, r in per_split.items() for task, c in r["counts"].items()}
    return report

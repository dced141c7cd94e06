"""The evaluation driver: one report over several tasks from the registered metric plugins.

``evaluate(predictions, samples, tasks)`` pairs every prediction with its sample (position in the
lists, or the sample id when ``predictions`` is a mapping), feeds each pair to the metric plugin of
every requested task that scores that kind of sample (``Metric.sample_tasks``, normally the sample's
``task``), and merges the results::

    {"rec_acc50": 0.81, "res_ciou": 0.72, "res_giou": 0.70,
     "counts": {"rec": {"samples": 5000, "parsed_objects": 5012, "unparseable": 3, ...}, "res": {...}}}

Top-level keys are each metric's ``headline`` keys; everything else a metric computes (counts,
mAP50, unmapped labels, ...) goes under ``counts[task]``. Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..plugins import get_plugin

__all__ = ["evaluate", "pair_predictions"]


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
            validated by the metric's ``Config`` (unknown keys are an error).

    Returns:
        ``{headline key: value, ..., "counts": {task: {other keys of that metric}}}``.

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
    metrics = {task: get_plugin("metrics", task)(dict(configs.get(task, {}))) for task in tasks}
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
    report["counts"] = counts
    return report

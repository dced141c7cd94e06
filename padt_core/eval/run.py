"""``padt eval``: run a model over evaluation samples and score them with the metric plugins."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..data.image import ImageError, check_image
from ..data.reader import DataWarning, build_dataset
from ..data.templates import TaskTemplates
from ..plugins import get_plugin
from ..recipe import RecipeError, load_recipe
from .evaluate import Protocol, evaluate_splits

__all__ = ["drop_unreadable_images", "evaluate_model", "load_eval_samples", "predict_samples"]


def load_eval_samples(source: str | os.PathLike | Sequence[Any], templates: TaskTemplates | None = None) -> list:
    """Samples from a recipe (its ``data.val``), a YAML dataset section, or a list of validated sections."""
    return _read_sections(*_eval_sections(source, templates))[0]


def _eval_sections(
    source: str | os.PathLike | Sequence[Any], templates: TaskTemplates | None
) -> tuple[list, TaskTemplates | None]:
    """The dataset sections ``source`` names, and the templates to read them with."""
    if not isinstance(source, (str, os.PathLike)):
        return list(source), templates
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation data not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if isinstance(raw, dict) and ("backbone" in raw or "extends" in raw or "data" in raw):
        recipe = load_recipe(path)
        if not recipe.data.val:
            raise RecipeError(f"{path}: recipe has no data.val datasets to evaluate on")
        return list(recipe.data.val), templates or recipe.data.templates
    if isinstance(raw, dict) and "name" in raw:
        return [get_plugin("datasets", raw["name"]).Config.model_validate(raw)], templates
    if isinstance(raw, list):
        return [get_plugin("datasets", s["name"]).Config.model_validate(s) for s in raw], templates
    raise RecipeError(f"{path}: expected a recipe with data.val, or a dataset section {{name: ..., ...}}")


def _read_sections(sections: Sequence[Any], templates: TaskTemplates | None) -> tuple[list, Counter]:
    """Every section's samples, and the records its readers skipped, by reason."""
    samples, skipped = [], Counter()
    for section in sections:
        reader = build_dataset(section, templates=templates)
        samples += list(reader.samples())  # reading fills reader.skipped
        skipped.update(getattr(reader, "skipped", {}))
    return samples, skipped


def drop_unreadable_images(samples: Sequence[Any], skipped: Counter) -> list:
    """``samples`` without those whose image the loader refuses (truncated, missing, too large, ...),
    each counted in ``skipped`` by reason with one ``DataWarning``: one bad file costs its samples, not
    the evaluation. Every distinct image is decoded once here (readers' default ``check_images: header``
    reads only headers)."""
    bad: dict[str, ImageError] = {}
    for path in dict.fromkeys(p for s in samples for p in _paths(s)):
        try:
            check_image(path, decode=True)
        except ImageError as err:
            bad[path] = err
    kept = []
    for sample in samples:
        err = next((bad[p] for p in _paths(sample) if p in bad), None)
        if err is None:
            kept.append(sample)
            continue
        skipped[err.reason] += 1
        warnings.warn(f"eval: skipping sample {sample.id}: {err}", DataWarning, stacklevel=2)
    return kept


def _paths(sample: Any) -> list[str]:
    """Every image path of a sample (several for a multi-image sample); none for a text-only one."""
    paths = getattr(sample, "images", None) or ([sample.image] if sample.image is not None else [])
    return [str(p) for p in paths]


def predict_samples(model, samples: Sequence[Any], batch_size: int = 16, **generation_kwargs: Any) -> list:
    """One prediction per sample; samples that share image and prompt (REC and RES) share one run."""
    # A multi-image sample's key is its tuple of paths; predict takes it as a list (one conversation).
    keys = [(tuple(_paths(s)) if getattr(s, "images", None) else str(s.image), s.prompt) for s in samples]
    unique = list(dict.fromkeys(keys))
    images = [list(k[0]) if isinstance(k[0], tuple) else k[0] for k in unique]
    preds = model.predict(images, [k[1] for k in unique], batch_size=batch_size, **generation_kwargs)
    by_key = dict(zip(unique, preds))
    return [by_key[k] for k in keys]


def evaluate_model(
    model,
    data: str | os.PathLike | Sequence[Any],
    tasks: Sequence[str] | None = None,
    batch_size: int = 16,
    max_samples: int | None = None,
    protocol: Protocol = "standard",
    **generation_kwargs: Any,
) -> tuple[dict[str, Any], list, list]:
    """Predict and score (``protocol``: see :func:`evaluate`; samples of several ``meta["split"]``
    are scored per split, :func:`evaluate_splits`); returns ``(report, predictions, samples)``."""
    samples, skipped = _read_sections(*_eval_sections(data, model.recipe.data.templates))
    if tasks:
        samples = [s for s in samples if s.task in tasks]
    if max_samples is not None:  # per task (and split), so every requested metric gets samples
        seen: dict[tuple, int] = {}
        capped = []
        for s in samples:
            group = (s.task, (s.meta or {}).get("split"))
            seen[group] = seen.get(group, 0) + 1
            if seen[group] <= max_samples:
                capped.append(s)
        samples = capped
    samples = drop_unreadable_images(samples, skipped)
    if not samples:
        raise ValueError(f"no evaluation samples for tasks {list(tasks or [])} in {data} (skipped: {dict(skipped)})")
    tasks = list(tasks) if tasks else sorted({s.task for s in samples})
    predictions = predict_samples(model, samples, batch_size=batch_size, **generation_kwargs)
    report = evaluate_splits(predictions, samples, tasks, protocol=protocol)
    # Generated VRT runs that crossed two images of a sample were rejected by the parser (docs/multi-image.md).
    crossing = sum("crosses images" in line for p in predictions for line in getattr(p, "skipped", []))
    if crossing:
        skipped["vrt_run_crosses_images"] += crossing
    report["skipped"] = dict(sorted(skipped.items()))
    return report, predictions, samples

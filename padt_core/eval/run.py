"""``padt eval``: run a model over evaluation samples and score them with the metric plugins."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..data.reader import build_dataset
from ..data.templates import TaskTemplates
from ..plugins import get_plugin
from ..recipe import RecipeError, load_recipe
from .evaluate import evaluate

__all__ = ["evaluate_model", "load_eval_samples", "predict_samples"]


def load_eval_samples(source: str | os.PathLike | Sequence[Any], templates: TaskTemplates | None = None) -> list:
    """Samples from a recipe (its ``data.val``), a YAML dataset section, or a list of validated sections."""
    if not isinstance(source, (str, os.PathLike)):
        sections = list(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation data not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if isinstance(raw, dict) and ("backbone" in raw or "extends" in raw or "data" in raw):
            recipe = load_recipe(path)
            sections, templates = recipe.data.val, templates or recipe.data.templates
            if not sections:
                raise RecipeError(f"{path}: recipe has no data.val datasets to evaluate on")
        elif isinstance(raw, dict) and "name" in raw:
            sections = [get_plugin("datasets", raw["name"]).Config.model_validate(raw)]
        elif isinstance(raw, list):
            sections = [get_plugin("datasets", s["name"]).Config.model_validate(s) for s in raw]
        else:
            raise RecipeError(f"{path}: expected a recipe with data.val, or a dataset section {{name: ..., ...}}")
    samples = []
    for section in sections:
        samples += list(build_dataset(section, templates=templates).samples())
    return samples


def predict_samples(model, samples: Sequence[Any], batch_size: int = 16, **generation_kwargs: Any) -> list:
    """One prediction per sample; samples that share image and prompt (REC and RES) share one run."""
    keys = [(str(s.image), s.prompt) for s in samples]
    unique = list(dict.fromkeys(keys))
    preds = model.predict([k[0] for k in unique], [k[1] for k in unique], batch_size=batch_size, **generation_kwargs)
    by_key = dict(zip(unique, preds))
    return [by_key[k] for k in keys]


def evaluate_model(
    model,
    data: str | os.PathLike | Sequence[Any],
    tasks: Sequence[str] | None = None,
    batch_size: int = 16,
    max_samples: int | None = None,
    **generation_kwargs: Any,
) -> tuple[dict[str, Any], list, list]:
    """Predict and score; returns ``(report, predictions, samples)``."""
    samples = load_eval_samples(data, templates=model.recipe.data.templates)
    if tasks:
        samples = [s for s in samples if s.task in tasks]
    if max_samples is not None:  # per task, so every requested metric gets samples
        seen: dict[str, int] = {}
        capped = []
        for s in samples:
            seen[s.task] = seen.get(s.task, 0) + 1
            if seen[s.task] <= max_samples:
                capped.append(s)
        samples = capped
    if not samples:
        raise ValueError(f"no evaluation samples for tasks {list(tasks or [])} in {data}")
    tasks = list(tasks) if tasks else sorted({s.task for s in samples})
    predictions = predict_samples(model, samples, batch_size=batch_size, **generation_kwargs)
    return evaluate(predictions, samples, tasks), predictions, samples

"""padt: Patch-as-Decodable-Token for multimodal LLMs.

>>> import padt_core
>>> model = padt_core.build(recipe="tiny_qwen")
>>> model.predict(image, "Please describe this image.")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .features import VisualFeatures
from .model import PaDTModel, PredictedObject, Prediction
from .plugins import hookimpl, list_plugins, register_plugin
from .recipe import Recipe, RecipeError, load_recipe, parse_overrides

__all__ = [
    "PaDTModel",
    "PredictedObject",
    "Prediction",
    "Recipe",
    "RecipeError",
    "VisualFeatures",
    "build",
    "hookimpl",
    "list_plugins",
    "load",
    "load_recipe",
    "register_plugin",
]

__version__ = "0.1.0"


def build(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    meta: bool = False,
    **dotted: Any,
) -> PaDTModel:
    """Build a model from a recipe path, a bundled recipe name, a mapping or a ``Recipe``.

    Overrides are dotted keys, given as a mapping, as ``["key.sub=value"]`` strings, or as keyword
    arguments with ``__`` for dots: ``build("tiny_qwen", {"vrt.rank": 8})`` or ``build("tiny_qwen", vrt__rank=8)``.
    ``meta=True`` builds the architecture on the meta device without loading any weights.
    """
    merged = parse_overrides(overrides)
    merged.update({k.replace("__", "."): v for k, v in dotted.items()})
    return PaDTModel.from_recipe(load_recipe(recipe, merged or None), meta=meta)


def load(directory: str | os.PathLike, map_location: str = "cpu") -> PaDTModel:
    """Load a model saved with ``PaDTModel.save_pretrained``."""
    return PaDTModel.from_pretrained(Path(directory), map_location=map_location)

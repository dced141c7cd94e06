"""padt: Patch-as-Decodable-Token for multimodal LLMs.

>>> import padt_core
>>> model = padt_core.build(recipe="tiny_qwen")
>>> model.predict(image, "Please describe this image.")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .lazy import lazy_attributes

if TYPE_CHECKING:
    from .features import VisualFeatures
    from .model import PaDTModel, PredictedObject, Prediction
    from .plugins import hookimpl, list_plugins, register_plugin
    from .recipe import Recipe, RecipeError, load_recipe

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

# The public names load on first use (PEP 562), so that `import padt_core` (and `padt --help`, and a
# plugin's `from padt_core.plugins import hookimpl`) does not import torch and transformers.
_LAZY: dict[str, str] = {
    "VisualFeatures": "features",
    "PaDTModel": "model",
    "PredictedObject": "model",
    "Prediction": "model",
    "hookimpl": "plugins",
    "list_plugins": "plugins",
    "register_plugin": "plugins",
    "Recipe": "recipe",
    "RecipeError": "recipe",
    "load_recipe": "recipe",
    "parse_overrides": "recipe",
}

__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def build(
    recipe: str | os.PathLike | Mapping[str, Any] | Recipe,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    weights: Literal["pretrained", "meta"] = "pretrained",
    meta: bool = False,
    **dotted: Any,
) -> PaDTModel:
    """Build a model from a recipe path, a bundled recipe name, a mapping or a ``Recipe``.

    Overrides are dotted keys, given as a mapping, as ``["key.sub=value"]`` strings, or as keyword
    arguments with ``__`` for dots: ``build("tiny_qwen", {"vrt.rank": 8})`` or ``build("tiny_qwen", vrt__rank=8)``.

    ``weights="pretrained"`` loads what the recipe names (``backbone.pretrained``, or a
    ``released_checkpoint`` converted on the fly); ``weights="meta"`` (or ``meta=True``) builds the
    architecture on the meta device and downloads nothing: for structure and parameter counts
    (``padt_core.sizes.parameter_counts``).
    """
    from .model import PaDTModel
    from .recipe import load_recipe, parse_overrides

    if weights not in ("pretrained", "meta"):
        raise ValueError(f"weights must be 'pretrained' or 'meta', got {weights!r}")
    merged = parse_overrides(overrides)
    merged.update({k.replace("__", "."): v for k, v in dotted.items()})
    resolved = load_recipe(recipe, merged or None)
    if meta or weights == "meta":
        return PaDTModel.from_recipe(resolved, meta=True)
    if resolved.released_checkpoint is not None:
        from .convert import load_released

        return load_released(resolved.released_checkpoint, recipe=resolved)
    return PaDTModel.from_recipe(resolved)


def load(source: str | os.PathLike, map_location: str = "cpu", *, revision: str | None = None) -> PaDTModel:
    """Load a padt model directory (``PaDTModel.save_pretrained``, ``padt convert``) or a released checkpoint.

    A released PaDT checkpoint (a hub id such as ``"PaDT-MLLM/PaDT_Pro_3B"`` or a directory in the
    published layout, reference §10) is converted on the fly with the ``padt_pro_3b_released`` settings
    (``decoder.layout: reference``); ``padt convert`` does it once and keeps the result.
    """
    from .convert import is_released_checkpoint, load_released, looks_like_hub_id
    from .model import META_NAME, PaDTModel

    path = Path(source)
    is_padt_dir = (path / META_NAME).is_file()
    if not is_padt_dir and (looks_like_hub_id(source) or is_released_checkpoint(path)):
        return load_released(source, revision=revision, map_location=map_location)
    return PaDTModel.from_pretrained(path, map_location=map_location)

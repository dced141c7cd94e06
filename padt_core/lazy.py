"""Package attributes that import their module on first use (PEP 562), in one place.

``import padt_core`` and the packages the command line imports at every start (the dataset plugins,
the shapes package) name their public classes without importing torch, transformers or pycocotools:
the module that defines a name is imported the first time the name is looked up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attribute]`` (a submodule of ``package``) on first use.

    Args:
        package: the ``__name__`` of the package whose attributes these are.
        names: attribute -> submodule that defines it, relative to ``package`` (``"model"``).

    Example::

        # in a package's __init__.py
        __getattr__ = lazy_attributes(__name__, {"PaDTModel": "model"})
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{names[name]}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups find it without this function
        return value

    return __getattr__

"""Dataset plugins: on-disk formats → :class:`padt_core.data.Sample` lists.

``coco`` (OVD), ``refcoco`` (REC/RES), ``ric`` (captions with object markers), ``padt_json`` (the
published PaDT files) and ``shapes`` (synthetic, generated on first use and read back through the
three real readers). Registered through the ``padt`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from padt_core.lazy import lazy_attributes
from padt_core.plugins import hookimpl

if TYPE_CHECKING:
    from .coco import CocoDataset, CocoDatasetConfig
    from .padt_json import PaDTJsonDataset, PaDTJsonDatasetConfig
    from .refcoco import RefCocoDataset, RefCocoDatasetConfig
    from .ric import RicDataset, RicDatasetConfig
    from .shapes import ShapesDataset, ShapesDatasetConfig

__all__ = [
    "CocoDataset",
    "CocoDatasetConfig",
    "PaDTJsonDataset",
    "PaDTJsonDatasetConfig",
    "RefCocoDataset",
    "RefCocoDatasetConfig",
    "RicDataset",
    "RicDatasetConfig",
    "ShapesDataset",
    "ShapesDatasetConfig",
]


# The readers load on first use (PEP 562): `padt data shapes` imports padt_plugins.datasets.shapes.cli
# whenever the command line starts, which must not pull in torch through every reader.
_LAZY: dict[str, str] = {
    "CocoDataset": "coco",
    "CocoDatasetConfig": "coco",
    "PaDTJsonDataset": "padt_json",
    "PaDTJsonDatasetConfig": "padt_json",
    "RefCocoDataset": "refcoco",
    "RefCocoDatasetConfig": "refcoco",
    "RicDataset": "ric",
    "RicDatasetConfig": "ric",
    "ShapesDataset": "shapes",
    "ShapesDatasetConfig": "shapes",
}

__getattr__ = lazy_attributes(__name__, _LAZY)


@hookimpl
def padt_datasets() -> list[type]:
    from .coco import CocoDataset
    from .padt_json import PaDTJsonDataset
    from .refcoco import RefCocoDataset
    from .ric import RicDataset
    from .shapes import ShapesDataset

    return [CocoDataset, RefCocoDataset, RicDataset, PaDTJsonDataset, ShapesDataset]

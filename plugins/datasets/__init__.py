"""Dataset plugins: on-disk formats → :class:`padt_core.data.Sample` lists.

``coco`` (OVD), ``refcoco`` (REC/RES), ``ric`` (captions with object markers), ``padt_json`` (the
published PaDT files) and ``shapes`` (synthetic, generated on first use and read back through the
three real readers). Registered through the ``padt`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from padt_core.plugins import hookimpl

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


@hookimpl
def padt_datasets() -> list[type]:
    return [CocoDataset, RefCocoDataset, RicDataset, PaDTJsonDataset, ShapesDataset]

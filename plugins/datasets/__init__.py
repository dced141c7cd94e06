"""Dataset plugins: on-disk formats → :class:`padt_core.data.Sample` lists.

``coco`` (OVD), ``refcoco`` (REC/RES), ``vlm_r1`` (VLM-R1's RefCOCO split files, REC/RES), ``ric``
(captions with object markers), ``padt_json`` (the published PaDT files), ``shapes`` (synthetic,
generated on first use and read back through the three real readers) and ``shapes_pairs`` (two shapes
images per sample, ``docs/multi-image.md``). Registered through the
``padt`` entry-point group like any third-party plugin.
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
    from .vlm_r1 import VlmR1Dataset, VlmR1DatasetConfig

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
    "VlmR1Dataset",
    "VlmR1DatasetConfig",
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
    "VlmR1Dataset": "vlm_r1",
    "VlmR1DatasetConfig": "vlm_r1",
}

__getattr__ = lazy_attributes(__name__, _LAZY)


@hookimpl
def padt_datasets() -> list[type]:
    from .coco import CocoDataset
    from .padt_json import PaDTJsonDataset
    from .refcoco import RefCocoDataset
    from .ric import RicDataset
    from .shapes import ShapesDataset
    from .shapes.pairs import ShapesPairsDataset
    from .vlm_r1 import VlmR1Dataset

    return [CocoDataset, RefCocoDataset, RicDataset, PaDTJsonDataset, ShapesDataset, ShapesPairsDataset, VlmR1Dataset]

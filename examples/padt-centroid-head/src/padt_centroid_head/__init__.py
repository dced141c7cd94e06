"""padt plugin: a ``centroid`` decoder head (object centre by soft-argmax over the image memory) and the
``shapes_centroid`` dataset it learns from (synthetic shapes annotated with their centre of mass)."""

from __future__ import annotations

from padt_core.plugins import hookimpl

from .dataset import CentroidShapesDataset, CentroidShapesDatasetConfig, mask_centroid
from .head import CentroidHead, CentroidHeadConfig

__all__ = [
    "CentroidHead",
    "CentroidHeadConfig",
    "CentroidShapesDataset",
    "CentroidShapesDatasetConfig",
    "mask_centroid",
]


@hookimpl
def padt_heads() -> list[type]:
    return [CentroidHead]


@hookimpl
def padt_datasets() -> list[type]:
    return [CentroidShapesDataset]

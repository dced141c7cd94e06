"""The ``shapes_centroid`` dataset: padt's synthetic shapes, each object annotated with its centre of mass.

The head learns from this annotation, not from the box: for a triangle or a star the centre of mass
of the mask is not the centre of the box. The plugin wraps the built-in ``shapes`` reader and adds
``ObjectAnn.extra["centroid"] = [x, y]`` (normalised by the image width/height, like boxes), which
the collator hands to the decoder as ``ObjectTargets.extras["centroid"]``. Objects without a mask get
no centroid; the centroid head leaves them out of its loss (counted as ``skipped_centroid``).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
from padt_plugins.datasets.shapes import ShapesDataset, ShapesDatasetConfig

from padt_core.data.sample import ObjectAnn, Sample, rle_decode
from padt_core.plugins import PluginConfig

__all__ = ["CentroidShapesDataset", "CentroidShapesDatasetConfig", "mask_centroid"]


class CentroidShapesDatasetConfig(ShapesDatasetConfig):
    """Recipe section ``{name: shapes_centroid, ...}``: every option of ``shapes``."""

    name: Literal["shapes_centroid"] = "shapes_centroid"


class CentroidShapesDataset(ShapesDataset):
    """``shapes`` samples whose objects carry ``extra["centroid"]``, the centre of mass of their mask."""

    name: ClassVar[str] = "shapes_centroid"
    Config: ClassVar[type[PluginConfig]] = CentroidShapesDatasetConfig

    def _make(self, record, index: int) -> Sample:
        sample = super()._make(record, index)
        return dataclasses.replace(sample, objects=[_with_centroid(o) for o in sample.objects])


def _with_centroid(obj: ObjectAnn) -> ObjectAnn:
    if obj.mask is None:
        return obj
    centroid = mask_centroid(obj.mask["counts"], tuple(obj.mask["size"]))
    return dataclasses.replace(obj, extra={**obj.extra, "centroid": list(centroid)})


@lru_cache(maxsize=65536)  # samples are remade every epoch; an object's mask never changes
def mask_centroid(counts: str, size: tuple[int, int]) -> tuple[float, float]:
    """``(x, y)`` of the centre of mass of a COCO RLE mask, normalised by its width and height.

    Pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so its centre is ``(c + 0.5, r + 0.5)``.
    """
    mask = rle_decode({"size": list(size), "counts": counts})
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError(f"empty mask of size {size}: it has no centre of mass")
    height, width = size
    return float((cols.mean() + 0.5) / width), float((rows.mean() + 0.5) / height)

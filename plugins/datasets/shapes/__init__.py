"""The synthetic shapes dataset: its generator, its language and its ``shapes`` reader plugin.

- :mod:`.generate` writes the dataset (COCO / RefCOCO / RIC layouts, deterministic by seed);
- :mod:`.text` is the shapes world's vocabulary, referring expressions and captions;
- :mod:`.dataset` is the ``shapes`` recipe section, which generates on first use and reads back
  through the real ``coco`` / ``refcoco`` / ``ric`` readers.

None of it is core: ``padt_core`` only knows the generic :class:`~padt_core.data.Sample` and
:class:`~padt_core.data.DatasetReader` these build on.
"""

from __future__ import annotations

from .dataset import ShapesDataset, ShapesDatasetConfig
from .generate import MANIFEST, ShapesMismatchError, ShapesParams, ensure_shapes, write_shapes

__all__ = [
    "MANIFEST",
    "ShapesDataset",
    "ShapesDatasetConfig",
    "ShapesMismatchError",
    "ShapesParams",
    "ensure_shapes",
    "write_shapes",
]

"""The synthetic shapes dataset: its generator, its language and its ``shapes`` reader plugin.

- :mod:`.generate` writes the dataset (COCO / RefCOCO / RIC layouts, deterministic by seed);
- :mod:`.text` is the shapes world's vocabulary, referring expressions and captions;
- :mod:`.dataset` is the ``shapes`` recipe section, which generates on first use and reads back
  through the real ``coco`` / ``refcoco`` / ``ric`` readers.

None of it is core: ``padt_core`` only knows the generic :class:`~padt_core.data.Sample` and
:class:`~padt_core.data.DatasetReader` these build on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from padt_core.lazy import lazy_attributes

if TYPE_CHECKING:
    from .dataset import ShapesDataset, ShapesDatasetConfig
    from .generate import MANIFEST, ShapesMismatchError, ShapesParams, ensure_shapes, write_shapes
    from .pairs import ShapesPairsDataset

# Loaded on first use (PEP 562): the command line imports `.cli` at every start, and the reader and the
# generator need numpy, pycocotools and (through the real readers) torch.
_LAZY: dict[str, str] = {
    "ShapesDataset": "dataset",
    "ShapesDatasetConfig": "dataset",
    "ShapesPairsDataset": "pairs",
    **dict.fromkeys(("MANIFEST", "ShapesMismatchError", "ShapesParams", "ensure_shapes", "write_shapes"), "generate"),
}

__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "MANIFEST",
    "ShapesDataset",
    "ShapesDatasetConfig",
    "ShapesMismatchError",
    "ShapesPairsDataset",
    "ShapesParams",
    "ensure_shapes",
    "write_shapes",
]

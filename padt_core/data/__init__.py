"""Training/evaluation data: the sample model, task templates, reader base class, synthetic shapes.

Dataset *formats* (COCO, RefCOCO, RIC, PaDT json, shapes) are plugins in ``padt_plugins.datasets``;
this package holds what they share.
"""

from __future__ import annotations

from .reader import DatasetReader, DataWarning, build_dataset
from .sample import (
    MaskSizeError,
    ObjectAnn,
    Sample,
    cell_coverage,
    decode_mask,
    fill_placeholders,
    object_cells,
    placeholder,
)
from .shapes import ShapesMismatchError, ShapesParams, ensure_shapes, write_shapes
from .templates import (
    TaskTemplates,
    drop_objects,
    ovd_answer,
    ovd_prompt,
    rec_answer,
    rec_prompt,
    ric_answer,
    ric_prompt,
)

__all__ = [
    "DataWarning",
    "DatasetReader",
    "MaskSizeError",
    "ObjectAnn",
    "Sample",
    "ShapesMismatchError",
    "ShapesParams",
    "TaskTemplates",
    "build_dataset",
    "cell_coverage",
    "decode_mask",
    "drop_objects",
    "ensure_shapes",
    "fill_placeholders",
    "object_cells",
    "ovd_answer",
    "ovd_prompt",
    "placeholder",
    "rec_answer",
    "rec_prompt",
    "ric_answer",
    "ric_prompt",
    "write_shapes",
]

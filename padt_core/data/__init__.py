"""Training/evaluation data: the sample model, task templates, reader base class.

Dataset *formats* (COCO, RefCOCO, RIC, PaDT json, shapes) are plugins in ``padt_plugins.datasets``,
the synthetic shapes generator among them (``padt_plugins.datasets.shapes``); this package holds
what they share.
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
    "TaskTemplates",
    "build_dataset",
    "cell_coverage",
    "decode_mask",
    "drop_objects",
    "fill_placeholders",
    "object_cells",
    "ovd_answer",
    "ovd_prompt",
    "placeholder",
    "rec_answer",
    "rec_prompt",
    "ric_answer",
    "ric_prompt",
]

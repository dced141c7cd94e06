"""Training/evaluation data: the sample model, task templates, reader base class.

Dataset *formats* (COCO, RefCOCO, RIC, PaDT json, shapes) are plugins in ``padt_plugins.datasets``,
the synthetic shapes generator among them (``padt_plugins.datasets.shapes``); this package holds
what they share.
"""

from __future__ import annotations

from .image import ImageError, ImageNotFoundError, check_image, load_image
from .reader import DatasetReader, DataWarning, build_dataset, read_json
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
    "ImageError",
    "ImageNotFoundError",
    "MaskSizeError",
    "ObjectAnn",
    "Sample",
    "TaskTemplates",
    "build_dataset",
    "cell_coverage",
    "check_image",
    "decode_mask",
    "drop_objects",
    "fill_placeholders",
    "load_image",
    "object_cells",
    "ovd_answer",
    "ovd_prompt",
    "placeholder",
    "read_json",
    "rec_answer",
    "rec_prompt",
    "ric_answer",
    "ric_prompt",
]

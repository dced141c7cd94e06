"""Answer-format plugins: ``vrt`` (PaDT: objects are VRT runs decoded by the heads; the default) and
``text_box`` (the text-coordinate baseline: Qwen2.5-VL-style ``{"bbox_2d": [...]}`` boxes as text).

Registered through the ``padt`` entry-point group like any third-party format::

    [project.entry-points.padt]
    answer_formats = "padt_plugins.answer_formats"

Guide: ``docs/answer-formats.md``.
"""

from __future__ import annotations

from padt_core.plugins import hookimpl

from .text_box import TextBoxFormat, TextBoxFormatConfig
from .vrt import VRTFormat, VRTFormatConfig

__all__ = ["TextBoxFormat", "TextBoxFormatConfig", "VRTFormat", "VRTFormatConfig"]


@hookimpl
def padt_answer_formats() -> list[type]:
    return [VRTFormat, TextBoxFormat]

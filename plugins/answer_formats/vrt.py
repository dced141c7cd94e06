"""The ``vrt`` answer format (PaDT, the default): every object is a run of Visual Reference Tokens.

Nothing here renders or parses text: a VRT object is token ids drawn on the processor's grid, so the
core does the work (reference §6.6, §7, §8): the collator writes ``K`` VRT ids per ``<|Obj_k|>``
(``train/collator.py``) and trains them with the robust VRT CE plus the decoder heads' losses
(``train/step.py``); ``VRTCodec.parse`` groups generated VRT runs into labelled objects and the
decoder heads turn them into boxes, scores and masks (``model.py``). This plugin only names that
path so recipes can select it (``answer_format: {name: vrt}``, the default).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from padt_core.answer_format import AnswerFormat
from padt_core.plugins import PluginConfig

__all__ = ["VRTFormat", "VRTFormatConfig"]


class VRTFormatConfig(PluginConfig):
    """Recipe section ``answer_format: {name: vrt}`` (no options: VRT settings live in ``train`` and ``vrt``)."""

    name: Literal["vrt"] = "vrt"


class VRTFormat(AnswerFormat):
    """Objects as VRT runs; rendering and parsing are the core's VRT path (``render``/``parse`` unused)."""

    name: ClassVar[str] = "vrt"
    Config: ClassVar[type[PluginConfig]] = VRTFormatConfig
    uses_vrt: ClassVar[bool] = True

"""Qwen3.5 backbone: transformers' ``Qwen3_5ForConditionalGeneration`` and its processor.

The vision side is Qwen3-VL's (16-px patches, 32-px cells, merge-block rows un-permuted to raster
order; ``qwen3_vl.py``) without DeepStack. The LLM is a hybrid: Gated DeltaNet linear-attention layers
and full-attention layers (``text_config.layer_types``). Its cache holds a convolution + recurrent
state per linear layer and keys/values per full layer; transformers' ``generate`` builds, reorders
(beams) and extends it, so nothing here touches it. What the hybrid needs from the core is what every
backbone needs: one teacher-forced forward over prompt + completion with the attention mask (the
linear layers zero padded positions from the 2-D mask, as in generation's prefill).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from padt_core.plugins import PluginConfig, hookimpl

from .qwen3_vl import Qwen3VLBackbone, Qwen3VLBackboneConfig

__all__ = ["Qwen3_5Backbone", "Qwen3_5BackboneConfig"]


class Qwen3_5BackboneConfig(Qwen3VLBackboneConfig):
    """Recipe section ``backbone:`` for ``name: qwen3_5`` (the same keys as ``qwen3_vl``)."""

    hf_config_class: ClassVar[type] = Qwen3_5Config

    name: Literal["qwen3_5"] = "qwen3_5"


class Qwen3_5Backbone(Qwen3VLBackbone):
    name: ClassVar[str] = "qwen3_5"
    Config: ClassVar[type[PluginConfig]] = Qwen3_5BackboneConfig
    hf_config_class: ClassVar[type] = Qwen3_5Config
    hf_model_class: ClassVar[type] = Qwen3_5ForConditionalGeneration
    known_architectures: ClassVar[dict[str, str]] = {"Qwen/Qwen3.5-9B": "qwen3_5_9b.json"}

    def _image_outputs(self, merged, out, counts):
        # No DeepStack: the LLM sees the merged tokens only.
        return BaseModelOutputWithPooling(pooler_output=merged)


@hookimpl
def padt_backbones() -> list[type]:
    return [Qwen3_5Backbone]

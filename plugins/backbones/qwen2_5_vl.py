"""Qwen2.5-VL backbone: transformers' ``Qwen2_5_VLForConditionalGeneration`` and its processor.

Qwen's vision tower runs in *window order* and its pixel rows come in 2×2 merge-block order; the
merged tokens it returns are already in raster order, the pre-merger states are not. This plugin
un-permutes the pre-merger states into raster order over the 14-px patch grid, so the rest of padt
only ever sees raster order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from einops import rearrange
from PIL import Image
from pydantic import Field, model_validator
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.vision_utils import get_vision_window_index

from padt_core.backbone import Backbone, BackboneBatch, check_image_placeholders, number_images
from padt_core.dtypes import DTypeName, torch_dtype
from padt_core.features import VisualFeatures
from padt_core.plugins import PluginConfig, hookimpl

from ._hf_utils import (
    ASSETS,
    fill_generation_defaults,
    load_from_hub,
    resolve_builtin_path,
    restore_generation_config,
    seeded,
    unknown_config_keys,
)
from ._qwen_vl_common import QwenVLInputs

__all__ = ["Qwen2_5_VLBackbone", "Qwen2_5_VLBackboneConfig"]


# Architecture configs of the public checkpoints (their hub config.json, transformers-4.50 layout), so a
# meta-device build knows the 3B/7B structure without a download. Fine-tuned PaDT checkpoints keep
# their base model's architecture (reference §10).
_ARCHITECTURES = ASSETS / "architectures"
_KNOWN_ARCHITECTURES: dict[str, str] = {  # hub id -> file in assets/architectures
    **{f"Qwen/Qwen2.5-VL-{s}-Instruct": f"qwen2_5_vl_{s.lower()}.json" for s in ("3B", "7B")},
    **{
        f"PaDT-MLLM/PaDT_{task}_{s}": f"qwen2_5_vl_{s.lower()}.json"
        for task in ("OVD", "REC", "RIC", "Pro")
        for s in ("3B", "7B")
    },
}


class Qwen2_5_VLBackboneConfig(PluginConfig):
    """Recipe section ``backbone:`` for ``name: qwen2_5_vl``."""

    name: Literal["qwen2_5_vl"] = "qwen2_5_vl"
    pretrained: str | None = Field(None, description="hub id or local directory for from_pretrained")
    config: dict[str, Any] | None = Field(None, description="inline Qwen2_5_VLConfig kwargs (random init)")
    processor: str | None = Field(
        None, description="processor hub id/dir; 'builtin:<name>' for one kept in padt; default = pretrained"
    )
    revision: str | None = None
    dtype: DTypeName = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    min_pixels: int = Field(4 * 28 * 28, ge=28 * 28)
    max_pixels: int = Field(16384 * 28 * 28, ge=28 * 28)
    seed: int = Field(0, description="seed of the random initialisation of inline configs")

    @model_validator(mode="after")
    def _check(self) -> Qwen2_5_VLBackboneConfig:
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("give exactly one of `pretrained` (hub id / path) or `config` (inline architecture)")
        if self.config is not None:
            unknown = unknown_config_keys(Qwen2_5_VLConfig(), self.config, "config.")
            if unknown:
                raise ValueError(f"unknown Qwen2_5_VLConfig keys: {', '.join(unknown)}")
        if self.pretrained is None and self.processor is None:
            raise ValueError("an inline `config` needs a `processor` (e.g. 'builtin:tiny_qwen')")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


class Qwen2_5_VLBackbone(QwenVLInputs, Backbone):
    name: ClassVar[str] = "qwen2_5_vl"
    Config: ClassVar[type[PluginConfig]] = Qwen2_5_VLBackboneConfig
    # Released PaDT checkpoints keep transformers 4.50's module tree (reference §10.2): the tower at
    # `visual`, the text model at `model`. Transformers 5 nests both under `model` (text in `language_model`).
    released_key_prefixes: ClassVar[tuple[tuple[str, str], ...]] = (
        ("visual.", "hf_model.model.visual."),
        ("model.", "hf_model.model.language_model."),
        ("lm_head.", "hf_model.lm_head."),
    )

    def __init__(self, config: Qwen2_5_VLBackboneConfig, hf_model: Qwen2_5_VLForConditionalGeneration, processor):
        super().__init__()
        self.config = config
        self.hf_model = hf_model
        self.processor = processor
        self.tokenizer = None if processor is None else processor.tokenizer  # None: a meta build (structure only)
        if processor is not None:
            processor.image_processor.size = {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels}
        vision = hf_model.config.vision_config
        self.patch_size = vision.patch_size
        self.merge = vision.spatial_merge_size

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def _processor(cls, config: Qwen2_5_VLBackboneConfig, directory: str | None = None):
        spec = directory or resolve_builtin_path(config.processor or config.pretrained)
        return load_from_hub(AutoProcessor.from_pretrained, spec, revision=None if directory else config.revision)

    @classmethod
    def _hf_config(cls, config: Qwen2_5_VLBackboneConfig, processor) -> Qwen2_5_VLConfig:
        tok = processor.tokenizer
        kwargs = dict(config.config)
        # Special-token ids follow the tokenizer, so tiny recipes need not repeat them.
        kwargs.update(
            image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
            vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        )
        kwargs["text_config"] = {
            **kwargs.get("text_config", {}),
            "bos_token_id": None,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
        hf_config = Qwen2_5_VLConfig(**kwargs)
        vocab = hf_config.get_text_config().vocab_size
        if vocab < len(tok):
            raise ValueError(
                f"backbone.config.text_config.vocab_size {vocab} is smaller than the tokenizer ({len(tok)})"
            )
        hf_config._attn_implementation = config.attn_implementation
        return hf_config

    @classmethod
    def from_config(cls, config: Qwen2_5_VLBackboneConfig, *, meta: bool = False) -> Qwen2_5_VLBackbone:
        """Build the backbone; ``meta=True``: architecture only, nothing downloaded.

        A meta build loads the processor only when it is on this machine (``builtin:`` or a local
        directory); otherwise ``processor`` and ``tokenizer`` are ``None``: it is for structure and sizes.
        """
        processor = cls._meta_processor(config) if meta else cls._processor(config)
        dtype = torch_dtype(config.dtype)
        if config.pretrained is not None and not meta:
            model = load_from_hub(
                Qwen2_5_VLForConditionalGeneration.from_pretrained,
                config.pretrained,
                revision=config.revision,
                dtype=dtype,
                attn_implementation=config.attn_implementation,
            )
        else:
            if config.pretrained is not None:
                hf_config = cls._pretrained_architecture(config)
            else:
                hf_config = cls._hf_config(config, processor)
            model = cls._random_model(hf_config, dtype, config.seed, meta)
        if meta and config.pretrained is not None and Path(config.pretrained).is_dir():
            restore_generation_config(model, config.pretrained)  # what from_pretrained would have read
        if processor is not None:
            fill_generation_defaults(model, processor.tokenizer)
        return cls(config, model, processor)

    @classmethod
    def _meta_processor(cls, config: Qwen2_5_VLBackboneConfig):
        """The processor if it is on this machine (built-in or a local directory); a meta build downloads nothing."""
        spec = config.processor or config.pretrained
        if spec.startswith("builtin:") or Path(spec).is_dir():
            return cls._processor(config)
        return None

    @classmethod
    def _pretrained_architecture(cls, config: Qwen2_5_VLBackboneConfig) -> Qwen2_5_VLConfig:
        """The architecture of ``pretrained``: a local directory's config, a bundled one, else the hub's."""
        from transformers import AutoConfig

        spec = config.pretrained
        if not Path(spec).is_dir() and spec in _KNOWN_ARCHITECTURES:
            raw = json.loads((_ARCHITECTURES / _KNOWN_ARCHITECTURES[spec]).read_text())
            hf_config = Qwen2_5_VLConfig.from_dict(raw)
        else:
            hf_config = load_from_hub(AutoConfig.from_pretrained, spec, revision=config.revision)
        hf_config._attn_implementation = config.attn_implementation
        return hf_config

    @staticmethod
    def _random_model(hf_config, dtype: torch.dtype, seed: int, meta: bool) -> Qwen2_5_VLForConditionalGeneration:
        if meta:
            with torch.device("meta"):
                return Qwen2_5_VLForConditionalGeneration(hf_config).to(dtype)
        return seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(hf_config)).to(dtype)

    @classmethod
    def from_saved(cls, config: Qwen2_5_VLBackboneConfig, directory: str) -> Qwen2_5_VLBackbone:
        processor = cls._processor(config, directory=directory)
        hf_config = Qwen2_5_VLConfig.from_pretrained(directory)
        hf_config._attn_implementation = config.attn_implementation
        model = cls._random_model(hf_config, torch_dtype(config.dtype), config.seed, meta=False)
        fill_generation_defaults(model, processor.tokenizer)
        restore_generation_config(model, directory)
        return cls(config, model, processor)

    # --- processing ---------------------------------------------------------------------------
    def _prepare_image(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        w, h = image.size
        side = self.cell_size
        if min(w, h) < side:
            # As the reference: upscale so the short side covers one VRT cell instead of failing.
            scale = side / min(w, h)
            image = image.resize((max(side, int(w * scale)), max(side, int(h * scale))), Image.LANCZOS)
        return image

    def process(
        self, texts: Sequence[str], images: Sequence[Image.Image | Sequence[Image.Image] | None]
    ) -> BackboneBatch:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} image slots")
        flat, sample_images, image_index = number_images(images)
        check_image_placeholders(self.name, texts, sample_images, self.processor.image_token)
        present = [self._prepare_image(im) for im in flat]
        out = self.processor(
            text=list(texts),
            images=present or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        batch = BackboneBatch(out)
        batch["sample_images"], batch["image_index"] = sample_images, image_index
        grids = batch["image_grid_thw"].tolist() if "image_grid_thw" in batch else []
        batch["image_grids"] = [(h // self.merge, w // self.merge) for _, h, w in grids]
        if "mm_token_type_ids" not in batch:
            batch["mm_token_type_ids"] = torch.zeros_like(batch["input_ids"], dtype=torch.int)
        return batch

    def encode_images(self, batch: BackboneBatch) -> tuple[list[VisualFeatures], dict[str, Any]]:
        if batch.get("pixel_values") is None:
            return [], {}
        grid_thw = batch["image_grid_thw"]
        visual = self.hf_model.model.visual
        out = visual(batch["pixel_values"].to(visual.dtype), grid_thw=grid_thw)
        merged = out.pooler_output  # [sum N, D] raster order over the merged grid
        pre = out.last_hidden_state  # [sum H*W, D_vis] window order, 2×2 merge blocks consecutive
        window_index, _ = get_vision_window_index(grid_thw, self.merge, visual.window_size, self.patch_size)
        unit = self.merge * self.merge
        pre = pre.view(-1, unit, pre.shape[-1])[torch.argsort(window_index.to(pre.device))]
        counts = (grid_thw.prod(-1) // unit).tolist()
        features = []
        merged_split = torch.split(merged, counts)
        for (t, h, w), tokens, blocks in zip(grid_thw.tolist(), merged_split, torch.split(pre, counts)):
            if t != 1:
                raise ValueError(f"videos are not supported (temporal grid {t})")
            hm, wm = h // self.merge, w // self.merge
            fine = rearrange(blocks, "(hm wm) (a b) d -> (hm a wm b) d", hm=hm, wm=wm, a=self.merge, b=self.merge)
            features.append(
                VisualFeatures(
                    tokens=tokens,
                    grid=(hm, wm),
                    cell_size=self.cell_size,
                    image_size=(h * self.patch_size, w * self.patch_size),
                    fine=fine,
                    fine_grid=(h, w),
                )
            )
        return features, {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=merged_split)}}


@hookimpl
def padt_backbones() -> list[type]:
    return [Qwen2_5_VLBackbone]

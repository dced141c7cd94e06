"""Qwen3-VL backbone: transformers' ``Qwen3VLForConditionalGeneration`` and its processor.

The Qwen3 vision side (shared with Qwen3.5, ``qwen3_5.py`` subclasses this plugin): 16-px patches,
merged 2 × 2 into 32-px VRT cells, full attention over each image (no windows), a learned position
table resampled to the image's grid. Its pixel rows come in 2 × 2 merge-block order; the merged
tokens are raster order over the cell grid, the pre-merger states are not. This plugin un-permutes
the pre-merger states into raster order over the 16-px patch grid.

DeepStack: the tower also merges the states of a few intermediate blocks (``deepstack_visual_indexes``)
and the LLM adds them to the hidden states of its first layers at the image-token positions. They go
to the LLM through ``mm_encoder_outputs`` exactly as the stock model's own features do; VRT input
embeddings (prototypes) are not image tokens and get none (the stock model's mask is
``input_ids == image_token_id``).
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
from transformers import AutoProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

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

__all__ = ["Qwen3VLBackbone", "Qwen3VLBackboneConfig"]

_ARCHITECTURES = ASSETS / "architectures"
CELL = 32  # 16-px patches x 2 x 2 merge


class Qwen3VLBackboneConfig(PluginConfig):
    """Recipe section ``backbone:`` for ``name: qwen3_vl``."""

    #: The transformers config class inline ``config`` keys are checked against.
    hf_config_class: ClassVar[type] = Qwen3VLConfig

    name: Literal["qwen3_vl"] = "qwen3_vl"
    pretrained: str | None = Field(None, description="hub id or local directory for from_pretrained")
    config: dict[str, Any] | None = Field(None, description="inline architecture kwargs (random init)")
    processor: str | None = Field(
        None, description="processor hub id/dir; 'builtin:<name>' for one kept in padt; default = pretrained"
    )
    revision: str | None = None
    dtype: DTypeName = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    min_pixels: int = Field(4 * CELL * CELL, ge=CELL * CELL)
    max_pixels: int = Field(16384 * CELL * CELL, ge=CELL * CELL)
    seed: int = Field(0, description="seed of the random initialisation of inline configs")

    @model_validator(mode="after")
    def _check(self):
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("give exactly one of `pretrained` (hub id / path) or `config` (inline architecture)")
        if self.config is not None:
            unknown = unknown_config_keys(self.hf_config_class(), self.config, "config.")
            if unknown:
                raise ValueError(f"unknown {self.hf_config_class.__name__} keys: {', '.join(unknown)}")
        if self.pretrained is None and self.processor is None:
            raise ValueError("an inline `config` needs a `processor` (e.g. 'builtin:tiny_qwen3')")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


class Qwen3VLBackbone(QwenVLInputs, Backbone):
    name: ClassVar[str] = "qwen3_vl"
    Config: ClassVar[type[PluginConfig]] = Qwen3VLBackboneConfig
    hf_config_class: ClassVar[type] = Qwen3VLConfig
    hf_model_class: ClassVar[type] = Qwen3VLForConditionalGeneration
    #: Hub ids whose architecture is bundled in assets/architectures (meta builds need no download).
    known_architectures: ClassVar[dict[str, str]] = {"Qwen/Qwen3-VL-4B-Instruct": "qwen3_vl_4b.json"}

    def __init__(self, config: Qwen3VLBackboneConfig, hf_model, processor):
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
    def _model_type(cls) -> str:
        return cls.hf_config_class.model_type

    @classmethod
    def _checked(cls, hf_config, source: str):
        """``hf_config`` if it is this plugin's model type; else one error naming both types."""
        if getattr(hf_config, "model_type", None) != cls._model_type():
            raise ValueError(
                f"{source}: a {hf_config.model_type!r} checkpoint, but backbone.name {cls.name!r} needs model_type "
                f"{cls._model_type()!r}; use the backbone plugin of that model (`padt plugins`) or another checkpoint"
            )
        return hf_config

    @classmethod
    def _processor(cls, config: Qwen3VLBackboneConfig, directory: str | None = None):
        spec = directory or resolve_builtin_path(config.processor or config.pretrained)
        return load_from_hub(AutoProcessor.from_pretrained, spec, revision=None if directory else config.revision)

    @classmethod
    def _hf_config(cls, config: Qwen3VLBackboneConfig, processor):
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
        hf_config = cls.hf_config_class(**kwargs)
        vocab = hf_config.get_text_config().vocab_size
        if vocab < len(tok):
            raise ValueError(
                f"backbone.config.text_config.vocab_size {vocab} is smaller than the tokenizer ({len(tok)})"
            )
        return hf_config

    @classmethod
    def from_config(cls, config: Qwen3VLBackboneConfig, *, meta: bool = False) -> Qwen3VLBackbone:
        """Build the backbone; ``meta=True``: architecture only, nothing downloaded.

        A meta build loads the processor only when it is on this machine (``builtin:`` or a local
        directory); otherwise ``processor`` and ``tokenizer`` are ``None``: it is for structure and sizes.

        Example:
            >>> backbone = Qwen3VLBackbone.from_config(load_recipe("tiny_qwen3_vl").backbone)  # doctest: +SKIP
        """
        processor = cls._meta_processor(config) if meta else cls._processor(config)
        dtype = torch_dtype(config.dtype)
        if config.pretrained is not None:
            hf_config = cls._pretrained_architecture(config)  # checked before any weight is read
        else:
            hf_config = cls._hf_config(config, processor)
        hf_config._attn_implementation = config.attn_implementation
        if config.pretrained is not None and not meta:
            model = load_from_hub(
                cls.hf_model_class.from_pretrained,
                config.pretrained,
                revision=config.revision,
                config=hf_config,
                dtype=dtype,
                attn_implementation=config.attn_implementation,
            )
        else:
            model = cls._random_model(hf_config, dtype, config.seed, meta)
        if meta and config.pretrained is not None and Path(config.pretrained).is_dir():
            restore_generation_config(model, config.pretrained)  # what from_pretrained would have read
        if processor is not None:
            fill_generation_defaults(model, processor.tokenizer)
        return cls(config, model, processor)

    @classmethod
    def _meta_processor(cls, config: Qwen3VLBackboneConfig):
        """The processor if it is on this machine (built-in or a local directory); a meta build downloads nothing."""
        spec = config.processor or config.pretrained
        if spec.startswith("builtin:") or Path(spec).is_dir():
            return cls._processor(config)
        return None

    @classmethod
    def _pretrained_architecture(cls, config: Qwen3VLBackboneConfig):
        """The architecture of ``pretrained``: a local directory's config, a bundled one, else the hub's."""
        from transformers import AutoConfig

        spec = config.pretrained
        if not Path(spec).is_dir() and spec in cls.known_architectures:
            raw = json.loads((_ARCHITECTURES / cls.known_architectures[spec]).read_text())
            hf_config = cls.hf_config_class.from_dict(raw)
        else:
            hf_config = load_from_hub(AutoConfig.from_pretrained, spec, revision=config.revision)
        return cls._checked(hf_config, f"backbone.pretrained {spec!r}")

    @classmethod
    def _random_model(cls, hf_config, dtype: torch.dtype, seed: int, meta: bool):
        if meta:
            with torch.device("meta"):
                return cls.hf_model_class(hf_config).to(dtype)
        return seeded(seed, lambda: cls.hf_model_class(hf_config)).to(dtype)

    @classmethod
    def from_saved(cls, config: Qwen3VLBackboneConfig, directory: str) -> Qwen3VLBackbone:
        from transformers import AutoConfig

        hf_config = cls._checked(AutoConfig.from_pretrained(directory), f"saved backbone {directory}")
        processor = cls._processor(config, directory=directory)
        hf_config._attn_implementation = config.attn_implementation
        model = cls._random_model(hf_config, torch_dtype(config.dtype), config.seed, meta=False)
        fill_generation_defaults(model, processor.tokenizer)
        restore_generation_config(model, directory)
        return cls(config, model, processor)

    # --- processing ---------------------------------------------------------------------------
    def _prepare_image(self, index: int, image: Any) -> Image.Image:
        frames = getattr(image, "n_frames", 1)
        if not isinstance(image, Image.Image) or frames > 1:
            what = f"{frames} frames" if frames > 1 else type(image).__name__
            raise ValueError(
                f"{self.name}: image {index} is not a single image ({what}); videos are not supported, "
                "pass one PIL image (or a frame of the video) per sample"
            )
        image = image.convert("RGB")
        w, h = image.size
        side = self.cell_size
        if min(w, h) < side:
            # As the Qwen2.5-VL plugin (and the reference): upscale so the short side covers one
            # 32-px cell instead of failing; the aspect ratio is kept.
            scale = side / min(w, h)
            image = image.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.LANCZOS)
        return image

    def process(
        self, texts: Sequence[str], images: Sequence[Image.Image | Sequence[Image.Image] | None]
    ) -> BackboneBatch:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} image slots")
        video_token = self.processor.video_token
        for i, text in enumerate(texts):
            if video_token in text:
                raise ValueError(
                    f"{self.name}: prompt {i} holds the video placeholder {video_token!r}; videos are not supported"
                )
        flat, sample_images, image_index = number_images(images)
        check_image_placeholders(self.name, texts, sample_images, self.processor.image_token)
        present = [self._prepare_image(i, im) for i, im in enumerate(flat)]
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

    def _image_outputs(self, merged: tuple[torch.Tensor, ...], out, counts: list[int]):
        """What ``mm_encoder_outputs["image"]`` holds: the merged tokens and the DeepStack features per image."""
        deepstack = [torch.split(feature, counts) for feature in out.deepstack_features]
        return BaseModelOutputWithDeepstackFeatures(pooler_output=merged, deepstack_features=deepstack)

    def encode_images(self, batch: BackboneBatch) -> tuple[list[VisualFeatures], dict[str, Any]]:
        if batch.get("pixel_values") is None:
            return [], {}
        grid_thw = batch["image_grid_thw"]
        for t, _, _ in grid_thw.tolist():
            if t != 1:
                raise ValueError(f"{self.name}: videos are not supported (temporal grid {t})")
        visual = self.hf_model.model.visual
        out = visual(batch["pixel_values"].to(visual.dtype), grid_thw=grid_thw, return_dict=True)
        unit = self.merge * self.merge
        counts = (grid_thw.prod(-1) // unit).tolist()
        merged = torch.split(out.pooler_output, counts)  # raster order over each image's cell grid
        pre = torch.split(out.last_hidden_state, [c * unit for c in counts])  # 2x2 merge blocks consecutive
        features = []
        for (_, h, w), tokens, blocks in zip(grid_thw.tolist(), merged, pre):
            hm, wm = h // self.merge, w // self.merge
            fine = rearrange(blocks, "(hm wm a b) d -> (hm a wm b) d", hm=hm, wm=wm, a=self.merge, b=self.merge)
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
        return features, {"mm_encoder_outputs": {"image": self._image_outputs(merged, out, counts)}}


@hookimpl
def padt_backbones() -> list[type]:
    return [Qwen3VLBackbone]

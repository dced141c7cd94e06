"""LLaVA-style backbone: a timm ViT + LLaVA-1.5 projector + any transformers causal LM, or a llava-hf model.

Two sources, one plugin (recipe ``backbone.name: llava``):

* ``source: timm`` (default) assembles :class:`~padt_plugins.backbones.llava_model.LlavaStyleForCausalLM`
  from a timm ViT (``timm.create_model(..., dynamic_img_size=True)``; patch tokens of one block via
  ``forward_intermediates``, prefix tokens dropped), a 2-layer GELU projector and an
  ``AutoModelForCausalLM``. The VRT grid is the ViT patch grid merged by ``merge`` (default 2: a
  14-px ViT gives 28-px cells like Qwen2.5-VL); ``fine`` features are the un-merged patch tokens.
  Images keep their aspect ratio (resized to multiples of the cell within pixel bounds) and are
  normalised with the timm model's data config.
* ``source: hf_llava`` runs transformers' ``LlavaForConditionalGeneration`` (``llava-hf/*``
  checkpoints). Its VRT grid is the fixed patch grid of its vision tower (24 × 24 for a 336-px,
  14-px CLIP); images are resized to the fixed square size without cropping, so the aspect ratio
  is *not* kept there.

Everything reaches padt's core through the :class:`~padt_core.backbone.Backbone` contract: raster
order over the grids, pre-encoded features passed back to the HF model as ``mm_encoder_outputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import timm
import torch
from einops import rearrange
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from padt_core.backbone import Backbone, BackboneBatch, number_images
from padt_core.dtypes import DTypeName, torch_dtype
from padt_core.features import VisualFeatures
from padt_core.plugins import PluginConfig, hookimpl

from ._hf_utils import (
    fill_generation_defaults,
    load_from_hub,
    resolve_builtin_path,
    restore_generation_config,
    seeded,
    unknown_config_keys,
)
from .llava_model import (
    LlavaStyleConfig,
    LlavaStyleForCausalLM,
    PadtLlavaForConditionalGeneration,
    build_timm_vision,
)
from .llava_processor import LlavaStyleProcessor

__all__ = ["LlavaBackbone", "LlavaBackboneConfig"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------
# Recipe section
# ---------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LlavaVisionConfig(_Strict):
    """``backbone.vision`` (timm source): the tower, a ViT or (with ``stage``) a ConvNet."""

    model: str = Field(description="timm model name, e.g. vit_large_patch14_clip_336.openai, efficientnet_lite0")
    pretrained: bool = Field(True, description="load timm's pretrained weights (from the hub)")
    checkpoint: str | None = Field(None, description="local timm weights file instead of the hub (implies pretrained)")
    weights: str | None = Field(
        None,
        description="weights file or 'package:<pip distribution>[/<file>]', mapped onto the timm model by name or "
        "in order (count and shapes checked); replaces `pretrained`/`checkpoint`",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="timm.create_model overrides (embed_dim, ...)")
    feature_layer: int = Field(-2, description="ViT block whose patch tokens are used (LLaVA-1.5: -2)")
    stage: int | None = Field(
        None, description="ConvNet towers: feature_info stage of the LLM tokens (its stride x merge = the VRT cell)"
    )
    fine_stages: list[int] | None = Field(
        None, min_length=1, description="ConvNet towers: stages of the decoder's fine features (default: [stage])"
    )
    freeze: bool = Field(False, description="no training of the tower (BatchNorm statistics kept); projector trains")
    cache_images: int = Field(
        0, ge=0, description="frozen tower: keep the feature maps of this many images (LRU by pixels); 0 = off"
    )
    lr_scale: float = Field(1.0, gt=0, description="the tower trains at lr_scale x train.lr")

    @model_validator(mode="after")
    def _check(self) -> LlavaVisionConfig:
        if self.weights is not None and self.checkpoint is not None:
            raise ValueError("backbone.vision: give `weights` or `checkpoint`, not both")
        if self.fine_stages is not None and self.stage is None:
            raise ValueError("backbone.vision.fine_stages needs `stage` (ConvNet towers)")
        if self.cache_images and not self.freeze:
            raise ValueError("backbone.vision.cache_images needs `freeze: true` (a trained tower's maps change)")
        if self.freeze and self.lr_scale != 1.0:
            raise ValueError("backbone.vision: a frozen tower has no learning rate (`freeze` with `lr_scale`)")
        return self


class LlavaLanguageConfig(_Strict):
    """``backbone.language_model`` (timm source): the causal LM."""

    pretrained: str | None = Field(None, description="hub id or local directory (AutoModelForCausalLM)")
    config: dict[str, Any] | None = Field(None, description="inline config with `model_type` (random init)")
    revision: str | None = None

    @model_validator(mode="after")
    def _check(self) -> LlavaLanguageConfig:
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("language_model: give exactly one of `pretrained` or `config`")
        if self.config is not None:
            if "model_type" not in self.config:
                raise ValueError("language_model.config needs a `model_type` (e.g. qwen2, llama)")
            unknown = unknown_config_keys(AutoConfig.for_model(self.config["model_type"]), self.config, "config.")
            if unknown:
                raise ValueError(f"unknown {self.config['model_type']} config keys: {', '.join(unknown)}")
        return self


class LlavaBackboneConfig(PluginConfig):
    """Recipe section ``backbone:`` for ``name: llava``."""

    name: Literal["llava"] = "llava"
    source: Literal["timm", "hf_llava"] = Field("timm", description="timm ViT + projector + LM, or llava-hf")
    # --- source: timm
    vision: LlavaVisionConfig | None = None
    language_model: LlavaLanguageConfig | None = None
    merge: int | None = Field(None, ge=1, description="m x m patches per VRT cell (timm: default 2; hf_llava: 1)")
    merge_mode: Literal["concat", "mean"] = Field("concat", description="concat the m x m block or average it")
    projector_hidden_act: str = "gelu"
    min_pixels: int | None = Field(None, ge=1, description="timm: default 4 cells")
    max_pixels: int | None = Field(None, ge=1, description="timm: default 1024 cells")
    # --- source: hf_llava
    pretrained: str | None = Field(None, description="hf_llava: hub id or local directory")
    config: dict[str, Any] | None = Field(None, description="hf_llava: inline LlavaConfig kwargs (random init)")
    revision: str | None = None
    # --- both
    tokenizer: str | None = Field(
        None, description="hub id/dir or 'builtin:<name>'; default: the LM's (timm) or the checkpoint's (hf_llava)"
    )
    image_token: str | None = Field(None, description="placeholder token; default <|image_pad|> / the processor's")
    image_prompt: str | None = Field(
        None, description="text put before the prompt for images (text-only chat templates); None = HF content list"
    )
    image_mean: list[float] | None = Field(None, min_length=3, max_length=3)
    image_std: list[float] | None = Field(None, min_length=3, max_length=3)
    dtype: DTypeName = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    seed: int = Field(0, description="seed of the random initialisation (inline configs, the projector)")

    @model_validator(mode="after")
    def _check(self) -> LlavaBackboneConfig:
        if self.source == "timm":
            if self.vision is None or self.language_model is None:
                raise ValueError("source 'timm' needs `vision` and `language_model` sections")
            if self.pretrained is not None or self.config is not None:
                raise ValueError("`pretrained`/`config` are for source 'hf_llava'; use `language_model` with timm")
            if self.language_model.pretrained is None and self.tokenizer is None:
                raise ValueError("an inline language_model.config needs a `tokenizer` (e.g. 'builtin:tiny_qwen')")
        else:
            if self.vision is not None or self.language_model is not None:
                raise ValueError("source 'hf_llava' takes `pretrained` or `config`, not `vision`/`language_model`")
            if (self.pretrained is None) == (self.config is None):
                raise ValueError("source 'hf_llava': give exactly one of `pretrained` or `config`")
            if self.merge not in (None, 1):
                raise ValueError("source 'hf_llava' has a fixed patch grid: `merge` must be 1")
            if self.min_pixels is not None or self.max_pixels is not None:
                raise ValueError("source 'hf_llava' resizes to its fixed image size: no min_pixels/max_pixels")
            if self.config is not None:
                unknown = unknown_config_keys(LlavaConfig(), self.config, "config.")
                if unknown:
                    raise ValueError(f"unknown LlavaConfig keys: {', '.join(unknown)}")
                if self.tokenizer is None:
                    raise ValueError("an inline `config` needs a `tokenizer` (e.g. 'builtin:tiny_qwen')")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


def _call(loader, spec: str, *args, what: str = "", hint: str | None = None, **kwargs):
    """``loader(spec)`` for local sources (no hub, so no hub error)."""
    return loader(spec, *args, **kwargs)


def _token_ids(tokenizer) -> dict[str, Any]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# ---------------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------------


class LlavaBackbone(Backbone):
    name: ClassVar[str] = "llava"
    Config: ClassVar[type[PluginConfig]] = LlavaBackboneConfig

    def __init__(self, config: LlavaBackboneConfig, hf_model, processor: LlavaStyleProcessor):
        super().__init__()
        self.config = config
        self.hf_model = hf_model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if config.source == "timm":
            self.patch_size = hf_model.patch_size
            self.merge = hf_model.config.merge
        else:
            self.patch_size = hf_model.config.vision_config.patch_size
            self.merge = 1
            size = hf_model.config.vision_config.image_size
            self.fixed_grid = (size // self.patch_size, size // self.patch_size)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: LlavaBackboneConfig, *, meta: bool = False) -> LlavaBackbone:
        if config.source == "timm":
            return cls._build_timm(config, meta)
        return cls._build_hf_llava(config, meta)

    @classmethod
    def _build_timm(cls, config: LlavaBackboneConfig, meta: bool) -> LlavaBackbone:
        lm_cfg, vis_cfg = config.language_model, config.vision
        tokenizer = load_from_hub(
            AutoTokenizer.from_pretrained,
            resolve_builtin_path(config.tokenizer or lm_cfg.pretrained),
            revision=None if config.tokenizer else lm_cfg.revision,
            what=" (`backbone.tokenizer`)" if config.tokenizer else " (`backbone.language_model.pretrained`)",
        )
        image_token = config.image_token or "<|image_pad|>"
        _ensure_token(tokenizer, image_token)
        dtype = torch_dtype(config.dtype)

        # The language model.
        if lm_cfg.pretrained is not None and not meta:
            lm = load_from_hub(
                AutoModelForCausalLM.from_pretrained,
                lm_cfg.pretrained,
                revision=lm_cfg.revision,
                dtype=dtype,
                attn_implementation=config.attn_implementation,
                what=" (`backbone.language_model.pretrained`)",
            )
        else:
            if lm_cfg.pretrained is not None:
                text_config = load_from_hub(AutoConfig.from_pretrained, lm_cfg.pretrained, revision=lm_cfg.revision)
            else:
                kwargs = dict(lm_cfg.config)
                text_config = AutoConfig.for_model(kwargs.pop("model_type"), **{**_token_ids(tokenizer), **kwargs})
            with torch.device("meta") if meta else _null():
                attn = config.attn_implementation
                lm = seeded(
                    config.seed, lambda: AutoModelForCausalLM.from_config(text_config, attn_implementation=attn)
                )
        rows = lm.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            if lm_cfg.pretrained is None:
                raise ValueError(
                    f"language_model.config vocab_size {rows} is smaller than the tokenizer ({len(tokenizer)})"
                )
            lm.resize_token_embeddings(len(tokenizer))  # the image token was added to the tokenizer

        # The vision tower: random, a local weights file, or timm's pretrained weights from the hub.
        checkpoint = vis_cfg.checkpoint if not meta else None
        weights = vis_cfg.weights if not meta else None
        pretrained = vis_cfg.pretrained and vis_cfg.checkpoint is None and vis_cfg.weights is None and not meta
        with torch.device("meta") if meta else _null():
            vision = (load_from_hub if pretrained else _call)(
                lambda name, **kw: seeded(config.seed, lambda: build_timm_vision(name, **kw)),
                vis_cfg.model,
                kwargs=vis_cfg.kwargs,
                pretrained=pretrained,
                checkpoint=checkpoint,
                weights=weights,
                stage=vis_cfg.stage,
                fine_stages=vis_cfg.fine_stages,
                hint=(
                    f"Download the timm weights on a connected machine (`hf download timm/{vis_cfg.model} "
                    "--local-dir DIR`) and set `backbone.vision.checkpoint` to the weights file in that local "
                    "directory (or `backbone.vision.pretrained=false` for a random tower)."
                ),
            )
        hf_config = LlavaStyleConfig(
            text_config=lm.config,
            vision_model=vis_cfg.model,
            vision_kwargs=dict(vis_cfg.kwargs),
            vision_feature_layer=vis_cfg.feature_layer,
            vision_stage=vis_cfg.stage,
            vision_fine_stages=vis_cfg.fine_stages,
            merge=config.merge or 2,
            merge_mode=config.merge_mode,
            projector_hidden_act=config.projector_hidden_act,
            image_token_id=tokenizer.convert_tokens_to_ids(image_token),
            attn_implementation=config.attn_implementation,
        )
        with torch.device("meta") if meta else _null():
            model = seeded(config.seed, lambda: LlavaStyleForCausalLM(hf_config, vision=vision, language_model=lm))
        model = model.to(dtype)
        if vis_cfg.freeze:
            model.freeze_vision_tower(cache_images=vis_cfg.cache_images)
        processor = cls._timm_processor(config, tokenizer, image_token, vision, model.cell_size)
        fill_generation_defaults(model, tokenizer)
        return cls(config, model, processor)

    @staticmethod
    def _timm_processor(config, tokenizer, image_token, vision, cell) -> LlavaStyleProcessor:
        # The tower's own normalisation (ImageNet mean/std for EfficientNet, CLIP's for CLIP ViTs).
        data = timm.data.resolve_data_config({}, model=vision) if getattr(vision, "pretrained_cfg", None) else {}
        interpolation = data.get("interpolation", "bicubic")
        return LlavaStyleProcessor(
            tokenizer,
            image_token=image_token,
            cell_size=cell,
            image_mean=config.image_mean or data.get("mean", _CLIP_MEAN),
            image_std=config.image_std or data.get("std", _CLIP_STD),
            resample=interpolation if interpolation in ("nearest", "bilinear", "bicubic", "lanczos") else "bicubic",
            min_pixels=config.min_pixels or 4 * cell * cell,
            max_pixels=config.max_pixels or 1024 * cell * cell,
            image_prompt=config.image_prompt,
        )

    @classmethod
    def _build_hf_llava(cls, config: LlavaBackboneConfig, meta: bool) -> LlavaBackbone:
        spec = resolve_builtin_path(config.tokenizer or config.pretrained)
        hf_processor = load_from_hub(
            AutoProcessor.from_pretrained,
            spec,
            revision=None if config.tokenizer else config.revision,
            what=" (`backbone.tokenizer`)" if config.tokenizer else " (`backbone.pretrained`)",
        )
        tokenizer = getattr(hf_processor, "tokenizer", hf_processor)
        image_token = config.image_token or getattr(hf_processor, "image_token", None) or "<image>"
        _ensure_token(tokenizer, image_token)
        dtype = torch_dtype(config.dtype)
        if config.pretrained is not None and not meta:
            model = load_from_hub(
                PadtLlavaForConditionalGeneration.from_pretrained,
                config.pretrained,
                revision=config.revision,
                dtype=dtype,
                attn_implementation=config.attn_implementation,
                what=" (`backbone.pretrained`)",
            )
        else:
            if config.pretrained is not None:
                hf_config = load_from_hub(AutoConfig.from_pretrained, config.pretrained, revision=config.revision)
            else:
                kwargs = dict(config.config)
                kwargs["text_config"] = {**_token_ids(tokenizer), **kwargs.get("text_config", {})}
                kwargs["image_token_id"] = tokenizer.convert_tokens_to_ids(image_token)
                hf_config = LlavaConfig(**kwargs)
            hf_config._attn_implementation = config.attn_implementation
            with torch.device("meta") if meta else _null():
                model = seeded(config.seed, lambda: PadtLlavaForConditionalGeneration(hf_config))
            model = model.to(dtype)
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise ValueError(f"the LLaVA text vocab ({rows}) is smaller than the tokenizer ({len(tokenizer)})")
        if model.config.image_token_id != tokenizer.convert_tokens_to_ids(image_token):
            raise ValueError(
                f"image token {image_token!r} is id {tokenizer.convert_tokens_to_ids(image_token)} in the tokenizer "
                f"but {model.config.image_token_id} in the model config"
            )
        image_processor = getattr(hf_processor, "image_processor", None)
        processor = LlavaStyleProcessor(
            tokenizer,
            image_token=image_token,
            cell_size=model.config.vision_config.patch_size,
            image_mean=config.image_mean or getattr(image_processor, "image_mean", None) or _CLIP_MEAN,
            image_std=config.image_std or getattr(image_processor, "image_std", None) or _CLIP_STD,
            fixed_size=model.config.vision_config.image_size,
            extra_image_tokens=1 if model.config.vision_feature_select_strategy == "full" else 0,
            chat_template=getattr(hf_processor, "chat_template", None) or tokenizer.chat_template,
            image_prompt=config.image_prompt,
        )
        fill_generation_defaults(model, tokenizer)
        return cls(config, model, processor)

    @classmethod
    def from_saved(cls, config: LlavaBackboneConfig, directory: str) -> LlavaBackbone:
        dtype = torch_dtype(config.dtype)
        if config.source == "timm":
            hf_config = LlavaStyleConfig.from_pretrained(directory)
            hf_config._attn_implementation = config.attn_implementation  # recursive: the LM's too
            model = seeded(config.seed, lambda: LlavaStyleForCausalLM(hf_config)).to(dtype)
            processor = LlavaStyleProcessor.from_pretrained(
                directory, min_pixels=config.min_pixels, max_pixels=config.max_pixels, image_prompt=config.image_prompt
            )
        else:
            hf_config = LlavaConfig.from_pretrained(directory)
            hf_config._attn_implementation = config.attn_implementation
            model = seeded(config.seed, lambda: PadtLlavaForConditionalGeneration(hf_config)).to(dtype)
            processor = LlavaStyleProcessor.from_pretrained(directory, image_prompt=config.image_prompt)
        fill_generation_defaults(model, processor.tokenizer)
        restore_generation_config(model, directory)
        return cls(config, model, processor)

    # --- sizes --------------------------------------------------------------------------------
    @property
    def vision_hidden_size(self) -> int:
        if self.config.source == "timm":
            return self.hf_model.vision_hidden_size
        layers = self.hf_model.config.vision_feature_layer
        return self.hf_model.config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))

    @property
    def cell_size(self) -> int:
        return self.patch_size * self.merge

    # --- processing ---------------------------------------------------------------------------
    def format_prompt(self, prompt: str, with_image: bool | int) -> str:
        return self.processor.apply_chat_template(prompt, with_image)

    def process(
        self, texts: Sequence[str], images: Sequence[Image.Image | Sequence[Image.Image] | None]
    ) -> BackboneBatch:
        batch = BackboneBatch(self.processor(list(texts), list(images)))
        _, batch["sample_images"], batch["image_index"] = number_images(images)
        return batch

    def encode_images(self, batch: BackboneBatch) -> tuple[list[VisualFeatures], dict[str, Any]]:
        pixels = batch.get("pixel_values")
        if pixels is None:
            return [], {}
        if self.config.source == "timm":
            llm_tokens, features = self._encode_timm(pixels, batch.get("image_sizes"))
        else:
            llm_tokens, features = self._encode_hf_llava(pixels)
        return features, {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=llm_tokens)}}

    def _encode_timm(self, pixels, image_sizes):
        out = self.hf_model.get_image_features(pixels, image_sizes)
        stride, cell = self.hf_model.fine_stride, self.cell_size
        features = []
        for tokens, fmap in zip(out.pooler_output, out.hidden_states):
            _, fh, fw = fmap.shape
            features.append(
                VisualFeatures(
                    tokens=tokens,
                    grid=(fh * stride // cell, fw * stride // cell),
                    cell_size=cell,
                    image_size=(fh * stride, fw * stride),
                    fine=rearrange(fmap, "d h w -> (h w) d"),
                    fine_grid=(fh, fw),
                )
            )
        return list(out.pooler_output), features

    def _encode_hf_llava(self, pixels):
        hf = self.hf_model
        cfg = hf.config
        vision = hf.model.vision_tower
        out = vision(pixels.to(vision.dtype), output_hidden_states=True, return_dict=True)
        layers = cfg.vision_feature_layer
        selected = (
            out.hidden_states[layers]
            if isinstance(layers, int)
            else torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        )
        h, w = self.fixed_grid
        prefix = selected.shape[1] - h * w
        if prefix not in (0, 1) or (cfg.vision_feature_select_strategy == "default" and prefix != 1):
            raise ValueError(
                f"vision tower gives {selected.shape[1]} tokens for a {h}x{w} patch grid "
                f"(strategy {cfg.vision_feature_select_strategy!r}): unsupported layout"
            )
        llm_in = selected[:, 1:] if cfg.vision_feature_select_strategy == "default" else selected
        llm_tokens = hf.model.multi_modal_projector(llm_in)  # [N, h*w (+1), D]
        features = [
            VisualFeatures(
                tokens=tokens[-h * w :],
                grid=(h, w),
                cell_size=self.cell_size,
                image_size=(h * self.patch_size, w * self.patch_size),
                fine=states[prefix:],
                fine_grid=(h, w),
            )
            for tokens, states in zip(llm_tokens, selected)
        ]
        return list(llm_tokens), features

    def vision_modules(self) -> list[torch.nn.Module]:
        if self.config.source == "timm":
            return [self.hf_model.vision, self.hf_model.projector]
        return [self.hf_model.model.vision_tower, self.hf_model.model.multi_modal_projector]

    def parameter_lr_scales(self) -> list[tuple[torch.nn.Module, float]]:
        scale = self.config.vision.lr_scale if self.config.source == "timm" and self.config.vision else 1.0
        return [] if scale == 1.0 else [(self.hf_model.vision, scale)]

    def model_inputs(self, batch: BackboneBatch) -> dict[str, Any]:
        # ``image_sizes`` describes the padded pixels (timm source); ignored when features are passed.
        sizes = batch.get("image_sizes")
        return {} if sizes is None else {"image_sizes": sizes}


def _ensure_token(tokenizer, token: str) -> None:
    """Add the image placeholder as a special token if the tokenizer lacks it."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        tokenizer.add_tokens([token], special_tokens=True)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@hookimpl
def padt_backbones() -> list[type]:
    return [LlavaBackbone]

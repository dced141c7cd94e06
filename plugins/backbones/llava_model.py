"""The LLaVA-style Hugging Face models behind the ``llava`` backbone plugin.

``LlavaStyleForCausalLM`` assembles a **timm** ViT (patch tokens of one block, prefix tokens
dropped), a LLaVA-1.5 projector (Linear → GELU → Linear) and any **transformers** causal LM. It is
a ``PreTrainedModel`` + ``GenerationMixin``, so Hugging Face ``generate`` (caches, beams, logits
processors) runs it unchanged, and its input/output embeddings *are* the LM's, so padt's VRT hooks
land on the LM's embedding table and ``lm_head``.

Images of any size (multiples of the VRT cell) come as one zero-padded ``pixel_values`` tensor
``[N, 3, H_max, W_max]`` with ``image_sizes [N, 2]`` (pixels); each image runs at its own size
(``dynamic_img_size``), images of equal size together. Merging: every ``m × m`` block of patch
tokens becomes one LLM token, either by concatenating the block (``concat``, like Qwen2.5-VL's
merger; projector input ``m²·D_vis``) or by averaging it (``mean``; projector input ``D_vis``).
``m = 1`` is plain LLaVA-1.5.

Pre-encoded features come in through transformers' own convention, ``mm_encoder_outputs =
{"image": BaseModelOutputWithPooling(pooler_output=[tokens of image 0, ...])}``: generate keeps it
for the prefill only and expands it for beams; the tokens are scattered, in order, at the
``image_token_id`` placeholders of ``input_ids``.

``PadtLlavaForConditionalGeneration`` is transformers' ``LlavaForConditionalGeneration`` (the
``llava-hf/*`` checkpoints) with the two fixes shared by both classes (see
:func:`positions_from_mask` and :meth:`_CopyOnExpand._expand_multimodal_outputs`).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers < 5.20 (vLLM 0.32's environment): sub-configs are declared the older way
    SubConfigSpec = None
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .llava_cnn import CnnStages, cnn_feature_maps, cnn_stages, prune_tower
from .tower_weights import load_tower_weights

__all__ = [
    "LlavaStyleConfig",
    "LlavaStyleForCausalLM",
    "LlavaStyleProjector",
    "PadtLlavaForConditionalGeneration",
    "build_timm_vision",
    "positions_from_mask",
]


def positions_from_mask(
    attention_mask: torch.Tensor | None, length: int, cache: Any = None, device: torch.device | None = None
) -> torch.Tensor:
    """Position ids of the last ``length`` tokens, counted over *attended* tokens only.

    This is what ``generate`` derives from the attention mask (``cumsum - 1``, padding at 0), so a
    teacher-forced forward over a left-padded batch sees the positions generation saw (stock LLaVA
    would count the left padding in a plain forward and disagree with its own ``generate``).
    """
    if attention_mask is None or attention_mask.ndim != 2:
        past = cache.get_seq_length() if cache is not None else 0
        return (torch.arange(length, device=device) + past).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    return positions[:, -length:]


class _CopyOnExpand:
    """Mixin: beam/return-sequence expansion must not mutate the caller's encoded features.

    ``GenerationMixin._expand_multimodal_outputs`` reassigns ``pooler_output`` on the very object
    passed in, so a padt ``Encoded`` reused after a beam search would hold the expanded list.
    """

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, *args, **kwargs):
        fresh = {k: (type(v)(**dict(v.items())) if v is not None else None) for k, v in mm_encoder_output.items()}
        return super()._expand_multimodal_outputs(input_ids, fresh, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------
# timm ViT + projector + causal LM
# ---------------------------------------------------------------------------------------------------


class LlavaStyleConfig(PreTrainedConfig):
    """Architecture of a :class:`LlavaStyleForCausalLM` (saved as ``config.json``).

    ``vision_model``/``vision_kwargs`` rebuild the timm tower (``pretrained=False``: weights come
    from the checkpoint); ``text_config`` is the causal LM's own config.
    """

    model_type = "padt_llava_style"
    if SubConfigSpec is not None:
        sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2")}
    else:
        sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_model: str = "vit_small_patch16_224"
    vision_kwargs: dict | None = None
    vision_feature_layer: int = -1
    vision_stage: int | None = None  # ConvNet towers: feature_info stage of the LLM tokens (None: a ViT)
    vision_fine_stages: list[int] | None = None  # ConvNet towers: stages of the decoder's fine features
    merge: int = 2
    merge_mode: str = "concat"
    projector_hidden_act: str = "gelu"
    image_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None and not isinstance(self.text_config, PreTrainedConfig):
            text = dict(self.text_config or {})
            self.text_config = CONFIG_MAPPING[text.setdefault("model_type", "qwen2")](**text)
        super().__post_init__(**kwargs)
        if self.merge < 1:
            raise ValueError(f"merge must be >= 1, got {self.merge}")
        if self.merge_mode not in ("concat", "mean"):
            raise ValueError(f"merge_mode must be 'concat' or 'mean', got {self.merge_mode!r}")


def build_timm_vision(
    model: str,
    kwargs: dict | None = None,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    weights: str | None = None,
    stage: int | None = None,
    fine_stages: list[int] | None = None,
) -> nn.Module:
    """A timm tower: a ViT that accepts any multiple of its patch size (``dynamic_img_size=True``), or,
    with ``stage``, a ConvNet pruned after the last feature stage used (``llava_cnn``).

    ``weights`` (a file or ``package:<distribution>``, see ``tower_weights``) is loaded into the full
    model, classifier included, before the classifier is dropped: files keep their heads.
    """
    extra = dict(kwargs or {})
    if weights is None:
        extra.setdefault("num_classes", 0)  # no classifier head: only patch tokens are used
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"timm weights file not found: {checkpoint} (backbone.vision.checkpoint)")
        extra["pretrained_cfg_overlay"] = {"file": checkpoint}
        pretrained = True
    if stage is None:
        extra["dynamic_img_size"] = True
    vision = timm.create_model(model, pretrained=pretrained, **extra)
    if weights is not None:
        load_tower_weights(vision, weights)
        if "num_classes" not in (kwargs or {}):
            vision.reset_classifier(0)
    if stage is not None:
        prune_tower(vision, cnn_stages(vision, stage, fine_stages))
    elif not hasattr(vision, "forward_intermediates") or not hasattr(vision, "patch_embed"):
        raise ValueError(
            f"timm model {model!r} is not a ViT with forward_intermediates/patch_embed "
            "(a ConvNet tower needs `backbone.vision.stage`)"
        )
    return vision


class LlavaStyleProjector(nn.Module):
    """LLaVA-1.5 projector: ``Linear(in, D) → act → Linear(D, D)``."""

    def __init__(self, in_features: int, out_features: int, act: str = "gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(out_features, out_features)

    def reset_parameters(self, std: float = 0.02) -> None:
        for linear in (self.linear_1, self.linear_2):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaStyleForCausalLM(_CopyOnExpand, PreTrainedModel, GenerationMixin):
    """timm ViT → merge ``m × m`` → projector → tokens scattered into a causal LM's input embeddings."""

    config_class = LlavaStyleConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def __init__(
        self, config: LlavaStyleConfig, vision: nn.Module | None = None, language_model: nn.Module | None = None
    ):
        super().__init__(config)
        self.vision = (
            vision
            if vision is not None
            else build_timm_vision(
                config.vision_model,
                config.vision_kwargs,
                stage=config.vision_stage,
                fine_stages=config.vision_fine_stages,
            )
        )
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        self.cnn: CnnStages | None = None
        self.vision_frozen = False
        self.tower_cache: TowerCache | None = None
        if config.vision_stage is not None:
            # A ConvNet: the "patch" is the token stage's stride; fine features may come from finer stages.
            self.cnn = cnn_stages(self.vision, config.vision_stage, config.vision_fine_stages)
            self.patch_size, token_width = self.cnn.stride, self.cnn.channels
            self.vision_hidden_size, self.fine_stride = self.cnn.fine_channels, self.cnn.fine_stride
            if (self.patch_size * config.merge) % self.fine_stride:
                raise ValueError(
                    f"fine stride {self.fine_stride} does not divide the {self.patch_size * config.merge}-px VRT cell"
                )
            # A ConvNet's stage maps are not normalised (EfficientNet-Lite0 stage 3: per-position norms 35-95,
            # text embeddings ~1.7): unnormalised, the image tokens -- and the VRT prototypes made from them --
            # are ranked by their norm, whatever the query. A LayerNorm per position, as a ViT's blocks have.
            self.token_norm = nn.LayerNorm(token_width)
            self.fine_norm = nn.LayerNorm(self.vision_hidden_size)
        else:
            self.patch_size = _patch_size(self.vision)
            self.vision_hidden_size = token_width = int(self.vision.embed_dim)
            self.fine_stride = self.patch_size
            depth = len(self.vision.blocks)
            if not -depth <= config.vision_feature_layer < depth:
                raise ValueError(f"vision_feature_layer {config.vision_feature_layer} outside a {depth}-block ViT")
            self.feature_block = config.vision_feature_layer % depth
        merge_in = token_width * (config.merge**2 if config.merge_mode == "concat" else 1)
        hidden = self.language_model.get_input_embeddings().weight.shape[1]
        self.projector = LlavaStyleProjector(merge_in, hidden, config.projector_hidden_act)
        # A config setter resets sub-configs' attention implementation to None (= no causal mask in
        # some paths): give the LM the resolved one explicitly.
        lm_config = self.language_model.config
        if lm_config._attn_implementation is None:
            lm_config._attn_implementation = self.config._attn_implementation or "sdpa"
        self.post_init()

    # Only the projector is ours to initialise: timm and the LM initialise (or load) themselves and
    # must not be re-initialised here (a pretrained tower/LM would be wiped).
    def initialize_weights(self) -> None:
        self.projector.reset_parameters(getattr(self.config.text_config, "initializer_range", 0.02))

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "token_norm", None) or module is getattr(self, "fine_norm", None):
            module.reset_parameters()
        if isinstance(module, LlavaStyleProjector):
            module.reset_parameters(getattr(self.config.text_config, "initializer_range", 0.02))

    # --- embeddings: the LM's, so padt's hooks sit on the LM --------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    @property
    def cell_size(self) -> int:
        return self.patch_size * self.config.merge

    # transformers checkpoints the LM's layers; timm's ViT has its own switch.
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, *args, **kwargs):
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, *args, **kwargs)
        if hasattr(self.vision, "set_grad_checkpointing"):
            self.vision.set_grad_checkpointing(True)

    def activation_checkpointing_disable(self):
        super().activation_checkpointing_disable()
        if hasattr(self.vision, "set_grad_checkpointing"):
            self.vision.set_grad_checkpointing(False)

    # --- vision -----------------------------------------------------------------------------------
    def freeze_vision_tower(self, cache_images: int = 0) -> None:
        """No gradients into the tower, and its normalisation statistics stay as loaded (eval mode).

        ``cache_images > 0`` keeps the maps of that many images (least recently used dropped), keyed by
        their pixels: a frozen tower gives an image the same maps every epoch, and on a CPU the tower's
        forward can cost more than the rest of the step.
        """
        self.vision.requires_grad_(False)
        self.vision_frozen = True
        self.vision.eval()
        self.tower_cache = TowerCache(cache_images) if cache_images else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vision_frozen:
            self.vision.eval()  # BatchNorm running statistics of a frozen pretrained tower must not drift
        return self

    def tower_maps(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(token map [D, H/p, W/p], fine map [D_fine, H/f, W/f])`` per image (the same map for a ViT).

        ``pixel_values [N, 3, H_max, W_max]``; image ``i`` is the top-left ``image_sizes[i]`` crop
        (all of it when ``image_sizes`` is None). Images of equal size run as one batch.
        """
        n = pixel_values.shape[0]
        sizes = (
            [tuple(pixel_values.shape[-2:])] * n
            if image_sizes is None
            else [(int(h), int(w)) for h, w in (image_sizes.tolist() if torch.is_tensor(image_sizes) else image_sizes)]
        )
        dtype = self.projector.linear_1.weight.dtype
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n
        for size in dict.fromkeys(sizes):
            h, w = size
            if h % self.cell_size or w % self.cell_size or h <= 0 or w <= 0:
                raise ValueError(f"image size {h}x{w} is not a positive multiple of the {self.cell_size}-px VRT cell")
            index = [i for i, s in enumerate(sizes) if s == size]
            pixels = pixel_values[index, :, :h, :w].to(dtype)
            if self.tower_cache is not None:
                maps = self.tower_cache.maps(pixels, self._run_tower)
                tokens, fine = torch.stack([t for t, _ in maps]), torch.stack([f for _, f in maps])
            else:
                tokens, fine = self._run_tower(pixels)
            if self.cnn is not None:
                tokens, fine = _channel_norm(self.token_norm, tokens), _channel_norm(self.fine_norm, fine)
            for i, t, f in zip(index, tokens, fine):
                out[i] = (t, f)
        return out  # type: ignore[return-value]

    def _run_tower(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token and fine maps of a batch of equal-size images (``NCHW``)."""
        h, w = pixels.shape[-2:]
        if self.cnn is not None:
            tokens, fine = cnn_feature_maps(self.vision, pixels, self.cnn)
        else:
            (tokens,) = self.vision.forward_intermediates(
                pixels, indices=[self.feature_block], stop_early=True, intermediates_only=True, output_fmt="NCHW"
            )
            fine = tokens
        assert tokens.shape[-2:] == (h // self.patch_size, w // self.patch_size)
        assert fine.shape[-2:] == (h // self.fine_stride, w // self.fine_stride)
        return tokens, fine

    def merge_and_project(self, fmap: torch.Tensor) -> torch.Tensor:
        """``[D_vis, H, W]`` patch map → ``[(H/m)·(W/m), D_llm]`` LLM tokens in raster order."""
        m = self.config.merge
        if self.config.merge_mode == "concat":
            merged = rearrange(fmap, "d (h a) (w b) -> (h w) (a b d)", a=m, b=m)
        else:
            merged = rearrange(F.avg_pool2d(fmap.unsqueeze(0), m).squeeze(0), "d h w -> (h w) d")
        return self.projector(merged)

    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """``pooler_output``: LLM tokens per image; ``hidden_states``: the fine maps ``[D_fine, h, w]``
        (for a ViT the patch maps the tokens come from)."""
        maps = self.tower_maps(pixel_values, image_sizes)
        tokens = tuple(self.merge_and_project(t) for t, _ in maps)
        return BaseModelOutputWithPooling(pooler_output=tokens, hidden_states=tuple(f for _, f in maps))

    def scatter_image_tokens(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Put the image tokens, in order, at the ``image_token_id`` placeholders."""
        tokens = torch.cat(list(features), dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
        mask = input_ids == self.config.image_token_id
        if int(mask.sum()) != tokens.shape[0]:
            raise ValueError(
                f"image features and image tokens do not match: {int(mask.sum())} placeholders, "
                f"{tokens.shape[0]} image tokens"
            )
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), tokens)

    # --- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ):
        kwargs.pop("image_grids", None)  # padt batch metadata, not a model input
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("give pixel_values or mm_encoder_outputs, not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image = (mm_encoder_outputs or {}).get("image")
        if image is None and pixel_values is not None:
            image = self.get_image_features(pixel_values, image_sizes)
        if image is not None and len(image.pooler_output):
            if input_ids is None:
                raise ValueError("image features need input_ids to find the image placeholders")
            inputs_embeds = self.scatter_image_tokens(input_ids, inputs_embeds, image.pooler_output)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1], cache, inputs_embeds.device)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def _channel_norm(norm: nn.LayerNorm, maps: torch.Tensor) -> torch.Tensor:
    """``norm`` over the channels of ``NCHW`` maps (each position separately)."""
    return norm(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TowerCache:
    """The maps of a frozen tower per image, keyed by a digest of the image's pixels (LRU, ``size`` images)."""

    def __init__(self, size: int):
        self.size = size
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(pixels: torch.Tensor) -> tuple:
        data = pixels.detach().cpu().contiguous().numpy().tobytes()
        return (tuple(pixels.shape), str(pixels.dtype), hashlib.blake2b(data, digest_size=16).digest())

    def maps(self, pixels: torch.Tensor, run) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(token, fine)`` maps of each image of ``pixels``; the missing ones from one ``run(batch)``."""
        keys = [self.key(x) for x in pixels]
        first = {k: j for j, k in reversed(list(enumerate(keys)))}  # a repeated image runs once
        missing = [j for k, j in first.items() if k not in self.entries]
        if missing:
            with torch.no_grad():
                tokens, fine = run(pixels[missing])
            same = fine is tokens  # a ViT, or fine features from the token stage: store one tensor
            for j, t, f in zip(missing, tokens, fine):
                t = t.clone()  # a view would keep the whole batch's storage alive in the cache
                self.entries[keys[j]] = (t, t if same else f.clone())
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        out = []
        for k in keys:
            self.entries.move_to_end(k)
            out.append(self.entries[k])
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return out


def _patch_size(vision: nn.Module) -> int:
    size = vision.patch_embed.patch_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if size[0] != size[1]:
        raise ValueError(f"non-square patches {size} are not supported")
    return int(size[0])


# ---------------------------------------------------------------------------------------------------
# transformers' LLaVA (llava-hf checkpoints)
# ---------------------------------------------------------------------------------------------------


class PadtLlavaForConditionalGeneration(_CopyOnExpand, LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` whose plain forward counts positions like its ``generate``."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Any,
    ):
        kwargs.pop("image_grids", None)  # padt batch metadata, not a model input
        if position_ids is None:
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            device = (input_ids if input_ids is not None else inputs_embeds).device
            position_ids = positions_from_mask(attention_mask, length, cache, device)
        return super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            labels=labels,
            logits_to_keep=logits_to_keep,
            image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )


# Saved backbone directories hold this config next to the tokenizer files: registering the model type
# lets transformers' Auto* classes (AutoTokenizer reads config.json too) resolve it without warnings.
if LlavaStyleConfig.model_type not in CONFIG_MAPPING:
    AutoConfig.register(LlavaStyleConfig.model_type, LlavaStyleConfig)

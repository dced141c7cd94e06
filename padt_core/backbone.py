"""The contract between padt's core and a backbone plugin (a multimodal LLM + its processor).

The core never imports a backbone-specific module: everything it needs goes through this class.
A backbone owns a Hugging Face causal LM (``hf_model``, a ``GenerationMixin`` model) and a
processor, and turns images into :class:`~padt_core.features.VisualFeatures` in raster order.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from .features import VisualFeatures
from .plugins import PluginConfig

__all__ = [
    "IMAGE_SLOT",
    "Backbone",
    "BackboneBatch",
    "HubUnreachableError",
    "check_image_placeholders",
    "image_slots",
    "number_images",
    "sample_image_list",
]

#: Where a sample's images go in its prompt: ``"before <|img|> and after <|img|>: what changed?"``. A prompt
#: without slots gets its images first, in order (``docs/multi-image.md``).
IMAGE_SLOT = "<|img|>"


class HubUnreachableError(OSError):
    """A recipe names a hub model that cannot be downloaded here."""


class BackboneBatch(dict):
    """Processor output for a batch: ``input_ids``, ``attention_mask`` and model inputs.

    Also carries ``sample_images``: for every sample, the indices of its images in the batch's image
    list, in prompt order (``[]`` for a text-only sample); ``image_index``: the first of them (``-1``
    for none; the one image of a single-image sample); and ``image_grids``: the ``(h, w)`` VRT grid of
    every image, known from preprocessing alone (training targets are placed on it before any forward pass).
    """


def sample_image_list(image: Any) -> list[Any]:
    """A sample's images as a list: ``None`` → ``[]``, one image → ``[image]``, a list/tuple → itself."""
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def number_images(images: Sequence[Any]) -> tuple[list[Any], list[list[int]], list[int]]:
    """The batch's images in one list, sample after sample, and where each sample's are in it.

    Returns ``(flat, sample_images, image_index)``: a backbone's ``process`` puts the last two in its batch.

    Example:
        >>> number_images(["a", None, ["b", "c"]])
        (['a', 'b', 'c'], [[0], [], [1, 2]], [0, -1, 1])
    """
    flat: list[Any] = []
    sample_images: list[list[int]] = []
    for image in images:
        own = sample_image_list(image)
        sample_images.append(list(range(len(flat), len(flat) + len(own))))
        flat += own
    return flat, sample_images, [own[0] if own else -1 for own in sample_images]


def check_image_placeholders(
    backbone: str, texts: Sequence[str], sample_images: Sequence[Sequence[int]], placeholder: str
) -> None:
    """One error naming the sample when its chat text holds another number of image placeholders than it has
    images (the processors' own message counts the whole batch)."""
    for b, (text, own) in enumerate(zip(texts, sample_images)):
        count = text.count(placeholder)
        if count != len(own):
            raise ValueError(
                f"{backbone}: sample {b} has {len(own)} image(s) but its text holds {count} {placeholder!r} "
                f"placeholder(s); format it with format_prompt(prompt, {len(own)})"
            )


def image_slots(prompt: str, num_images: int) -> list[str | None]:
    """The user turn of ``prompt`` with ``num_images`` images, as pieces in order: text, or ``None`` for an image.

    Images sit at the prompt's :data:`IMAGE_SLOT` markers, or all before the text when it has none (one
    image: the single-image prompt of every backbone). A backbone builds its chat content from the pieces.

    Example:
        >>> image_slots("left <|img|> right <|img|> same?", 2)
        ['left ', None, ' right ', None, ' same?']
        >>> image_slots("what is red?", 2)
        [None, None, 'what is red?']
    """
    slots = prompt.count(IMAGE_SLOT)
    if slots == 0:
        return [*([None] * int(num_images)), prompt]
    if slots != num_images:
        raise ValueError(f"the prompt has {slots} {IMAGE_SLOT} slots for {num_images} image(s)")
    pieces: list[str | None] = []
    for j, text in enumerate(prompt.split(IMAGE_SLOT)):
        if j:
            pieces.append(None)
        if text:
            pieces.append(text)
    return pieces


class Backbone(nn.Module, ABC):
    """Base class of backbone plugins.

    Subclasses set ``name`` and ``Config`` and build ``self.hf_model`` and ``self.tokenizer``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]

    hf_model: nn.Module
    tokenizer: Any

    #: Renames of a released PaDT checkpoint's multimodal-LLM keys (reference §10.2) to this backbone's
    #: state-dict keys: ``(source prefix, target prefix)`` pairs, first match wins. Empty: the backbone
    #: cannot read released checkpoints (``padt_core.convert`` says so).
    released_key_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_config(cls, config: PluginConfig, *, meta: bool = False) -> Backbone:
        """Build from the recipe section: ``from_pretrained`` for hub ids/paths, random init for inline configs.

        ``meta=True`` builds the architecture on the meta device without loading or downloading weights.
        """

    @classmethod
    @abstractmethod
    def from_saved(cls, config: PluginConfig, directory: str) -> Backbone:
        """Rebuild from a padt model directory (architecture + processor files written by ``save``)."""

    def save(self, directory: str) -> None:
        """Write the architecture config, generation config and processor files (weights: the core).

        The default suits any Hugging Face model with a ``processor`` attribute on the backbone.
        """
        os.makedirs(directory, exist_ok=True)
        self.hf_model.config.save_pretrained(directory)
        self.hf_model.generation_config.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    # --- sizes --------------------------------------------------------------------------------
    @property
    def vocab_rows(self) -> int:
        """``V``: rows of the LLM input embedding table; VRT ``k`` has token id ``V + k``."""
        return self.hf_model.get_input_embeddings().weight.shape[0]

    @property
    def hidden_size(self) -> int:
        """LLM width ``D`` (width of ``VisualFeatures.tokens``)."""
        return self.hf_model.get_input_embeddings().weight.shape[1]

    @property
    @abstractmethod
    def vision_hidden_size(self) -> int:
        """Width of ``VisualFeatures.fine``."""

    @property
    @abstractmethod
    def cell_size(self) -> int:
        """Pixels per VRT cell side in the resized image."""

    @property
    def default_coverage(self) -> float:
        """Fraction of a cell an object must cover for the cell to count as the object's (``data.coverage`` unset).

        The reference's rule (§6.2) is one pixel row of a cell, ``1 / cell_size``: 1/28 for
        Qwen2.5-VL's 28-px cells. A backbone whose cells call for another rule overrides this.
        """
        return 1.0 / self.cell_size

    # --- processing ---------------------------------------------------------------------------
    @abstractmethod
    def format_prompt(self, prompt: str, with_image: bool | int) -> str:
        """The chat-formatted prompt text (with the generation header), image placeholders included.

        ``with_image`` is the number of the sample's images (``True``: one); where they go is
        :func:`image_slots`' rule.
        """

    @abstractmethod
    def process(
        self, texts: Sequence[str], images: Sequence[Image.Image | Sequence[Image.Image] | None]
    ) -> BackboneBatch:
        """Tokenise chat-formatted ``texts`` (one per sample) with their images (``None`` = text only, a
        list = several images, in prompt order).

        Returns left-padded ``input_ids``/``attention_mask``, the model inputs the LLM needs
        (e.g. pixel values, grid sizes, token-type ids), ``sample_images``, ``image_index`` and ``image_grids``.
        """

    @abstractmethod
    def encode_images(self, batch: BackboneBatch) -> tuple[list[VisualFeatures], dict[str, Any]]:
        """Run the vision tower once.

        Returns the features of every image of the batch (raster order) and the keyword arguments
        that make ``hf_model.forward``/``generate`` use these features instead of re-encoding pixels.
        """

    def vision_modules(self) -> list[nn.Module]:
        """Modules of the vision side (tower and projector/merger), for ``train.freeze_vision``."""
        raise NotImplementedError(f"backbone {self.name!r} does not say which modules are its vision side")

    def parameter_lr_scales(self) -> list[tuple[nn.Module, float]]:
        """Modules whose parameters train at ``scale × train.lr`` (e.g. a pretrained tower); empty: all at ``lr``."""
        return []

    def model_inputs(self, batch: BackboneBatch) -> dict[str, Any]:
        """Keyword arguments of ``hf_model`` besides ids, mask and the image features."""
        skip = {"input_ids", "attention_mask", "image_index", "sample_images", "image_grids", "pixel_values"}
        return {k: v for k, v in batch.items() if k not in skip}

    def extend_model_inputs(self, batch: BackboneBatch, new_tokens: torch.Tensor) -> dict[str, Any]:
        """Model inputs for ``input_ids`` extended by ``new_tokens`` (text/VRT) columns.

        Backbones whose inputs are per-token (e.g. modality type ids) extend them here.
        """
        return self.model_inputs(batch)

    @property
    def max_context(self) -> int | None:
        """Most tokens (prompt with its image tokens + completion) the LLM takes; ``None``: not stated."""
        config = self.hf_model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text, "max_position_embeddings", None)
        return int(limit) if limit else None

    @property
    def eos_token_ids(self) -> list[int]:
        ids = self.hf_model.generation_config.eos_token_id
        if ids is None and self.tokenizer is not None:  # no tokenizer: a meta build, structure only
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return []
        return [ids] if isinstance(ids, int) else list(ids)

    @property
    def never_generate_ids(self) -> list[int]:
        """Text ids generation must never emit: the placeholders the processor places (image/video pads,
        vision start/end). Generated, one would be read as an image slot by the teacher-forced pass that
        follows (``predict``). ``PaDTModel.generate`` masks them in its prepared logits bias (no per-step
        cost). Default: the processor's ``image_token``, if it has one; backbones add their others."""
        token = getattr(getattr(self, "processor", None), "image_token", None)
        return self._token_ids([token] if isinstance(token, str) else [])

    def _token_ids(self, tokens: Sequence[str]) -> list[int]:
        """Ids of those ``tokens`` the tokenizer knows (unknown ones and the unk id left out)."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            return []
        unk = tokenizer.unk_token_id
        ids = (tokenizer.convert_tokens_to_ids(t) for t in tokens)
        return sorted({i for i in ids if isinstance(i, int) and i != unk})

    @property
    def pad_token_id(self) -> int | None:
        pad = None if self.tokenizer is None else self.tokenizer.pad_token_id
        if pad is None and self.eos_token_ids:
            pad = self.eos_token_ids[0]
        return pad

"""The processor of the ``llava`` backbone: chat template, image resizing/normalisation, placeholders.

Two resize modes:

* **dynamic** (timm source): each image is resized to multiples of the VRT cell, keeping its aspect
  ratio, with ``min_pixels <= H*W <= max_pixels`` (Qwen2.5-VL's rule with factor = cell).
  ``pixel_values`` is zero-padded to the largest image of the batch, ``image_sizes [N, 2]`` says
  which top-left crop is real.
* **fixed** (``hf_llava`` source): every image is resized to ``fixed_size × fixed_size`` without
  cropping (boxes stay mappable to the original image; the aspect ratio is not kept).

The chat template renders one image placeholder per image; :meth:`LlavaStyleProcessor.process`
expands it to as many placeholder tokens as the image gives the LLM (cells, plus
``extra_image_tokens``, e.g. 1 for LLaVA's ``full`` strategy that keeps the CLS token).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from padt_core.backbone import image_slots, sample_image_list

__all__ = ["LlavaStyleProcessor", "smart_resize"]

CONFIG_NAME = "padt_llava_processor.json"
_RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Closest ``(h, w)``, multiples of ``factor``, with about the same aspect ratio and pixel count in bounds.

    Sides are at least one ``factor``; very thin images keep at least one cell across.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
        while h * w > max_pixels and max(h, w) > factor:  # a thin image clamped to one cell across
            if h >= w:
                h -= factor
            else:
                w -= factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class LlavaStyleProcessor:
    """Tokenizer + chat template + image transform; writes/reads ``padt_llava_processor.json``."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_token: str,
        cell_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        resample: str = "bicubic",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        fixed_size: int | None = None,
        extra_image_tokens: int = 0,
        chat_template: str | None = None,
        image_prompt: str | None = None,
    ):
        if (fixed_size is None) == (min_pixels is None or max_pixels is None):
            raise ValueError("give either fixed_size or both min_pixels and max_pixels")
        if fixed_size is not None and fixed_size % cell_size:
            raise ValueError(f"fixed_size {fixed_size} is not a multiple of the cell {cell_size}")
        if resample not in _RESAMPLE:
            raise ValueError(f"resample {resample!r} is not one of {', '.join(_RESAMPLE)}")
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"image token {image_token!r} is not in the tokenizer")
        self.cell_size = int(cell_size)
        self.image_mean = [float(x) for x in image_mean]
        self.image_std = [float(x) for x in image_std]
        self.resample = resample
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.fixed_size = fixed_size
        self.extra_image_tokens = int(extra_image_tokens)
        self.chat_template = chat_template if chat_template is not None else tokenizer.chat_template
        if self.chat_template is None:
            raise ValueError("the tokenizer has no chat template; give one")
        self.image_prompt = image_prompt

    # --- text -----------------------------------------------------------------------------------
    def apply_chat_template(self, prompt: str, with_image: bool | int) -> str:
        """One user turn (+ generation header) with ``with_image`` images (``True``: one), placed by
        :func:`padt_core.backbone.image_slots`. With ``image_prompt`` set, the content is a plain string,
        ``image_prompt`` per image (for text-only chat templates); else an HF multimodal content list."""
        pieces = image_slots(prompt, int(with_image))
        if self.image_prompt is not None:
            content: Any = "".join(self.image_prompt if piece is None else piece for piece in pieces)
        else:
            content = [{"type": "image"} if piece is None else {"type": "text", "text": piece} for piece in pieces]
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    # --- images ---------------------------------------------------------------------------------
    def target_size(self, image: Image.Image) -> tuple[int, int]:
        """``(height, width)`` the model sees for this image."""
        if self.fixed_size is not None:
            return self.fixed_size, self.fixed_size
        return smart_resize(image.height, image.width, self.cell_size, self.min_pixels, self.max_pixels)

    def num_image_tokens(self, size: tuple[int, int]) -> int:
        return (size[0] // self.cell_size) * (size[1] // self.cell_size) + self.extra_image_tokens

    def image_tensor(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        image = image.convert("RGB")
        if image.size != (w, h):
            image = image.resize((w, h), _RESAMPLE[self.resample])
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (x - mean) / std

    # --- batch ----------------------------------------------------------------------------------
    def __call__(
        self, texts: Sequence[str], images: Sequence[Image.Image | Sequence[Image.Image] | None]
    ) -> dict[str, Any]:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} image slots")
        expanded, pixels, sizes = [], [], []
        for i, (text, image) in enumerate(zip(texts, images)):
            own = sample_image_list(image)
            count = text.count(self.image_token)
            if count != len(own):
                raise ValueError(f"sample {i} has {len(own)} image(s) but its text holds {count} {self.image_token!r}")
            # Each placeholder, in order, becomes as many tokens as its image gives the LLM.
            parts = text.split(self.image_token)
            for j, im in enumerate(own):
                size = self.target_size(im)
                pixels.append(self.image_tensor(im, size))
                sizes.append(size)
                parts[j] += self.image_token * self.num_image_tokens(size)
            expanded.append("".join(parts))
        # The chat template decides the special tokens; only a BOS it leaves out is added (LLaVA-1.5's
        # template has none, Llama-3's writes it itself, Qwen has no BOS at all).
        bos = self.tokenizer.bos_token
        add_bos = bool(bos) and not any(text.startswith(bos) for text in expanded)
        out = dict(
            self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=add_bos)
        )
        out["image_grids"] = [(h // self.cell_size, w // self.cell_size) for h, w in sizes]
        if pixels:
            hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
            batch = torch.zeros(len(pixels), 3, hmax, wmax)
            for j, (x, (h, w)) in enumerate(zip(pixels, sizes)):
                batch[j, :, :h, :w] = x
            out["pixel_values"] = batch
            if self.fixed_size is None:
                out["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        return out

    # --- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "image_token": self.image_token,
            "cell_size": self.cell_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "resample": self.resample,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "fixed_size": self.fixed_size,
            "extra_image_tokens": self.extra_image_tokens,
            "chat_template": self.chat_template,
            "image_prompt": self.image_prompt,
        }

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str, **overrides: Any) -> LlavaStyleProcessor:
        from transformers import AutoTokenizer

        with open(os.path.join(directory, CONFIG_NAME)) as f:
            settings = json.load(f)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(AutoTokenizer.from_pretrained(directory), **settings)

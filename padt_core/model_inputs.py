"""Checks of what ``PaDTModel`` is given: prompts, images and their ``<|img|>`` slots, context length, VRT ids.

Each bad input is one error naming the sample (and, in a multi-image sample, the image) and what was
expected; ``PaDTModel.prepare``, ``predict``, ``encode`` and ``forward`` call these before any work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .backbone import IMAGE_SLOT, Backbone, BackboneBatch, sample_image_list
from .data.image import ImageError, ImageLike, describe_image, load_image

if TYPE_CHECKING:
    from .model_outputs import Encoded

__all__ = [
    "PromptError",
    "check_context",
    "check_image_slots",
    "check_prompts",
    "check_vrt_ids",
    "image_list",
    "load_sample",
    "name_rejected_image",
    "refuse_special_tokens",
]


class PromptError(ValueError):
    """A prompt the model cannot take: empty, with special tokens typed in, or a ``<|VRT_k|>`` past its image's grid."""


def check_prompts(backbone: Backbone, images: Sequence[Any], prompts: Sequence[str]) -> None:
    """One prompt per sample, none empty, none with special tokens typed in (:func:`refuse_special_tokens`)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise PromptError(f"prompt {i} is empty")
    refuse_special_tokens(backbone, prompts)


def load_sample(sample: int, images: ImageLike | Sequence[ImageLike]) -> Any:
    """The sample's image(s) loaded as they were given (``None``, one image or a list); a bad one is the
    loader's error naming the sample and, in a list, the image's position."""
    if not isinstance(images, (list, tuple)):
        return load_image(images)  # its error names the file
    loaded = []
    for j, image in enumerate(images):
        if image is None:
            raise ImageError(f"sample {sample}, image {j} of {len(images)}: None in a list of images")
        try:
            loaded.append(load_image(image))
        except ImageError as err:
            raise type(err)(f"sample {sample}, image {j} of {len(images)}: {err}", *_reason(err)) from None
    return loaded


def check_image_slots(prompts: Sequence[str], counts: Sequence[int], answer_format: str, uses_vrts: bool) -> None:
    """Each prompt's ``<|img|>`` slots (if any) match its ``counts[b]`` images; several images need VRTs.

    Args:
        prompts: the user prompts.
        counts: images of each sample.
        answer_format: the recipe's answer format name (for the error).
        uses_vrts: whether that format has a prototype projection (VRTs).
    """
    for b, (prompt, n) in enumerate(zip(prompts, counts)):
        slots = prompt.count(IMAGE_SLOT)
        if slots and slots != n:
            raise PromptError(f"prompt {b} has {slots} {IMAGE_SLOT} slot(s) for its {n} image(s)")
        if n > 1 and not uses_vrts:
            raise PromptError(
                f"sample {b} has {n} images, but answer format {answer_format!r} writes boxes as "
                "text in one image's pixels; several images in one conversation need the vrt format"
            )


def check_context(backbone: Backbone, batch: BackboneBatch, images: Sequence[Any]) -> None:
    """A prompt whose text and image tokens exceed the LLM's context (``Backbone.max_context``) is one
    error naming the sample and the image that passes the limit."""
    limit = backbone.max_context
    if limit is None:
        return
    lengths = batch["attention_mask"].sum(1).tolist()
    for b, length in enumerate(lengths):
        if length <= limit:
            continue
        grids = [batch["image_grids"][i] for i in batch["sample_images"][b]]
        cells = [h * w for h, w in grids]
        used, culprit = length - sum(cells), None
        for j, n in enumerate(cells):
            used += n
            if used > limit and culprit is None:
                culprit = j
        own = sample_image_list(images[b])
        where = f"; image {culprit} ({describe_image(own[culprit])}) passes it" if culprit is not None else ""
        raise PromptError(
            f"sample {b} takes {length} tokens with its {len(cells)} image(s) ({sum(cells)} image tokens), more "
            f"than the LLM's context of {limit}{where}: use fewer or smaller images (the backbone's max_pixels)"
        )


def refuse_special_tokens(backbone: Backbone, prompts: Sequence[str]) -> None:
    """Refuse the tokenizer's special tokens (``<|image_pad|>``, ``<|im_end|>``, …) and the image token in
    user text: the chat template and the processor place those, and a typed one breaks the image/token
    count or the turn structure. ``<|VRT_k|>`` references are not special tokens: they stay allowed."""
    tokenizer = backbone.tokenizer
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    special.update(tokenizer.all_special_tokens)
    image_token = getattr(getattr(backbone, "processor", None), "image_token", None)
    if isinstance(image_token, str) and image_token:
        special.add(image_token)
    for i, prompt in enumerate(prompts):
        found = sorted(token for token in special if token and token in prompt)
        if found:
            raise PromptError(
                f"prompt {i} contains the special token(s) {', '.join(found)}, which the chat template and "
                "processor place themselves; remove them (only <|VRT_k|> references may be typed in a prompt)"
            )


def name_rejected_image(
    backbone: Backbone,
    err: ValueError,
    images: Sequence[Any],
    prompts: Sequence[str],
    texts: Sequence[str],
    pil: Sequence[Any],
) -> ValueError:
    """The processor's error with the image it rejected named (e.g. Qwen2.5-VL's aspect-ratio limit):
    each sample is processed alone to find it, and each image of a multi-image sample. Only runs on
    the error path."""
    for b, (source, prompt, text, image) in enumerate(zip(images, prompts, texts, pil)):
        try:
            backbone.process([text], [image])
        except ValueError as one:
            if not isinstance(image, list):
                size = f", {image.width}x{image.height} (w x h)" if image is not None else ""
                return type(one)(f"image {describe_image(source)}{size}: {one}")
            for j, (src, im) in enumerate(zip(source, image)):
                try:
                    backbone.process([backbone.format_prompt(prompt.replace(IMAGE_SLOT, ""), True)], [im])
                except ValueError as alone:
                    return type(alone)(
                        f"sample {b}, image {j} {describe_image(src)}, {im.width}x{im.height} (w x h): {alone}"
                    )
            return type(one)(f"sample {b} ({len(image)} images): {one}")
    return err


def check_vrt_ids(input_ids: torch.Tensor, encoded: Encoded, vocab: int, answer_format: str) -> None:
    """Every VRT id (``>= vocab``) of sample ``b`` names one of its images' cells; none without VRTs.

    Args:
        input_ids: ``[B, T]`` model ids (prompt or completion).
        encoded: the batch's ``Encoded`` (its bank is ``None`` when the answer format uses no VRTs).
        vocab: ``V`` (``Backbone.vocab_rows``), the first VRT id.
        answer_format: the recipe's answer format name (for the error).
    """
    if encoded.bank is None:
        if bool((input_ids >= vocab).any()):
            raise ValueError(f"the input holds VRT ids (>= {vocab}) but answer format {answer_format!r} uses no VRTs")
        return
    # Largest VRT id of each sample against its image's cell count: one host read for the batch.
    cells = torch.tensor([encoded.cells(b) for b in range(input_ids.shape[0])], device=input_ids.device)
    highest = torch.where(input_ids >= vocab, input_ids - vocab, -1).amax(1) if input_ids.numel() else cells - 1
    bad = (highest >= cells).nonzero()
    if bad.numel():
        b = int(bad[0])
        k, cells = int(highest[b]), encoded.cells(b)
        own = encoded.sample_images[b]
        valid = f"<|VRT_0|> to <|VRT_{cells - 1}|>" if cells else "no VRT"
        if len(own) > 1:
            grids = " + ".join("{}x{}".format(*encoded.features[i].grid) for i in own)
            raise PromptError(
                f"sample {b} refers to <|VRT_{k}|> but its {len(own)} images have VRT grids {grids} "
                f"({cells} cells in all: {valid})"
            )
        grid = "no image" if not own else "a {}x{} VRT grid".format(*encoded.features[own[0]].grid)
        raise PromptError(f"sample {b} refers to <|VRT_{k}|> but its image has {grid} ({cells} cells: {valid})")


def image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """``predict``'s images as a list: one image (path, PIL image, 2-d/3-d array or tensor) or several."""
    if images is None or isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    ndim = getattr(images, "ndim", None)
    if ndim is not None and not isinstance(images, (list, tuple)):
        if ndim in (2, 3):
            return [images]
        if ndim != 4:
            raise ValueError(
                f"an image array has 2 or 3 dimensions (a batch of them 4), got shape {tuple(images.shape)}"
            )
    return list(images)


def _reason(err: ImageError) -> tuple[str, ...]:
    """The constructor arguments after the message that keep an ``ImageError``'s ``reason``."""
    from .data.image import ImageNotFoundError

    return () if isinstance(err, ImageNotFoundError) else (err.reason,)

"""A padt model as a directory vLLM loads: the backbone's config and weights with the VRT vocabulary.

What changes against the backbone's own Hugging Face directory: ``architectures`` names padt's vLLM
class, ``vocab_size`` is ``V + P_max`` (``P_max``: the most VRT cells the processor's ``max_pixels``
allows one image), the embedding table and the classifier get ``P_max`` zero rows (vLLM checks prompt ids
against ``vocab_size``; the rows are never read: VRT embeddings and logits come from the prototypes),
and a ``padt_vrt`` section plus the projection's weights (``padt.projection.*``) let the model build
prototypes. A model whose answer format has no VRTs (``text_box``) gets ``P_max = 0``: the same class then
only masks the ids padt's ``generate`` never emits (``Backbone.never_generate_ids``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from padt_core.atomic import atomic_directory

__all__ = ["SUPPORTED_BACKBONES", "UnsupportedBackboneError", "export_for_vllm", "max_cells"]

# padt backbone plugin -> padt's vLLM architecture of it
SUPPORTED_BACKBONES: dict[str, str] = {
    "qwen2_5_vl": "PaDTQwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "PaDTQwen3VLForConditionalGeneration",
}
WEIGHTS = "model.safetensors"
MARKER = "config.json"


class UnsupportedBackboneError(ValueError):
    """The model's backbone has no vLLM model class in padt."""


def check_backbone(name: str, source: str = "the model") -> str:
    """The vLLM architectures of padt backbone ``name``; an error naming the supported ones otherwise."""
    if name not in SUPPORTED_BACKBONES:
        raise UnsupportedBackboneError(
            f"{source} uses backbone {name!r}, which has no vLLM model class in padt; "
            f"supported with engine='vllm': {', '.join(sorted(SUPPORTED_BACKBONES))} (use engine='hf' for the rest)"
        )
    return SUPPORTED_BACKBONES[name]


def max_cells(model: Any) -> int:
    """``P_max``: VRT cells of the largest image the backbone's processor produces (``max_pixels`` / cell²)."""
    return int(model.backbone.config.max_pixels) // int(model.backbone.cell_size) ** 2


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])]).contiguous()


def export_for_vllm(model: Any, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` (a ``PaDTModel``) as a vLLM model directory; returns its path.

    Args:
        model: the padt model; its backbone must be one of :data:`SUPPORTED_BACKBONES`.
        directory: where to write it (whole or not at all: built in a hidden sibling, then renamed).
        overwrite: replace an existing export.

    Example:
        >>> export_for_vllm(PaDTModel.from_pretrained("runs/demo/model"), "runs/demo/vllm")  # doctest: +SKIP
    """
    padt_arch = check_backbone(model.recipe.backbone.name)
    out = Path(directory)
    if (out / MARKER).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an exported model; pass overwrite=True to replace it")
    hf = model.backbone.hf_model
    config = hf.config.to_dict()
    text = config.get("text_config", config)
    vocab = model.backbone.vocab_rows
    weights = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    if tied:
        weights.pop("lm_head.weight", None)  # vLLM ties it again; safetensors refuses shared storage
    cells = max_cells(model) if model.projection is not None else 0
    rows = vocab + cells
    for key in [k for k in weights if k.endswith("embed_tokens.weight") or k == "lm_head.weight"]:
        weights[key] = _pad_rows(weights[key], rows)
    text["vocab_size"] = rows
    if "vocab_size" in config and config is not text:
        config["vocab_size"] = rows
    vrt = model.recipe.vrt
    config["architectures"] = [padt_arch]
    config["padt_vrt"] = {
        "vocab_rows": vocab,
        "max_cells": cells,  # 0: an answer format without VRTs (text_box): only `suppress` applies
        "hidden_size": model.backbone.hidden_size,
        "prototypes": model.projection is not None,
        "rank": vrt.rank,
        "projection": vrt.projection,
        "position": vrt.position,
        "max_grid": list(vrt.max_grid),
        "max_images": int(getattr(vrt, "max_images", 0) or 0),  # the image-place embedding (multi-image recipes)
        # text ids padt's generate never emits (image pads, vision start/end), masked as there
        "suppress": list(getattr(model.backbone, "never_generate_ids", [])),
    }
    if model.projection is not None:
        for name, tensor in model.projection.state_dict().items():
            weights[f"padt.projection.{name}"] = tensor.detach().to(hf.dtype).contiguous()
    with atomic_directory(out, marker=MARKER) as tmp:
        model.backbone.save(str(tmp))  # processor, tokenizer and generation config as padt saves them
        save_file({k: v.cpu() for k, v in weights.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / MARKER).write_text(json.dumps(config, indent=2))
    return out

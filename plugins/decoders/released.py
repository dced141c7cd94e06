"""Key map of the released checkpoints' ``vl_decoder.*`` tensors onto the padt trunk and heads (reference §10.2).

The reference decoder is one module; here its parts belong to the trunk and to three head plugins.
Names inside the blocks are the same on both sides (``layers.py``), so most keys only change prefix;
the one combined tensor, ``bbox_score_mask_tokens.weight`` ``[3, d]``, is split row by row into the
box, score and mask heads' query tokens (rows 0, 1, 2, reference §5.2)::

    vp_embedding                        trunk.vrt_embedding
    input_projection.{0,1,3}            trunk.input_projection.{0,1,3}
    {low,high}_res_transformer*.*       trunk.<same>
    high_res_norm                       trunk.high_res_norm
    bbox_score_mask_tokens.weight[i]    heads.{box,score,mask}.query
    bbox_prediction.{0,2,4}             heads.box.mlp.{0,2,4}
    score_prediction                    heads.score.linear
    mask_output_upscaling1.{0,1}        heads.mask.upscale1, heads.mask.upscale1_norm
    mask_output_upscaling2.0            heads.mask.upscale2
    mask_output_mlp.{0,2,4}             heads.mask.object_mlp.{0,2,4}

A key is read only when the recipe has the part it maps to; the converter reports every key left
unread (``padt_core/convert.py``), so a recipe without, say, the mask head fails naming the mask keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["TASK_TOKENS", "released_decoder_state_dict"]

TASK_TOKENS = ("box", "score", "mask")  # head owning row i of bbox_score_mask_tokens

_TRUNK_PREFIXES = (
    ("vp_embedding.", "trunk.vrt_embedding."),
    ("input_projection.", "trunk.input_projection."),
    ("low_res_transformer.", "trunk.low_res_transformer."),
    ("high_res_transformer1.", "trunk.high_res_transformer1."),
    ("high_res_transformer2.", "trunk.high_res_transformer2."),
    ("high_res_norm.", "trunk.high_res_norm."),
)
_HEAD_PREFIXES = {  # head name -> (source prefix, target prefix) pairs
    "box": (("bbox_prediction.", "heads.box.mlp."),),
    "score": (("score_prediction.", "heads.score.linear."),),
    "mask": (
        ("mask_output_upscaling1.0.", "heads.mask.upscale1."),
        ("mask_output_upscaling1.1.", "heads.mask.upscale1_norm."),
        ("mask_output_upscaling2.0.", "heads.mask.upscale2."),
        ("mask_output_mlp.", "heads.mask.object_mlp."),
    ),
}
_TOKENS = "bbox_score_mask_tokens.weight"


def released_decoder_state_dict(
    tensors: Mapping[str, torch.Tensor], head_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Decoder state dict (keys relative to ``PaDTDecoder``) from ``vl_decoder.*`` tensors (prefix removed).

    Args:
        tensors: the released decoder's tensors by key, without the ``vl_decoder.`` prefix; only the
            keys this function maps are read.
        head_names: the heads of the recipe's decoder.
    """
    rules = list(_TRUNK_PREFIXES)
    for name in head_names:
        rules += _HEAD_PREFIXES.get(name, ())
    out: dict[str, torch.Tensor] = {}
    for key in tensors:
        for source, target in rules:
            if key.startswith(source):
                out[target + key[len(source) :]] = tensors[key]
                break
    # The task tokens are split only when all three heads exist: a missing head would drop its row.
    if _TOKENS in tensors and all(name in head_names for name in TASK_TOKENS):
        tokens = tensors[_TOKENS]
        if tokens.dim() != 2 or tokens.shape[0] != len(TASK_TOKENS):
            raise ValueError(
                f"vl_decoder.{_TOKENS} has shape {tuple(tokens.shape)}, expected [{len(TASK_TOKENS)}, hidden]"
            )
        for i, name in enumerate(TASK_TOKENS):
            out[f"heads.{name}.query"] = tokens[i : i + 1].clone()  # own storage: safetensors refuses views
    return out

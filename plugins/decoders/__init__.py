"""Decoder plugins: the PaDT trunk (``padt``) and the ``box``, ``score`` and ``mask`` heads.

Registered through the ``padt`` entry-point group like any third-party plugin::

    [project.entry-points.padt]
    decoders = "padt_plugins.decoders"

Parameter names against the released checkpoints' ``vl_decoder.*`` keys (reference §10.2), for the
future checkpoint adapter (which also needs the ``reference`` layout, see ``padt_core/layout.py``)::

    vp_embedding                          trunk.vrt_embedding
    input_projection.{0,1,3}              trunk.input_projection.{0,1,3}
    {low_res,high_res}_transformer*.*     trunk.<same block name>.<same names>  (norm1-6, self_attn, mlp, ...)
    high_res_norm                         trunk.high_res_norm
    bbox_score_mask_tokens.weight[i]      heads.{box,score,mask}.query   (i = 0, 1, 2)
    bbox_prediction.{0,2,4}               heads.box.mlp.{0,2,4}
    score_prediction                      heads.score.linear
    mask_output_upscaling1.{0,1}          heads.mask.upscale1, heads.mask.upscale1_norm
    mask_output_upscaling2.0              heads.mask.upscale2
    mask_output_mlp.{0,2,4}               heads.mask.object_mlp.{0,2,4}

Unverified against a checkpoint: which channel groups of the two pixel shuffles the reference maps
to which sub-cell (here: quadrant = channel // (d/4), row-major; ``mask_head.py``).
"""

from __future__ import annotations

from padt_core.plugins import hookimpl

from .box_head import BoxHead, BoxHeadConfig
from .mask_head import MaskHead, MaskHeadConfig
from .score_head import ScoreHead, ScoreHeadConfig
from .trunk import PaDTTrunk, PaDTTrunkConfig

__all__ = [
    "BoxHead",
    "BoxHeadConfig",
    "MaskHead",
    "MaskHeadConfig",
    "PaDTTrunk",
    "PaDTTrunkConfig",
    "ScoreHead",
    "ScoreHeadConfig",
]


@hookimpl
def padt_trunks() -> list[type]:
    return [PaDTTrunk]


@hookimpl
def padt_heads() -> list[type]:
    return [BoxHead, ScoreHead, MaskHead]

"""Decoder plugins: the PaDT trunk (``padt``) and the ``box``, ``score`` and ``mask`` heads.

Registered through the ``padt`` entry-point group like any third-party plugin::

    [project.entry-points.padt]
    decoders = "padt_plugins.decoders"

Released checkpoints' ``vl_decoder.*`` keys map onto the trunk and these heads in ``released.py``
(the combined ``bbox_score_mask_tokens`` split into the box/score/mask query tokens); they run in
``decoder.layout: reference`` (``padt_core/layout.py``, ``docs/layouts.md``).

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

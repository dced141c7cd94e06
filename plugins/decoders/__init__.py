"""Decoder plugins: the PaDT trunk (``padt``) and the ``box``, ``score`` and ``mask`` heads.

Registered through the ``padt`` entry-point group like any third-party plugin::

    [project.entry-points.padt]
    decoders = "padt_plugins.decoders"
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

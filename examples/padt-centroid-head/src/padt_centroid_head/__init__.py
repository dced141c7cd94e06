"""padt plugin: a ``centroid`` decoder head (object centre by soft-argmax over the image memory)."""

from __future__ import annotations

from padt_core.plugins import hookimpl

from .head import CentroidHead, CentroidHeadConfig

__all__ = ["CentroidHead", "CentroidHeadConfig"]


@hookimpl
def padt_heads() -> list[type]:
    return [CentroidHead]

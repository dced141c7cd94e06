"""ConvNet towers for the ``llava`` backbone: any timm model with ``feature_info`` and ``forward_intermediates``.

A ViT gives one grid of patch tokens; a ConvNet gives a pyramid of feature maps (stride 2, 4, 8, 16,
32 for an EfficientNet). The recipe picks two things from it:

* ``stage`` (an index into timm's ``feature_info``): the map the LLM's image tokens come from. Its
  stride times the backbone's ``merge`` is the VRT cell (EfficientNet-Lite0's stage 3 is stride 16:
  ``merge: 2`` gives 32-px cells, 7 x 7 on a 224-px image).
* ``fine_stages``: the maps the decoder's fine features come from (default: ``stage``). Coarser maps
  are repeated (nearest) up to the finest one's grid and concatenated along channels; the finest
  stride must divide the cell.

Everything after the last stage used (later blocks, the head, the classifier) is pruned, so every
parameter of the tower takes part in the loss. Maps come out ``NCHW``, hence raster order once flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CnnStages", "cnn_feature_maps", "cnn_stages"]


@dataclass(frozen=True)
class CnnStages:
    """Which ``feature_info`` entries a ConvNet tower uses, with their strides and widths."""

    stage: int
    fine: tuple[int, ...]
    stride: int
    channels: int
    fine_stride: int
    fine_channels: int

    @property
    def indices(self) -> list[int]:
        return sorted({self.stage, *self.fine})


def cnn_stages(vision: nn.Module, stage: int, fine_stages: list[int] | None = None) -> CnnStages:
    """Resolve (negative) stage indices against the model's ``feature_info``; check what the tower can give.

    Args:
        vision: a timm model (``feature_info`` list and ``forward_intermediates``).
        stage: feature stage of the LLM image tokens.
        fine_stages: feature stages of the decoder's fine features (default ``[stage]``).

    Example:
        >>> s = cnn_stages(timm.create_model("efficientnet_lite0"), 3, [2, 3])  # doctest: +SKIP
        >>> s.stride, s.fine_stride, s.fine_channels  # doctest: +SKIP
        (16, 8, 152)
    """
    info = getattr(vision, "feature_info", None)
    if not isinstance(info, list) or not hasattr(vision, "forward_intermediates"):
        name = type(vision).__name__
        raise ValueError(f"timm model {name} has no feature_info list / forward_intermediates: not usable as a tower")
    n = len(info)

    def resolve(i: int, field: str) -> int:
        if not -n <= i < n:
            strides = ", ".join(f"{j}: stride {e['reduction']}" for j, e in enumerate(info))
            raise ValueError(f"backbone.vision.{field} {i} is outside the model's {n} stages ({strides})")
        return i % n

    main = resolve(stage, "stage")
    fine = tuple(dict.fromkeys(resolve(i, "fine_stages") for i in (fine_stages or [stage])))
    fine_stride = min(int(info[i]["reduction"]) for i in fine)
    for i in fine:
        if int(info[i]["reduction"]) % fine_stride:
            raise ValueError(
                f"fine stage {i} (stride {info[i]['reduction']}) is not a multiple of stride {fine_stride}"
            )
    return CnnStages(
        stage=main,
        fine=fine,
        stride=int(info[main]["reduction"]),
        channels=int(info[main]["num_chs"]),
        fine_stride=fine_stride,
        fine_channels=sum(int(info[i]["num_chs"]) for i in fine),
    )


def prune_tower(vision: nn.Module, stages: CnnStages) -> None:
    """Drop the blocks after the last stage used, the head and the classifier (they would get no gradient)."""
    if hasattr(vision, "prune_intermediate_layers"):
        vision.prune_intermediate_layers(stages.indices, prune_head=True)


def cnn_feature_maps(vision: nn.Module, pixels: torch.Tensor, stages: CnnStages) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token map [N, C, H/s, W/s], fine map [N, C_fine, H/f, W/f])`` of a pixel batch.

    Example:
        >>> tokens, fine = cnn_feature_maps(tower, torch.zeros(1, 3, 224, 224), stages)  # doctest: +SKIP
    """
    index = stages.indices
    # Channels-last input sends every convolution to oneDNN (NCHW 1x1 convs take the slow im2col path):
    # EfficientNet-Lite0 to stage 3, 16 images at 224 px, one thread: 0.70 s against 1.0 s. The maps
    # keep their logical NCHW shape (flattening is raster order either way); values agree to ~1e-5.
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    maps = vision.forward_intermediates(pixels, indices=index, intermediates_only=True)
    by_stage = dict(zip(index, maps))
    h, w = pixels.shape[-2:]
    fh, fw = h // stages.fine_stride, w // stages.fine_stride
    fine = []
    for i in stages.fine:
        m = by_stage[i]
        if m.shape[-2:] != (fh, fw):
            ry, rx = fh // m.shape[-2], fw // m.shape[-1]
            m = m.repeat_interleave(ry, dim=-2).repeat_interleave(rx, dim=-1)
        fine.append(m)
    fine_map = fine[0] if len(fine) == 1 else torch.cat(fine, dim=1)
    return by_stage[stages.stage], fine_map

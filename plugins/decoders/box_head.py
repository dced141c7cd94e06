"""Box head: a normalised (cx, cy, w, h) box per object from its box query token (reference §5.5, §7.5, §8.3)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from padt_core.decoder import DecoderContext, Head, ObjectTargets
from padt_core.losses import box_cxcywh_to_xyxy, box_l1_loss, giou_loss
from padt_core.plugins import PluginConfig

from .layers import init_weights

__all__ = ["BoxHead", "BoxHeadConfig"]


class BoxHeadConfig(PluginConfig):
    """Recipe section for ``name: box``."""

    name: Literal["box"] = "box"
    giou_weight: float = Field(1.0, ge=0, description="weight of the 1 - GIoU term")
    l1_weight: float = Field(1.0, ge=0, description="weight of the L1 term on (cx, cy, w, h)")


class BoxHead(Head):
    """``sigmoid(MLP(token))`` = (cx, cy, w, h) as fractions of the image width/height."""

    name = "box"
    Config = BoxHeadConfig
    loss_keys = ("box_giou", "box_l1")

    def __init__(self, config: BoxHeadConfig, *, hidden_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size)
        d = hidden_size
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 4))
        init_weights(self.mlp)

    def predict(self, query_out: torch.Tensor, ctx: DecoderContext) -> torch.Tensor:
        """``[n, 4]`` (cx, cy, w, h) in (0, 1)."""
        return torch.sigmoid(self.mlp(query_out[:, 0]))

    def loss(self, pred: torch.Tensor, targets: ObjectTargets, ctx: DecoderContext) -> dict[str, torch.Tensor]:
        return {
            "box_giou": self.config.giou_weight * giou_loss(pred, targets.boxes),
            "box_l1": self.config.l1_weight * box_l1_loss(pred, targets.boxes),
        }

    def postprocess(self, pred: torch.Tensor, ctx: DecoderContext) -> list[list[float]]:
        """``[x1, y1, x2, y2]`` in original-image pixels, clipped to the image."""
        hw = ctx.original_sizes.to(pred.device).float()
        size = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=-1)
        xyxy = box_cxcywh_to_xyxy(pred.detach().float()) * size
        xyxy = torch.minimum(xyxy.clamp(min=0), size)
        return xyxy.cpu().tolist()

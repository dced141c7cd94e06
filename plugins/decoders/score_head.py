"""Score head: an IoU-aware confidence per object, trained to predict its box's GIoU (reference §7.5)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torchvision.ops import box_convert

from padt_core.decoder import DecoderContext, Head, ObjectTargets
from padt_core.plugins import PluginConfig

from .layers import init_weights
from .losses import generalized_iou, score_loss

__all__ = ["ScoreHead", "ScoreHeadConfig"]


class ScoreHeadConfig(PluginConfig):
    """Recipe section for ``name: score``."""

    name: Literal["score"] = "score"
    weight: float = Field(1.0, ge=0, description="weight of the score regression term")


class ScoreHead(Head):
    """A logit per object; ``sigmoid(logit)`` learns ``(GIoU + 1) / 2`` of the predicted box."""

    name = "score"
    Config = ScoreHeadConfig
    requires = ("box",)  # the target is the GIoU of the box head's prediction
    loss_keys = ("score",)
    target_keys = ("box",)  # GIoU of the predicted box with the GT box
    output_keys = ("score",)

    def __init__(self, config: ScoreHeadConfig, *, hidden_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size)
        self.linear = nn.Linear(hidden_size, 1)
        init_weights(self.linear)

    def predict(self, query_out: torch.Tensor, ctx: DecoderContext) -> torch.Tensor:
        """``[n]`` logits."""
        return self.linear(query_out[:, 0]).squeeze(-1)

    def loss(self, pred: torch.Tensor, targets: ObjectTargets, ctx: DecoderContext) -> dict[str, torch.Tensor]:
        boxes = box_convert(ctx.predictions["box"].float(), "cxcywh", "xyxy")
        return {"score": self.config.weight * score_loss(pred, generalized_iou(boxes, targets.boxes))}

    def postprocess(self, pred: torch.Tensor, ctx: DecoderContext) -> list[float]:
        """``sigmoid(logit)`` in [0, 1]."""
        return torch.sigmoid(pred.detach().float()).cpu().tolist()

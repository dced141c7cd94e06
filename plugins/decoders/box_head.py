"""Box head: a normalised (cx, cy, w, h) box per object from its box query token (reference §5.5, §7.5, §8.3)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torchvision.ops import box_convert

from padt_core.decoder import DecoderContext, Head, ObjectTargets
from padt_core.layout import vrt_cell_rc
from padt_core.plugins import PluginConfig

from .layers import init_weights
from .losses import box_l1_loss, giou_loss

__all__ = ["BoxHead", "BoxHeadConfig", "cell_hull"]


def cell_hull(ctx: DecoderContext) -> torch.Tensor:
    """``[n, 4]`` (cx, cy, w, h), normalised, of the bounding hull of each object's VRT cells."""
    inputs = ctx.inputs
    counts = inputs.counts.long()
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    grids = ctx.grids.to(counts.device)
    r, c = (x.float() for x in vrt_cell_rc(inputs.vrt_cells, grids[owner, 1]))
    n = counts.numel()
    lo = torch.full((n, 2), float("inf"), device=counts.device)
    hi = torch.full((n, 2), float("-inf"), device=counts.device)
    rc = torch.stack([r, c], dim=-1)
    lo = lo.scatter_reduce(0, owner.unsqueeze(-1).expand(-1, 2), rc, reduce="amin")
    hi = hi.scatter_reduce(0, owner.unsqueeze(-1).expand(-1, 2), rc + 1, reduce="amax")
    size = grids.float()  # (rows, cols)
    y1, x1 = lo[:, 0] / size[:, 0], lo[:, 1] / size[:, 1]
    y2, x2 = hi[:, 0] / size[:, 0], hi[:, 1] / size[:, 1]
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


class BoxHeadConfig(PluginConfig):
    """Recipe section for ``name: box``."""

    name: Literal["box"] = "box"
    giou_weight: float = Field(1.0, ge=0, description="weight of the 1 - GIoU term")
    l1_weight: float = Field(1.0, ge=0, description="weight of the L1 term on (cx, cy, w, h)")
    prior: Literal["none", "hull"] = Field(
        "none", description="hull: refine the box of the emitted cells' hull instead of predicting from scratch"
    )


class BoxHead(Head):
    """``sigmoid(MLP(token))`` = (cx, cy, w, h) as fractions of the image width/height."""

    name = "box"
    Config = BoxHeadConfig
    loss_keys = ("box_giou", "box_l1")
    target_keys = ("box",)
    output_keys = ("box",)  # xyxy pixels

    def __init__(self, config: BoxHeadConfig, *, hidden_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size)
        d = hidden_size
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 4))
        init_weights(self.mlp)

    def predict(self, query_out: torch.Tensor, ctx: DecoderContext) -> torch.Tensor:
        """``[n, 4]`` (cx, cy, w, h) in (0, 1)."""
        delta = self.mlp(query_out[:, 0])
        if self.config.prior == "none":
            return torch.sigmoid(delta)
        # The emitted cells already say where the object is: start from their hull, learn the refinement.
        hull = cell_hull(ctx).to(delta.dtype).clamp(1e-3, 1 - 1e-3)
        return torch.sigmoid(torch.logit(hull) + delta)

    def loss(self, pred: torch.Tensor, targets: ObjectTargets, ctx: DecoderContext) -> dict[str, torch.Tensor]:
        return {
            "box_giou": self.config.giou_weight * giou_loss(pred, targets.boxes),
            "box_l1": self.config.l1_weight * box_l1_loss(pred, targets.boxes),
        }

    def postprocess(self, pred: torch.Tensor, ctx: DecoderContext) -> list[list[float]]:
        """``[x1, y1, x2, y2]`` in original-image pixels, clipped to the image."""
        hw = ctx.original_sizes.to(pred.device).float()
        size = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=-1)
        xyxy = box_convert(pred.detach().float(), "cxcywh", "xyxy") * size
        xyxy = torch.minimum(xyxy.clamp(min=0), size)
        return xyxy.cpu().tolist()

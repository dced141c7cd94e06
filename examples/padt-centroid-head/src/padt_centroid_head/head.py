"""The ``centroid`` head: each object's centre as the attention-weighted centre of its image's patches.

Everything it uses is public padt API: ``Head`` (query tokens, predict/loss/postprocess, the
``target_keys`` / ``output_keys`` it declares, the ``draw`` hook), ``ObjectTargets`` (its own
``"centroid"`` targets, which the ``shapes_centroid`` dataset puts into each annotation's ``extra``),
``ObjectMemory.project`` (read the trunk's per-object memory without materialising it) and the
decoder ``layout`` (where each memory row sits in the image).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from padt_core.decoder import DecoderContext, Head, ObjectTargets
from padt_core.plugins import PluginConfig
from padt_core.viz import DrawContext

__all__ = ["CentroidHead", "CentroidHeadConfig"]


class CentroidHeadConfig(PluginConfig):
    """Recipe section ``{name: centroid, ...}``; unknown keys are rejected by the recipe loader."""

    name: Literal["centroid"] = "centroid"
    weight: float = Field(1.0, ge=0, description="weight of the L1 loss to the annotated centre (extra['centroid'])")
    key_dim: int = Field(64, ge=1, description="width of the per-patch keys the query token is matched with")


class CentroidHead(Head):
    """``[n, 2]`` (x, y) in [0, 1]: soft-argmax of ``query · key(memory row)`` over the patch centres."""

    name = "centroid"
    Config = CentroidHeadConfig
    num_queries = 1
    reads_memory = True  # asks the trunk to keep its final per-object memory
    loss_keys = ("centroid",)
    target_keys = ("centroid",)  # ObjectAnn.extra["centroid"]: (x, y) normalised; objects without it are skipped
    output_keys = ("centroid",)  # PredictedObject.outputs["centroid"]: [x, y] in original-image pixels

    def __init__(self, config: CentroidHeadConfig, *, hidden_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size)  # creates self.query: [1, hidden_size]
        self.key = nn.Linear(hidden_size, config.key_dim)
        self.query_proj = nn.Linear(hidden_size, config.key_dim)

    def predict(self, query_out: torch.Tensor, ctx: DecoderContext) -> torch.Tensor:
        memory = ctx.memory  # fine grid if the backbone has fine features, else the VRT grid
        keys = memory.project(self.key.weight, self.key.bias)  # [n, N, key_dim]
        query = self.query_proj(query_out[:, 0])  # [n, key_dim]
        logits = torch.einsum("nrk,nk->nr", keys, query) / self.config.key_dim**0.5
        weights = logits.float().masked_fill(~memory.valid, float("-inf")).softmax(-1)  # padding rows: 0
        centres = ctx.layout.cell_centres(memory.grids, keys.shape[1])  # [n, N, 2] (x, y) in [0, 1]
        return torch.einsum("nr,nrc->nc", weights, centres).to(query.dtype)

    def loss(self, pred: torch.Tensor, targets: ObjectTargets, ctx: DecoderContext) -> dict[str, torch.Tensor]:
        """L1 to the annotated centre; the decoder passes only objects that have one."""
        centre = targets["centroid"].to(pred.device).float()  # [n, 2] (x, y) in [0, 1]
        return {"centroid": self.config.weight * (pred.float() - centre).abs().sum(-1).mean()}

    def postprocess(self, pred: torch.Tensor, ctx: DecoderContext) -> list[list[float]]:
        """``[x, y]`` in original-image pixels."""
        hw = ctx.original_sizes.to(pred.device).float()
        return (pred.detach().float() * hw.flip(-1)).cpu().tolist()

    def draw(self, key: str, value: Any, ctx: DrawContext) -> bool:
        """A diamond at the centre in the object's colour (``padt predict --out``'s PNG)."""
        x, y = value
        r = 5
        ctx.draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], outline=ctx.colour, width=2)
        ctx.draw.point((x, y), fill=ctx.colour)
        return True

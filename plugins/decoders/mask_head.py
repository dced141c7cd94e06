"""Mask head: 4x4 mask logits per fine patch from the object's memory (reference §5.5 step 8, §7.5, §8.3).

Each fine memory row ``m`` becomes a 4x4 block of embeddings by two 2x "linear pixel shuffles",
and each embedding's logit is its dot product with a vector ``v`` made from the object's mask token::

    m [d] ─ Linear, RMSNorm, GELU ─> 4 x [d/4]      quadrant (a, b), a = row, b = col
          ─ Linear(d/4), GELU    ─> 4 x 4 x [d/16]  sub-quadrant (c, e)
          · v [d/16]             ─> logit at sub-cell (row 2a + c, col 2b + e) of the patch

Blocks go onto the mask canvas by ``ctx.layout`` (4 mask pixels per fine patch side: 3.5 px for
Qwen2.5-VL's 14-px patches).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from padt_core.decoder import DecoderContext, Head, ObjectTargets
from padt_core.plugins import PluginConfig

from .layers import RMSNorm, compiled, init_weights
from .losses import dice_loss, sigmoid_focal_loss

__all__ = ["SUBCELLS", "MaskHead", "MaskHeadConfig"]

SUBCELLS = 4  # mask pixels per fine patch side (two 2x pixel shuffles)


class MaskHeadConfig(PluginConfig):
    """Recipe section for ``name: mask``."""

    name: Literal["mask"] = "mask"
    dice_weight: float = Field(1.0, ge=0)
    focal_weight: float = Field(1.0, ge=0)
    focal_alpha: float = Field(0.25, ge=0, le=1, description="focal-loss weight of positive pixels")
    focal_gamma: float = Field(2.0, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1, description="sigmoid threshold of the output mask")


class MaskHead(Head):
    """Mask logits ``[n, 4*FH, 4*FW]`` on the fine grid; thresholded and resized to the original image."""

    name = "mask"
    Config = MaskHeadConfig
    reads_memory = True
    needs_fine = True
    loss_keys = ("mask_dice", "mask_focal")
    target_keys = ("mask",)  # objects without a mask are left out of its loss
    output_keys = ("mask",)  # bool [H, W]

    def __init__(self, config: MaskHeadConfig, *, hidden_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size)
        d = hidden_size
        if d % 16:
            raise ValueError(f"the mask head needs a width divisible by 16 (two 2x2 pixel shuffles), got {d}")
        self.upscale1 = nn.Linear(d, d)
        self.upscale1_norm = RMSNorm(d)
        self.upscale2 = nn.Linear(d // 4, d // 4)
        self.object_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d // 16))
        init_weights(self)

    # --- prediction --------------------------------------------------------------------------------------
    def predict(self, query_out: torch.Tensor, ctx: DecoderContext) -> torch.Tensor:
        """``[n, 4*FH, 4*FW]`` logits, ``(FH, FW)`` the largest fine grid; zero outside an object's own image."""
        fine_grids = ctx.require_fine("the mask head")
        memory = ctx.memory
        if memory is None or not torch.equal(memory.grids, fine_grids):
            raise ValueError("the mask head needs the trunk's memory on the fine grid")
        if torch.is_grad_enabled():
            rows = memory.project(self.upscale1.weight, self.upscale1.bias)
            token = query_out[:, 0]
            train_logits = compiled(self, "_train_logits", rows, token) if self.compile_training else self._train_logits
            logits = train_logits(rows, token)
        else:  # inference: a few objects at a time, so the [n, N, d] buffers never exist at once
            v = self.object_mlp(query_out[:, 0])  # [n, d/16]
            chunks = memory.project_chunks(self.upscale1.weight, self.upscale1.bias)
            logits = torch.cat([self._logits(x, v[objects]) for objects, x in chunks])
        return ctx.layout.place_patches(logits, fine_grids)

    def _train_logits(self, rows: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """``[n, N, 4, 4]`` from the projected memory rows and each object's mask token (tensor math only)."""
        return self._logits(rows, self.object_mlp(token))

    def _logits(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[n, N, 4, 4]`` sub-cell logits from projected memory rows ``x`` ``[n, N, d]`` and ``v`` ``[n, d/16]``."""
        n, rows, d = x.shape
        if torch.is_grad_enabled():
            x = F.gelu(self.upscale1_norm(x))
            x = F.gelu(self.upscale2(x.view(n, rows, 4, d // 4)))  # [n, N, (a, b), d/4]
        else:  # inference: the same ops in place; these buffers are the head's main cost
            x = _gelu_(_rms_norm_(x, self.upscale1_norm))
            x = _gelu_(self.upscale2(x.view(n, rows, 4, d // 4)))
        logits = torch.einsum("nqsc,nc->nqs", x.reshape(n, rows, 16, d // 16), v)  # [n, N, (a, b, c, e)]
        return logits.view(n, rows, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, rows, SUBCELLS, SUBCELLS)

    # --- loss ----------------------------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, targets: ObjectTargets, ctx: DecoderContext) -> dict[str, torch.Tensor]:
        # PaDTDecoder.loss hands this head only objects that carry a mask (target_keys)
        gt, valid = self._targets(targets, ctx, pred.shape[-2:])
        terms = compiled(self, "_loss_terms", pred, gt, valid) if self.compile_training else self._loss_terms
        dice, focal = terms(pred, gt, valid)
        return {"mask_dice": dice, "mask_focal": focal}

    def _loss_terms(
        self, logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted dice and focal terms, averaged over objects (tensor math only)."""
        cfg = self.config
        dice = dice_loss(logits, gt, valid).mean()
        focal = sigmoid_focal_loss(logits, gt, valid, cfg.focal_alpha, cfg.focal_gamma).mean()
        return cfg.dice_weight * dice, cfg.focal_weight * focal

    def _targets(
        self, targets: ObjectTargets, ctx: DecoderContext, canvas: torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GT masks resized to each object's mask grid on the canvas, and the valid region."""
        n = ctx.num_objects
        masks = targets.mask_list(n)
        sizes = (ctx.require_fine("the mask head") * SUBCELLS).tolist()
        device = ctx.grids.device
        gt = torch.zeros(n, *canvas, device=device)
        has_mask = torch.tensor([m is not None for m in masks], device=device)
        groups: dict[tuple, list[int]] = {}  # objects whose GT and target sizes agree resize together
        for o, m in enumerate(masks):
            if m is not None:
                if m.dim() != 2:
                    raise ValueError(f"object {o}: GT mask must be [H, W], got shape {tuple(m.shape)}")
                groups.setdefault((tuple(m.shape), tuple(sizes[o])), []).append(o)
        for (_, (h, w)), objects in groups.items():
            stack = torch.stack([masks[o] for o in objects]).to(device=device, dtype=torch.float32)[:, None]
            # antialias: averaging over the source pixels of each mask pixel (a plain bilinear sample
            # would skip thin parts when the GT is much larger than the mask grid)
            resized = F.interpolate(stack, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            gt[objects, :h, :w] = (resized[:, 0] > 0.5).float()
        hw = torch.tensor(sizes, device=device).view(n, 2)
        ys = torch.arange(canvas[0], device=device)[None, :, None]
        xs = torch.arange(canvas[1], device=device)[None, None, :]
        valid = (ys < hw[:, 0, None, None]) & (xs < hw[:, 1, None, None]) & has_mask[:, None, None]
        return gt, valid

    # --- post-processing --------------------------------------------------------------------------------
    def postprocess(self, pred: torch.Tensor, ctx: DecoderContext) -> list[np.ndarray]:
        """Boolean ``[H, W]`` masks at the original image size: bilinear resize of the logits, then threshold."""
        n = ctx.num_objects
        out: list[np.ndarray | None] = [None] * n
        cutoff = math.log(self.config.threshold / (1 - self.config.threshold))
        sizes = (ctx.require_fine("the mask head") * SUBCELLS).tolist()
        originals = ctx.original_sizes.tolist()
        groups: dict[tuple, list[int]] = {}  # objects of one image share both sizes
        for o in range(n):
            groups.setdefault((*sizes[o], *originals[o]), []).append(o)
        for (h, w, oh, ow), objects in groups.items():
            logits = pred.detach()[objects, :h, :w].float()[:, None]
            resized = F.interpolate(logits, size=(oh, ow), mode="bilinear", align_corners=False)[:, 0]
            for o, mask in zip(objects, (resized > cutoff).cpu().numpy()):
                out[o] = mask
        return out


def _rms_norm_(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """``norm(x)`` written into ``x`` (norm statistics in float32)."""
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).pow_(2).div_(x.shape[-1])
    return x.mul_(ms.add_(norm.eps).rsqrt_().to(x.dtype)).mul_(norm.weight)


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU in place."""
    return torch.ops.aten.gelu_(x)

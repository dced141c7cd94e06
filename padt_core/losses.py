"""Decoder losses: box (GIoU + L1), score (regression to GIoU), mask (dice + sigmoid focal).

Reference §7.5, with two deliberate differences: everything is computed in float32 whatever the
model dtype (the reference casts GT boxes to bf16, §12.16), and objects are averaged exactly (no
``+1e-4`` in the denominators). Every function takes per-object tensors with the object on dim 0;
callers handle the zero-object case (see ``PaDTDecoder.loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_l1_loss",
    "box_xyxy_to_cxcywh",
    "dice_loss",
    "generalized_iou",
    "giou_loss",
    "score_loss",
    "sigmoid_focal_loss",
]

_EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (cx, cy, w, h) → (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) → (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def generalized_iou(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of matching box pairs, ``[n, 4]`` x ``[n, 4]`` → ``[n]`` in [-1, 1] (float32)."""
    p, t = pred_xyxy.float(), target_xyxy.float()
    area_p = (p[:, 2] - p[:, 0]).clamp(min=0) * (p[:, 3] - p[:, 1]).clamp(min=0)
    area_t = (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)
    lt, rb = torch.maximum(p[:, :2], t[:, :2]), torch.minimum(p[:, 2:], t[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_p + area_t - inter
    iou = inter / (union + _EPS)
    hull = (torch.maximum(p[:, 2:], t[:, 2:]) - torch.minimum(p[:, :2], t[:, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + _EPS)


def giou_loss(pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """Mean over objects of ``1 - GIoU``."""
    return (1 - generalized_iou(box_cxcywh_to_xyxy(pred_cxcywh.float()), target_xyxy)).mean()


def box_l1_loss(pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """L1 in (cx, cy, w, h), summed over the four coordinates and averaged over objects (reference §7.5)."""
    return (pred_cxcywh.float() - box_xyxy_to_cxcywh(target_xyxy.float())).abs().sum(-1).mean()


def score_loss(score_logits: torch.Tensor, giou: torch.Tensor) -> torch.Tensor:
    """MSE between ``2*sigmoid(logit) - 1`` and the detached GIoU, so ``sigmoid`` learns ``(GIoU + 1) / 2``."""
    return ((2 * torch.sigmoid(score_logits.float()) - 1 - giou.detach().float()) ** 2).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-object dice loss ``1 - (2|σ·t| + 1) / (|σ| + |t| + 1)`` over valid pixels, ``[n, H, W]`` → ``[n]``."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    t, m = targets.float().flatten(1), valid.float().flatten(1)
    inter = (prob * t * m).sum(-1)
    return 1 - (2 * inter + 1) / ((prob * m).sum(-1) + (t * m).sum(-1) + 1)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-object sigmoid focal loss (α for positives, 1-α for negatives), mean over valid pixels → ``[n]``."""
    x, t, m = logits.float().flatten(1), targets.float().flatten(1), valid.float().flatten(1)
    prob = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    weight = alpha * t + (1 - alpha) * (1 - t)
    loss = weight * ce * (1 - p_t) ** gamma
    return (loss * m).sum(-1) / m.sum(-1).clamp(min=1)

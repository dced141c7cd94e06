"""Losses of the built-in heads: box (GIoU + L1), score (regression to GIoU), mask (dice + sigmoid focal).

Reference §7.5, on ``torchvision.ops`` where it has the term (GIoU, focal, box conversion), with two
deliberate differences: everything is computed in float32 whatever the model dtype (the reference
casts GT boxes to bf16, §12.16), and objects are averaged exactly (no ``+1e-4`` in the denominators).
Every function takes per-object tensors with the object on dim 0; callers handle the zero-object
case (see ``PaDTDecoder.loss``). Boxes are valid ``x1 <= x2, y1 <= y2`` (``ObjectAnn`` checks GT
boxes; predictions are ``(cx, cy, w, h)`` with ``w, h >= 0``); zero-area boxes are fine.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

__all__ = ["box_l1_loss", "dice_loss", "generalized_iou", "giou_loss", "score_loss", "sigmoid_focal_loss"]

_EPS = 1e-7  # torchvision's default, in both the IoU and the hull term


def generalized_iou(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of matching box pairs, ``[n, 4]`` x ``[n, 4]`` → ``[n]`` in [-1, 1] (float32).

    The diagonal of the reference's pairwise GIoU matrix, without building the matrix.

    Example:
        >>> generalized_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
        tensor([1.])
    """
    return 1 - generalized_box_iou_loss(pred_xyxy.float(), target_xyxy.float(), reduction="none", eps=_EPS)


def giou_loss(pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """Mean over objects of ``1 - GIoU`` between predicted ``(cx, cy, w, h)`` and GT ``xyxy`` boxes."""
    pred = box_convert(pred_cxcywh.float(), "cxcywh", "xyxy")
    return generalized_box_iou_loss(pred, target_xyxy.float(), reduction="mean", eps=_EPS)


def box_l1_loss(pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """L1 in (cx, cy, w, h), summed over the four coordinates and averaged over objects (reference §7.5)."""
    target = box_convert(target_xyxy.float(), "xyxy", "cxcywh")
    return (pred_cxcywh.float() - target).abs().sum(-1).mean()


def score_loss(score_logits: torch.Tensor, giou: torch.Tensor) -> torch.Tensor:
    """MSE between ``2*sigmoid(logit) - 1`` and the detached GIoU, so ``sigmoid`` learns ``(GIoU + 1) / 2``."""
    return ((2 * torch.sigmoid(score_logits.float()) - 1 - giou.detach().float()) ** 2).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-object dice loss ``1 - (2|σ·t| + 1) / (|σ| + |t| + 1)`` over valid pixels, ``[n, H, W]`` → ``[n]``.

    torchvision has no dice loss; this is the reference's smoothed form, restricted to ``valid``.
    """
    prob = torch.sigmoid(logits.float()).flatten(1)
    t, m = targets.float().flatten(1), valid.float().flatten(1)
    inter = (prob * t * m).sum(-1)
    return 1 - (2 * inter + 1) / ((prob * m).sum(-1) + (t * m).sum(-1) + 1)


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-object sigmoid focal loss (α for positives, 1-α for negatives), mean over valid pixels → ``[n]``.

    ``torchvision.ops.sigmoid_focal_loss`` per pixel, averaged over each object's valid pixels (an
    object without any counts 0).
    """
    x, t, m = logits.float().flatten(1), targets.float().flatten(1), valid.float().flatten(1)
    loss = _tv_sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    return (loss * m).sum(-1) / m.sum(-1).clamp(min=1)

"""Head losses: values on hand-checked cases, float32 output, masking of invalid pixels, and agreement
with the hand-written implementation they replaced (torchvision.ops now does GIoU, focal, conversion)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from padt_plugins.decoders.losses import (
    box_l1_loss,
    dice_loss,
    generalized_iou,
    giou_loss,
    score_loss,
    sigmoid_focal_loss,
)
from torchvision.ops import box_convert


# --- the pre-torchvision implementation (padt_core/losses.py before issue 17), kept as the oracle ----------
def _old_generalized_iou(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p, t, eps = p.float(), t.float(), 1e-7
    area_p = (p[:, 2] - p[:, 0]).clamp(min=0) * (p[:, 3] - p[:, 1]).clamp(min=0)
    area_t = (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)
    lt, rb = torch.maximum(p[:, :2], t[:, :2]), torch.minimum(p[:, 2:], t[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_p + area_t - inter
    hull = (torch.maximum(p[:, 2:], t[:, 2:]) - torch.minimum(p[:, :2], t[:, :2])).clamp(min=0).prod(-1)
    return inter / (union + eps) - (hull - union) / (hull + eps)


def _old_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _old_focal(x, t, m, alpha=0.25, gamma=2.0):
    x, t, m = x.float().flatten(1), t.float().flatten(1), m.float().flatten(1)
    prob = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    loss = (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma
    return (loss * m).sum(-1) / m.sum(-1).clamp(min=1)


def _random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    """Valid xyxy boxes in [0, 1], a quarter of them degenerate (zero width, zero height or a point)."""
    a, b = torch.rand(n, 2, generator=gen), torch.rand(n, 2, generator=gen)
    boxes = torch.cat([torch.minimum(a, b), torch.maximum(a, b)], dim=-1)
    kind = torch.randint(0, 8, (n,), generator=gen)
    boxes[kind == 0, 2] = boxes[kind == 0, 0]  # zero width
    boxes[kind == 1, 3] = boxes[kind == 1, 1]  # zero height
    boxes[kind == 2, 2:] = boxes[kind == 2, :2]  # a point
    return boxes


def test_torchvision_giou_equals_the_old_implementation_on_random_and_degenerate_boxes():
    gen = torch.Generator().manual_seed(0)
    pred, target = _random_boxes(4000, gen), _random_boxes(4000, gen)
    # identical, touching and nested pairs too
    target[:200] = pred[:200]
    target[200:400, 0] = pred[200:400, 2]  # touching on the right edge (kept valid: x1 <= x2)
    target[200:400, 2] = torch.maximum(target[200:400, 2], target[200:400, 0])
    old = _old_generalized_iou(pred, target)
    torch.testing.assert_close(generalized_iou(pred, target), old, atol=1e-6, rtol=0)
    pred_c = box_convert(pred, "xyxy", "cxcywh")
    torch.testing.assert_close(
        giou_loss(pred_c, target),
        (1 - _old_generalized_iou(_old_cxcywh_to_xyxy(pred_c), target)).mean(),
        atol=1e-6,
        rtol=0,
    )
    # The same gradients reach a prediction of positive size (the box head's sigmoid never gives w or
    # h = 0; at zero size the two differ in subgradient, and both explode through 1 / (union + eps)).
    sized = (pred_c[:, 2:] > 1e-3).all(-1)
    p1, p2 = pred_c[sized].clone().requires_grad_(), pred_c[sized].clone().requires_grad_()
    giou_loss(p1, target[sized]).backward()
    (1 - _old_generalized_iou(_old_cxcywh_to_xyxy(p2), target[sized])).mean().backward()
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-6, rtol=0)


def test_torchvision_focal_equals_the_old_implementation():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 9, 11, generator=gen) * 4
    target = (torch.rand(6, 9, 11, generator=gen) > 0.6).float()
    valid = torch.rand(6, 9, 11, generator=gen) > 0.3
    valid[0] = False  # an object without valid pixels counts 0
    for alpha, gamma in ((0.25, 2.0), (0.5, 0.0), (0.9, 3.5)):
        torch.testing.assert_close(
            sigmoid_focal_loss(logits, target, valid, alpha, gamma),
            _old_focal(logits, target, valid, alpha, gamma),
            atol=1e-6,
            rtol=0,
        )
    assert sigmoid_focal_loss(logits, target, valid)[0].item() == 0.0


def test_box_conversions_round_trip():
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.9]])
    assert box_convert(xyxy, "xyxy", "cxcywh")[0].tolist() == pytest.approx([0.3, 0.55, 0.4, 0.7])
    torch.testing.assert_close(_old_cxcywh_to_xyxy(box_convert(xyxy, "xyxy", "cxcywh")), xyxy)


def test_generalized_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    # overlap 1, union 7, hull 9 → 1/7 - 2/9; identical → 1; disjoint: 0 - (3 - 2) / 3
    expected = [1 / 7 - 2 / 9, 1.0, -1 / 3]
    assert generalized_iou(a, b).tolist() == pytest.approx(expected, abs=1e-6)


def test_box_losses_in_float32_from_bf16():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    target = torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    assert giou_loss(pred.bfloat16(), target).dtype == torch.float32
    assert box_l1_loss(pred.bfloat16(), target).dtype == torch.float32
    assert giou_loss(pred, target).item() == pytest.approx(0.0, abs=1e-5)
    # (cx, cy, w, h) of the target = (0.5, 0.5, 0.2, 0.4): L1 = 0; shifting cx by 0.1 gives 0.1
    assert box_l1_loss(pred, target).item() == pytest.approx(0.0, abs=1e-6)
    assert box_l1_loss(torch.tensor([[0.6, 0.5, 0.2, 0.4]]), target).item() == pytest.approx(0.1, abs=1e-6)


def test_score_loss_targets_detached_giou():
    logit = torch.tensor([0.0, 10.0], requires_grad=True)
    giou = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = score_loss(logit, giou)
    # 2*sigmoid(0) - 1 = 0 = target; 2*sigmoid(10) - 1 ≈ 1 = target
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert giou.grad is None or giou.grad.abs().sum() == 0


def test_dice_and_focal_only_over_valid_pixels():
    logits = torch.tensor([[[10.0, -10.0], [10.0, 3.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    valid = torch.tensor([[[True, True], [True, False]]])  # the wrong pixel (1, 1) is outside
    assert dice_loss(logits, target, valid).item() == pytest.approx(0.0, abs=1e-3)
    assert sigmoid_focal_loss(logits, target, valid).item() == pytest.approx(0.0, abs=1e-6)
    everything = torch.ones_like(valid)
    assert dice_loss(logits, target, everything).item() > 0.1
    assert sigmoid_focal_loss(logits, target, everything).item() > 0.1


def test_focal_loss_value_and_alpha():
    logits, target, valid = torch.zeros(1, 1, 1), torch.ones(1, 1, 1), torch.ones(1, 1, 1, dtype=torch.bool)
    # p = 0.5: CE = ln 2, (1 - p_t)^2 = 0.25, alpha = 0.25 for a positive pixel
    expected = 0.25 * 0.25 * torch.log(torch.tensor(2.0)).item()
    assert sigmoid_focal_loss(logits, target, valid).item() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_focal_loss(logits, 1 - target, valid).item() == pytest.approx(3 * expected, rel=1e-5)

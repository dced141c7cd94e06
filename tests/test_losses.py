"""Decoder losses: values on hand-checked cases, float32 output, masking of invalid pixels."""

from __future__ import annotations

import pytest
import torch

from padt_core.losses import (
    box_cxcywh_to_xyxy,
    box_l1_loss,
    box_xyxy_to_cxcywh,
    dice_loss,
    generalized_iou,
    giou_loss,
    score_loss,
    sigmoid_focal_loss,
)


def test_box_conversions_round_trip():
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.9]])
    assert box_xyxy_to_cxcywh(xyxy)[0].tolist() == pytest.approx([0.3, 0.55, 0.4, 0.7])
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)


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

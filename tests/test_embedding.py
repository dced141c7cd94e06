"""Prototype projection: zero at start, low-rank residual, optional 2-D position embeddings."""

from __future__ import annotations

import pytest
import torch

from padt_core.embedding import PrototypeBank, PrototypeProjection, embed_with_bank
from padt_core.head import extend_logits


def test_prototypes_start_at_zero_and_position_tables_add_by_cell():
    tokens = torch.randn(6, 16)
    for position in ("none", "learned", "sinusoidal"):
        proj = PrototypeProjection(16, rank=4, position=position, max_grid=(4, 4))
        assert proj(tokens, (2, 3)).abs().max() == 0
    proj = PrototypeProjection(16, rank=4, position="learned", max_grid=(4, 4))
    with torch.no_grad():
        proj.row_embed.copy_(torch.arange(4.0).unsqueeze(1).expand(4, 16))
        proj.col_embed.copy_(10 * torch.arange(4.0).unsqueeze(1).expand(4, 16))
    out = proj(tokens, (2, 3))  # LayerNorm is still zero: only positions remain
    assert out[:, 0].tolist() == [0, 10, 20, 1, 11, 21]  # raster: row r, col c -> r + 10 c
    with pytest.raises(ValueError, match=r"exceeds vrt.max_grid \[4, 4\]"):
        proj(torch.randn(25, 16), (5, 5))
    sin = PrototypeProjection(16, rank=4, position="sinusoidal")
    with torch.no_grad():
        sin.pos_gain.fill_(1.0)
    big = sin(torch.randn(100 * 100, 16), (100, 100))  # no table, no limit
    assert not torch.allclose(big[0], big[1]) and not torch.allclose(big[0], big[100])


def test_bank_embedding_and_logits_are_per_sample():
    protos = [torch.randn(3, 8), torch.randn(5, 8)]
    bank = PrototypeBank.from_prototypes(protos, [1, -1, 0], 8, torch.device("cpu"), torch.float32)
    assert bank.valid.sum(1).tolist() == [5, 0, 3]
    vocab = 20
    ids = torch.tensor([[vocab + 4, 3], [2, 3], [vocab + 2, vocab + 0]])
    text = torch.zeros(3, 2, 8)
    out = embed_with_bank(text, ids, vocab, bank)
    torch.testing.assert_close(out[0, 0], protos[1][4])
    torch.testing.assert_close(out[2], protos[0][[2, 0]])
    assert (out[1] == 0).all() and (out[0, 1] == 0).all()
    hidden = torch.randn(3, 2, 8)
    logits = extend_logits(torch.zeros(3, 2, vocab), hidden, bank)
    assert logits.shape == (3, 2, vocab + 5)
    torch.testing.assert_close(logits[2, :, vocab : vocab + 3], hidden[2] @ protos[0].T)
    assert (logits[2, :, vocab + 3 :] == torch.finfo(torch.float32).min).all()
    assert (logits[1, :, vocab:] == torch.finfo(torch.float32).min).all()
    beams = extend_logits(torch.zeros(6, 1, vocab), torch.randn(6, 1, 8), bank)  # 2 beams per sample
    assert (beams[2:4, :, vocab:] == torch.finfo(torch.float32).min).all()


def test_project_all_batches_images_of_one_grid_and_keeps_their_order():
    torch.manual_seed(0)
    proj = PrototypeProjection(16, rank=4, position="learned", max_grid=(4, 4))
    with torch.no_grad():  # away from the all-zero start, so the comparison means something
        for p in proj.parameters():
            p.normal_()
    grids = [(2, 3), (3, 3), (2, 3), (2, 3)]
    tokens = [torch.randn(h * w, 16, requires_grad=True) for h, w in grids]
    together = proj.project_all(tokens, grids)
    alone = [proj(t, g) for t, g in zip(tokens, grids)]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(sum((t * (i + 1)).sum() for i, t in enumerate(together)), tokens)
    for i, g in enumerate(grads):  # each image's gradient reaches its own tokens
        torch.testing.assert_close(g, torch.autograd.grad((alone[i] * (i + 1)).sum(), tokens[i], retain_graph=True)[0])


def test_bank_of_equal_images_is_stacked_like_the_padded_one():
    protos = [torch.randn(4, 8) for _ in range(3)]
    bank = PrototypeBank.from_prototypes(protos, [2, 0, 1], 8, torch.device("cpu"), torch.float64)
    assert bank.bank.dtype == torch.float64 and bank.valid.all() and bank.bank.shape == (3, 4, 8)
    torch.testing.assert_close(bank.bank, torch.stack([protos[2], protos[0], protos[1]]).double())
    mixed = PrototypeBank.from_prototypes([*protos, torch.randn(2, 8)], [2, 3], 8, torch.device("cpu"), torch.float32)
    assert mixed.valid.sum(1).tolist() == [4, 2]  # different sizes: padded

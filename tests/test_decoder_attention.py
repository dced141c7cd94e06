"""The trunk's CPU attention paths equal SDPA; its cached layout tables are reused and stay correct."""

from __future__ import annotations

import copy
import io
import shutil

import pytest
import torch
import torch.nn.functional as F
from padt_plugins.decoders import layers
from padt_plugins.decoders.layers import (
    apply_rotary,
    attend,
    attend_projected,
    few_keys,
    merge_heads,
    pair_permutation,
    rotary_cis,
    rotary_cos_sin,
    rotate_pairs,
    rotate_pairs_,
    vision_rotary,
)
from test_decoder import GRIDS, OBJECTS, make_decoder, make_inputs, make_targets
from torch import nn
from torch._dynamo.utils import counters


def _qkv(n=3, heads=2, lq=40, lk=5, dh=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, heads, length, dh, generator=gen) for length in (lq, lk, lk))
    mask = torch.ones(n, lk, dtype=torch.bool)
    mask[0, 3:] = False  # object 0 has two padded query tokens
    return q, k, v, mask


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])


@pytest.mark.parametrize("masked", [False, True])
def test_few_keys_attention_equals_sdpa_with_gradients(masked):
    q, k, v, mask = _qkv()
    mask = mask if masked else None
    assert few_keys(q, k) and not few_keys(k, q)  # 40 rows reading 5 keys: keys-major; the reverse: SDPA
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    refs = [t.clone().requires_grad_() for t in (q, k, v)]
    got, want = attend(*leaves, mask), _sdpa(*refs, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(want)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for a, b in zip(leaves, refs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("lq", "residual", "bias"), [(40, False, True), (40, True, True), (40, True, False), (4, True, True)]
)
def test_attend_projected_folds_the_output_projection(lq, residual, bias):
    """``residual + out(merge_heads(attention))``, whichever path the shapes take (lq=4: SDPA)."""
    q, k, v, mask = _qkv(lq=lq)
    out = nn.Linear(16, 12, bias=bias)
    base = torch.randn(3, lq, 12)
    want = out(merge_heads(_sdpa(q, k, v, mask)))
    want = base + want if residual else want
    got = attend_projected(q, k, v, mask, out, residual=base if residual else None)
    assert got.shape == (3, lq, 12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attend_projected_gradients_match_the_unfolded_product():
    q, k, v, mask = _qkv()
    out = nn.Linear(16, 12)
    base = torch.randn(3, 40, 12)
    grads = []
    for folded in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, base)]
        out.zero_grad()
        if folded:
            y = attend_projected(*leaves[:3], mask, out, residual=leaves[3])
        else:
            y = leaves[3] + out(merge_heads(_sdpa(*leaves[:3], mask)))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append([t.grad for t in leaves] + [out.weight.grad.clone(), out.bias.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_rotate_pairs_out_of_place_under_autograd():
    """Under autograd the rotation returns a new tensor (no in-place write into a view) with the same
    values as the in-place one and as rotate-half ``apply_rotary`` on un-permuted channels."""
    heads, dh, n_rows = 2, 8, 6
    positions = torch.stack([torch.arange(n_rows) // 3, torch.arange(n_rows) % 3], dim=-1)
    x = torch.randn(1, n_rows, heads * dh)
    perm = pair_permutation(heads, dh)
    cis = rotary_cis(positions, dh)[None, :, None]
    leaf = x[..., perm].clone().requires_grad_()
    rotated = rotate_pairs(leaf, cis)
    assert rotated.data_ptr() != leaf.data_ptr()
    torch.testing.assert_close(rotated.detach(), rotate_pairs_(x[..., perm].clone(), cis))
    cos, sin = vision_rotary(positions, dh)
    reference = apply_rotary(x.view(1, n_rows, heads, dh).transpose(1, 2), cos, sin).transpose(1, 2).flatten(2)
    torch.testing.assert_close(rotated.detach(), reference[..., perm], atol=1e-6, rtol=1e-5)
    rotated.sum().backward()
    assert leaf.grad is not None and leaf.grad.shape == leaf.shape


def test_trunk_layout_tables_are_cached_per_grid_set_and_match_a_fresh_build():
    decoder = make_decoder(memory="dense")
    trunk = decoder.trunk
    inputs = make_inputs(GRIDS, OBJECTS)
    first = decoder(inputs)
    assert len(trunk._table_cache) == 1
    tables = next(iter(trunk._table_cache.values()))
    again = decoder(inputs)  # the cached tables are read, not rebuilt
    assert len(trunk._table_cache) == 1 and next(iter(trunk._table_cache.values())) is tables
    trunk._table_cache.clear()
    fresh = decoder(inputs)
    for name in ("box", "mask"):
        torch.testing.assert_close(again[name], first[name])
        torch.testing.assert_close(fresh[name], first[name])
    decoder(make_inputs(GRIDS[::-1], [(1 - b, k) for b, k in OBJECTS]))  # another grid set: its own entry
    assert len(trunk._table_cache) == 2


def test_tables_built_under_inference_mode_do_not_leak_into_training():
    """Inference tensors cannot be saved for backward: a training step after an evaluation under
    ``torch.inference_mode`` builds its own tables."""
    decoder = make_decoder(memory="dense")
    inputs = make_inputs(GRIDS, OBJECTS)
    with torch.inference_mode():
        decoder(inputs)
    out = decoder(inputs)
    (out["box"].sum() + out["mask"].sum()).backward()
    assert len(decoder.trunk._table_cache) == 2
    assert decoder.trunk.input_projection[1].weight.grad is not None


def test_rotation_as_real_pairs_equals_the_complex_one():
    """``rotary_cos_sin`` pairs (what compiled code reads) rotate exactly as the complex ``cis``."""
    heads, dh, n_rows = 2, 8, 6
    positions = torch.stack([torch.arange(n_rows) // 3, torch.arange(n_rows) % 3], dim=-1)
    cis = rotary_cis(positions, dh)[None, :, None]
    x = torch.randn(1, n_rows, heads * dh)
    want = rotate_pairs_(x.clone(), cis)
    torch.testing.assert_close(rotate_pairs_(x.clone(), rotary_cos_sin(cis)), want)
    leaf = x.clone().requires_grad_()
    torch.testing.assert_close(rotate_pairs(leaf, rotary_cos_sin(cis)), want)


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_decoder_equals_eager_with_gradients():
    """``decoder.compile``: the trunk's blocks run as one compiled graph in training, the mask head's
    logits and loss terms as one each, with the eager values and gradients — images of two sizes
    (padded memory rows) and objects with 1..5 VRTs (padded query rows). The object count is dynamic
    from the first compile (no recompile when it changes); evaluation stays eager."""
    inputs = make_inputs(GRIDS, OBJECTS)
    targets = make_targets(len(OBJECTS))
    results = []
    for compile_ in (False, True):
        decoder = make_decoder(memory="dense", compile=compile_)
        torch._dynamo.reset()
        counters.clear()
        losses = decoder.loss(decoder(inputs), targets, inputs)
        losses["total"].backward()
        grads = {k: p.grad.clone() for k, p in decoder.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
        if compile_:
            compiled_methods = {name for _, name in layers._COMPILED}
            assert {"_run", "_train_logits", "_loss_terms"} <= compiled_methods
            assert counters["stats"]["unique_graphs"] == 3 and not counters["graph_break"]  # no host reads inside
            with torch.no_grad():
                decoder(inputs)  # eager under no_grad: nothing else compiled, values unchanged
            for objects in (OBJECTS[:3], OBJECTS + OBJECTS[:2]):  # other object counts: the same graphs
                fewer = make_inputs(GRIDS, objects)
                decoder.loss(decoder(fewer), make_targets(len(objects)), fewer)["total"].backward()
            assert counters["stats"]["unique_graphs"] == 3
            copy.deepcopy(decoder)  # nothing compiled is stored on the modules: they copy and pickle as before
            torch.save(decoder, io.BytesIO())
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    assert eager_losses.keys() == compiled_losses.keys()
    for key in eager_losses:
        torch.testing.assert_close(compiled_losses[key], eager_losses[key], atol=1e-5, rtol=1e-4)
    assert eager_grads.keys() == compiled_grads.keys() and len(eager_grads) > 20
    for key in eager_grads:
        torch.testing.assert_close(compiled_grads[key], eager_grads[key], atol=1e-4, rtol=1e-3, msg=key)

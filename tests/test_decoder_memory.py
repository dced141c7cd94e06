"""The factored per-object memory equals the dense one, operation by operation."""

from __future__ import annotations

import itertools

import pytest
import torch
from padt_plugins.decoders.factored_memory import FactoredMemory
from padt_plugins.decoders.layers import RMSNorm, split_heads
from padt_plugins.decoders.memory import DenseMemory, MemoryPositions
from torch import nn

D, H = 16, 2  # head dim 8: 2 row + 2 column rotary pairs


def _pair(num_images: int, num_objects: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rows = [6, 4][:num_images]  # image 1 (if any) is smaller: its rows 4..5 are padding
    base = torch.randn(num_images, 6, D, generator=gen)
    valid = torch.arange(6)[None, :] < torch.tensor(rows)[:, None]
    index = torch.arange(num_objects) % num_images
    grids = torch.tensor([[2, 3], [2, 2]])[index]
    return DenseMemory.from_shared(base, valid, index, grids), FactoredMemory.from_shared(base, valid, index, grids)


def _positions(num_images: int, fine: bool) -> MemoryPositions:
    """Rows of image 0 on a 2x3 grid, of image 1 on 2x2 (+ 2 padding rows); cells of 2 fine patches."""
    cells = [[(r, c) for r in range(2) for c in range(3)], [(r, c) for r in range(2) for c in range(2)] + [(0, 0)] * 2]
    return MemoryPositions(torch.tensor(cells[:num_images]), 1 if fine else 2, D // H, 10000.0)


def _projection(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(D, D, generator=gen) / D**0.5, torch.randn(D, generator=gen)


def _update(memory, positions: MemoryPositions, seed: int):
    gen = torch.Generator().manual_seed(seed)
    n, L = memory.image_index.shape[0], 3
    out = nn.Linear(D, D)
    with torch.no_grad():
        out.weight.normal_(generator=gen)
        out.bias.normal_(generator=gen)
    keys, values = (split_heads(torch.randn(n, L, D, generator=gen), H) for _ in range(2))
    key_mask = torch.ones(n, L, dtype=torch.bool)
    key_mask[0, 2] = False
    return memory.update(keys, values, key_mask, _projection(gen), out, rms_eps=1e-6, positions=positions)


def _check(dense: DenseMemory, factored: FactoredMemory, positions: MemoryPositions) -> None:
    valid = dense.valid[..., None]
    torch.testing.assert_close(factored.dense() * valid, dense.dense() * valid, atol=1e-5, rtol=1e-5)
    gen = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(5, D, generator=gen), torch.randn(5, generator=gen)
    for kwargs in ({}, {"bias": bias}, {"bias": bias, "rms_eps": 1e-6}, {"rms_eps": 1e-6}):
        got, want = factored.project(weight, **kwargs), dense.project(weight, **kwargs)
        assert got.shape == want.shape == (dense.valid.shape[0], 6, 5)
        torch.testing.assert_close(got * valid, want * valid, atol=1e-5, rtol=1e-4)
        # chunks of 1 and 2 objects (one object's 6x5 float32 projection is 120 bytes)
        for memory, per_chunk, grad in itertools.product((factored, dense), (1, 2), (False, True)):
            with torch.set_grad_enabled(grad):
                chunks = list(memory.project_chunks(weight, max_bytes=120 * per_chunk, **kwargs))
            starts = [objects.start for objects, _ in chunks]
            assert starts == list(range(0, dense.valid.shape[0], per_chunk if memory is factored else 10**6))
            chunked = torch.cat([x for _, x in chunks])
            torch.testing.assert_close(chunked * valid, want * valid, atol=1e-5, rtol=1e-4)
    queries = split_heads(torch.randn(dense.valid.shape[0], 3, D, generator=gen), H)
    key, value = _projection(gen), _projection(gen)
    want = dense.read(queries, key, value, rms_eps=1e-6, positions=positions)
    for grad in (True, False):  # inference writes some products in place, training may not
        with torch.set_grad_enabled(grad):
            got = factored.read(queries, key, value, rms_eps=1e-6, positions=positions)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# few objects per image: per-object basis rows; many: shared head-space products (both paths)
@pytest.mark.parametrize(("num_images", "num_objects"), [(1, 3), (2, 4), (1, 12), (2, 24)])
def test_factored_memory_tracks_dense_memory(num_images, num_objects):
    dense, factored = _pair(num_images, num_objects)
    low = _positions(num_images, fine=False)
    _check(dense, factored, low)  # shared rows only
    dense, factored = _update(dense, low, 2), _update(factored, low, 2)
    _check(dense, factored, low)  # + one update (rank H*L + bias)
    norm = RMSNorm(D)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    gen = torch.Generator().manual_seed(3)
    fine = torch.randn(num_images, 6, D, generator=gen)
    parents = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 0, 0]])[:num_images]
    fine_valid = torch.ones(num_images, 6, dtype=torch.bool)
    fine_valid[1:, 4:] = False
    fine_grids = dense.grids
    dense = dense.to_fine(fine, parents, fine_valid, fine_grids, norm)
    factored = factored.to_fine(fine, parents, fine_valid, fine_grids, norm)
    high = _positions(num_images, fine=True)
    _check(dense, factored, high)  # normalised: per-row scale on both factors
    dense, factored = _update(dense, high, 4), _update(factored, high, 4)
    _check(dense, factored, high)  # rank grows: two updates


def test_factored_projection_is_cheap_in_objects():
    """Projecting shares the image part: the shared product is computed once, not per object."""
    _, factored = _pair(1, 3)
    factored = _update(factored, _positions(1, fine=False), 0)
    calls = []
    original = torch.nn.functional.linear

    def counting(x, w, b=None):
        calls.append(tuple(x.shape))
        return original(x, w, b)

    torch.nn.functional.linear = counting
    try:
        factored.project(torch.randn(4, D))
    finally:
        torch.nn.functional.linear = original
    assert calls == [(1, 6, D)]  # one image, however many objects

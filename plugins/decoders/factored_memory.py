"""Factored per-object memory: the image's rows shared by its objects plus a low-rank part per object.

The copies of one image's memory differ only by what each object's few query tokens wrote into them.
For object ``o`` and memory row ``i`` this module keeps::

    M_o[i] = scale_o[i] * S[i] + coef_o[i] @ U_o        S: [N, d] per image, shared by its objects
                                                        coef_o: [N, R], U_o: [R, d], R << d

and never forms ``M_o``:

* an update (image→query attention) appends its attention probabilities to ``coef`` and its per-head
  values, mapped by the output projection, to ``U`` (plus one row for that projection's bias);
* an RMSNorm of the memory rescales ``scale``/``coef`` per row and ``S``/``U`` per channel;
* a projection ``W·M_o[i] + b`` is ``scale·(S·Wᵀ)[i] + coef[i] @ (U·Wᵀ) + b``: one product per image
  plus a rank-``R`` product per object (``project``, used by heads);
* attention needs no projected rows at all. Values enter through ``Σ_i p_i v_i``, which the factors
  give directly. Keys/queries are rotated per row, but each channel pair of the 2-D rotary turns
  with the row's grid *row* only or its *column* only, so the score of a rotated low-rank row against
  a query vector ``z`` is ``Σ_r coef_ir (T_row[r, row_i] + T_col[r, col_i])`` with small per-object
  tables ``T`` (``_low_rank_scores``); the shared rows are rotated and scored once per image.

Per object this costs O(N·R·H·L) for scores instead of O(N·d²) (the reference's copies) or O(N·R·d)
(projected rows). ``DenseMemory`` is the reference arithmetic the tests hold this to.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .layers import rotate_pairs_, split_heads
from .memory import MemoryPositions, TrunkMemory

__all__ = ["FactoredMemory"]

_TABLE_BYTES = 8 * 2**20  # per chunk of objects in _low_rank_scores (measured best on a 32 MB L3)


@dataclass(frozen=True)
class _AttentionPart:
    """Basis rows written by one update: row ``(h, l)`` = ``values[h, l] @ out_map[h-th block]``."""

    values: torch.Tensor  # [n, H, L, dh] per-object values of the update
    out_map: torch.Tensor  # [H*dh, d]: the output projection's weightᵀ, times later norm gains

    @property
    def rank(self) -> int:
        return self.values.shape[1] * self.values.shape[2]

    def through(self, wt: torch.Tensor | None) -> torch.Tensor:
        """Basis rows mapped by ``wt`` ``[d, d_out]`` (``None``: model space), ``[n, H*L, d_out]``."""
        n, heads, _, dh = self.values.shape
        d = self.out_map.shape[1]
        d_out = d if wt is None else wt.shape[1]
        # Cheapest order: map the shared matrices first (d·d·d_out once) when many objects share them,
        # else map each object's rows to model space and then through wt.
        fused = wt is not None and d * d * d_out + n * self.rank * dh * d_out < n * self.rank * (dh * d + d * d_out)
        out_map = self.out_map @ wt if fused else self.out_map
        out_map = out_map.view(heads, dh, -1)
        # head by head, each product written in place: faster on CPU than one einsum, whose batched
        # product comes out head-major and is then copied to object-major
        rows = self.values.new_empty(n, heads, self.values.shape[2], out_map.shape[-1])
        for h in range(heads):
            rows[:, h] = self.values[:, h] @ out_map[h]
        rows = rows.view(n, self.rank, -1)
        return rows if fused or wt is None else rows @ wt

    def cross(self, shared: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``shared[image(o)] @ rows_oᵀ`` (model-space rows) in float32, ``[n, N, H*L]``."""
        n, heads, length, dh = self.values.shape
        images, rows, d = shared.shape
        values, out_map = self.values.float(), self.out_map.float()
        if images * d * d >= n * self.rank * (d - dh):  # few objects per image: form the rows
            return _shared_times(shared, self.through(None).float(), image_index)
        # many: map the image's rows to head space once, dot with each object's per-head values
        head_space = split_heads(shared @ out_map.t(), heads)  # [B, H, N, dh]
        cross = _per_image_matmul(values, head_space.transpose(-1, -2), image_index)  # [n, H, L, N]
        return cross.permute(0, 3, 1, 2).reshape(n, rows, heads * length)

    def scale_channels(self, gain: torch.Tensor) -> _AttentionPart:
        return replace(self, out_map=self.out_map * gain)


@dataclass(frozen=True)
class _BiasPart:
    """One basis row: the bias of an update's output projection (added to every row of every object)."""

    vector: torch.Tensor  # [d]
    num_objects: int

    rank = 1

    def through(self, wt: torch.Tensor | None) -> torch.Tensor:
        v = self.vector if wt is None else self.vector @ wt
        return v.expand(self.num_objects, 1, -1)

    def cross(self, shared: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        return (shared @ self.vector.float())[image_index][..., None]

    def scale_channels(self, gain: torch.Tensor) -> _BiasPart:
        return replace(self, vector=self.vector * gain)


class FactoredMemory(TrunkMemory):
    """``M_o[i] = scale[o, i] * base[image(o), i] + coef[o, i] @ basis_o``, never materialised.

    Immutable: updates return a new memory sharing the old tensors.
    """

    def __init__(
        self,
        base: torch.Tensor,
        base_valid: torch.Tensor,
        image_index: torch.Tensor,
        grids: torch.Tensor,
        scale: torch.Tensor | None = None,
        coef: torch.Tensor | None = None,
        parts: tuple[_AttentionPart | _BiasPart, ...] = (),
    ) -> None:
        self.base = base  # [B, N, d], zero on padding rows
        self.base_valid = base_valid  # [B, N]
        self.image_index = image_index  # [n]
        self.grids = grids
        self.valid = base_valid[image_index]
        self.scale = scale  # [n, N] or None (= 1)
        self.coef = coef  # [n, N, R] or None (no per-object part yet)
        self.parts = parts
        self.hidden_size = base.shape[-1]
        self._basis_cache: torch.Tensor | None = None
        self._ms_cache: torch.Tensor | None = None
        self._normalised_cache: tuple[float, tuple[torch.Tensor, torch.Tensor | None]] | None = None

    @classmethod
    def from_shared(cls, base, base_valid, image_index, grids, full=None) -> FactoredMemory:
        return cls(base * base_valid[..., None].to(base.dtype), base_valid, image_index, grids)

    # --- reading (heads) -------------------------------------------------------------------------------
    def project(self, weight, bias=None, *, rms_eps=None) -> torch.Tensor:
        ((_, out),) = self.project_chunks(weight, bias, rms_eps=rms_eps, max_bytes=sys.maxsize)
        return out

    def project_chunks(self, weight, bias=None, *, rms_eps=None, max_bytes=8 * 2**20):
        row_scale, coef = self._normalised(rms_eps) if rms_eps is not None else (self.scale, self.coef)
        shared = F.linear(self.base, weight)  # once for all chunks
        basis = None if coef is None else self._basis(weight.t())
        n, rows = self.valid.shape
        step = max(1, max_bytes // max(1, rows * shared.shape[-1] * shared.element_size()))
        for start in range(0, n, step):
            objects = slice(start, min(start + step, n))
            count = objects.stop - start
            # shared rows (and the bias) in one pass over the output, then the per-object low-rank part
            scale = None if row_scale is None else row_scale[objects]
            out = _per_object_rows(shared, self.image_index[objects], scale, bias)
            # every chunk is a tensor of its own (callers may work on it in place): never a view of `shared`
            fresh = out.shape[0] == count and out.data_ptr() != shared.data_ptr()
            if basis is None:
                out = out if fresh else out.expand(count, -1, -1).clone()
            elif torch.is_grad_enabled() or not fresh:
                out = torch.baddbmm(out, coef[objects], basis[objects])
            else:
                out = out.baddbmm_(coef[objects], basis[objects])  # inference: no second buffer
            yield objects, out

    def dense(self) -> torch.Tensor:
        out = _per_object_rows(self.base, self.image_index, self.scale, None)
        if self.coef is None:
            return out.expand(self.image_index.shape[0], -1, -1)
        return torch.baddbmm(out, self.coef, self._basis(None))

    # --- the block's two attentions -------------------------------------------------------------------
    def read(self, queries, key, value, *, rms_eps, positions) -> torch.Tensor:
        heads, dh = queries.shape[1], queries.shape[-1]
        row_scale, coef = self._normalised(rms_eps)
        scores = self._scores(key, row_scale, coef, queries, positions).float() * dh**-0.5  # [n, H, L, N]
        scores = scores.masked_fill(~self.valid[:, None, None, :], float("-inf"))
        probs = scores.softmax(-1).to(queries.dtype)
        # Σ_i p_i v_i with v_i = scale_i (S Wᵀ)_i + coef_i (U Wᵀ) + b: no per-object value rows
        weight, bias = value
        shared = split_heads(F.linear(self.base, weight), heads)  # [B, H, N, dh]
        scale = row_scale[:, None, None, :]
        if torch.is_grad_enabled():
            scaled = probs * scale
        else:  # written head-major, the layout the per-image product reads (no transposed copy there)
            head_major = probs.new_empty(heads, probs.shape[0], *probs.shape[2:]).transpose(0, 1)
            scaled = torch.mul(probs, scale, out=head_major)
        out = _per_image_matmul(scaled, shared, self.image_index)
        if coef is not None:
            mixed = (probs.flatten(1, 2) @ coef).unflatten(1, probs.shape[1:3])  # [n, H, L, R]
            out = out + mixed @ split_heads(self._basis(weight.t()), heads)
        return out + bias.view(heads, 1, dh)

    def update(self, keys, values, key_mask, query, out, *, rms_eps, positions) -> FactoredMemory:
        n, heads, length, dh = keys.shape
        rows = self.valid.shape[1]
        row_scale, coef = self._normalised(rms_eps)
        scores = self._scores(query, row_scale, coef, keys, positions).float() * dh**-0.5  # [n, H, L, N]
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, :, None], float("-inf"))
        # Each row attends over its object's L tokens (softmax over dim -2: over a short strided axis it
        # is several times faster on CPU than over a short last one). The probabilities are the new
        # coefficients, the values (through the output projection) the new basis rows.
        probs = scores.softmax(-2).to(values.dtype) * self.valid[:, None, None, :].to(values.dtype)
        new = [probs.permute(0, 3, 1, 2).reshape(n, rows, heads * length), self.valid[..., None].to(values.dtype)]
        coef = torch.cat(new if self.coef is None else [self.coef, *new], dim=-1)
        parts = (*self.parts, _AttentionPart(values, out.weight.t()), _BiasPart(out.bias, n))
        return FactoredMemory(self.base, self.base_valid, self.image_index, self.grids, self.scale, coef, parts)

    def to_fine(self, fine, parents, fine_valid, grids, norm, full=None) -> FactoredMemory:
        if self.scale is not None:
            raise RuntimeError("to_fine expects the low-resolution memory before any normalisation")
        d = self.hidden_size
        base = self.base.gather(1, parents[..., None].expand(-1, -1, d)) + fine
        base = base * fine_valid[..., None].to(base.dtype)
        coef = None
        if self.coef is not None:
            rows = parents[self.image_index]
            coef = self.coef.gather(1, rows[..., None].expand(-1, -1, self.coef.shape[-1]))
        pre = FactoredMemory(base, fine_valid, self.image_index, grids, None, coef, self.parts)
        inv = torch.rsqrt(pre._mean_square() + norm.eps).to(base.dtype) * pre.valid.to(base.dtype)
        gain = norm.weight
        return FactoredMemory(
            base * gain,
            fine_valid,
            self.image_index,
            grids,
            scale=inv,
            coef=None if coef is None else coef * inv[..., None],
            parts=tuple(p.scale_channels(gain) for p in self.parts),
        )

    # --- factor algebra --------------------------------------------------------------------------------
    def _basis(self, wt: torch.Tensor | None) -> torch.Tensor:
        """``[n, R, d_out]``: every part's basis rows (mapped by ``wt``), in ``coef`` column order."""
        if wt is None and self._basis_cache is not None:
            return self._basis_cache
        basis = torch.cat([p.through(wt) for p in self.parts], dim=1)
        if wt is None:
            self._basis_cache = basis
        return basis

    def _normalised(self, rms_eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row scale ``[n, N]`` and coefficients of ``rmsnorm(M)`` (no gain): both factors of a row times 1/rms."""
        if self._normalised_cache is not None and self._normalised_cache[0] == rms_eps:
            return self._normalised_cache[1]  # a block's read and update normalise the same memory
        inv = torch.rsqrt(self._mean_square() + rms_eps)
        scale = inv if self.scale is None else self.scale.float() * inv
        coef = None if self.coef is None else self.coef * inv[..., None].to(self.coef.dtype)
        self._normalised_cache = (rms_eps, (scale.to(self.base.dtype), coef))
        return self._normalised_cache[1]

    def _mean_square(self) -> torch.Tensor:
        """``mean(M_o[i]²)`` per object and row, ``[n, N]`` float32, from the factors alone.

        ``|s·S_i + c_i U|² = s²|S_i|² + 2 s c_i·(U S_i) + c_i (U Uᵀ) c_iᵀ``.
        """
        if self._ms_cache is not None:
            return self._ms_cache
        base = self.base.float()
        scale = None if self.scale is None else self.scale.float()
        total = base.pow(2).sum(-1)[self.image_index]
        if scale is not None:
            total = total * scale.pow(2)
        if self.coef is not None:
            coef, basis = self.coef.float(), self._basis(None).float()
            cross = torch.cat([p.cross(base, self.image_index) for p in self.parts], dim=-1)  # [n, N, R]
            # c·(2s·cross + G cᵀ): one product and one pass over [n, N, R]
            cross = cross.mul_(2.0 if scale is None else 2 * scale[..., None])
            weighted = torch.baddbmm(cross, coef, basis @ basis.transpose(1, 2))
            total = total + (weighted * coef).sum(-1)
        self._ms_cache = total.clamp(min=0) / self.hidden_size
        return self._ms_cache

    def _scores(
        self,
        projection: tuple[torch.Tensor, torch.Tensor],
        row_scale: torch.Tensor,
        coef: torch.Tensor | None,
        z: torch.Tensor,
        positions: MemoryPositions,
    ) -> torch.Tensor:
        """``⟨rotate_i(W·x_i + b), z_l⟩`` per head for every row ``i``, ``[n, H, L, N]``.

        ``x_i = row_scale_i · S_i + coef_i @ U`` (already normalised), ``z`` ``[n, H, L, dh]`` in the
        pair-permuted channel order of ``W``'s rows.
        """
        weight, bias = projection
        heads = z.shape[1]
        rows = self.base.shape[1]
        # shared rows and the bias, rotated and scored once per image
        shared = F.linear(self.base, weight)  # [B, N, d]
        both = rotate_pairs_(torch.cat([shared, bias.expand_as(shared)], dim=1), positions.cis.repeat(1, 2, 1, 1))
        scored = _per_image_matmul(z, split_heads(both, heads).transpose(-1, -2), self.image_index)  # [n, H, L, 2N]
        scores = scored[..., :rows] * row_scale[:, None, None, :] + scored[..., rows:]
        if coef is not None:
            scores = scores + self._low_rank_scores(self._basis(weight.t()), coef, z, positions)
        return scores

    def _low_rank_scores(
        self, basis: torch.Tensor, coef: torch.Tensor, z: torch.Tensor, positions: MemoryPositions
    ) -> torch.Tensor:
        """``⟨rotate_i(coef_i @ basis), z_l⟩`` per head for every row ``i`` without forming the rows.

        In pair-permuted channels the first half of each head's pairs turns with the row's grid row
        (angle ``row·factor·ω_p``), the second half with its column. A pair's score is
        ``⟨R(θ)·x, z⟩ = ⟨x, R(-θ)·z⟩``, so per object, basis row ``r`` and query ``l``:
        ``T_row[ρ] = ⟨basis_r, R(-ρ)·z_l⟩`` over the row pairs for every grid row ``ρ`` (and ``T_col``
        likewise), and row ``i`` scores ``Σ_r coef_ir (T_row[row_i] + T_col[col_i])``: a matrix product
        per grid row (and per grid column) of the coefficients laid out on the grid.

        Args:
            basis: ``[n, R, d]`` basis rows already mapped by the projection (pair-permuted channels).
            coef: ``[n, N, R]`` coefficients (already normalised).
            z: ``[n, H, L, dh]`` query vectors.
        """
        n, rank, _ = basis.shape
        _, heads, length, dh = z.shape
        cells = positions.cells[self.image_index]  # [n, N, 2]
        grid_h, grid_w = (int(c) + 1 for c in positions.cells.flatten(0, 1).amax(0))
        b = split_heads(basis, heads)  # [n, H, R, dh]
        zc = torch.view_as_complex(z.float().unflatten(-1, (-1, 2)))  # [n, H, L, dh/2] channel pairs
        half = dh // 4  # pairs per axis
        where = (cells[..., 0] * grid_w + cells[..., 1])[..., None]  # [n, N, 1]
        # coefficients on the grid (zero where an image has no cell)
        grid = coef.new_zeros(n, grid_h * grid_w, rank).scatter_add_(1, where.expand(-1, -1, rank), coef)
        grid = grid.view(n, grid_h, grid_w, rank)
        turned = []
        for axis, size in ((0, grid_h), (1, grid_w)):
            turn = positions.axis_cis(axis, size).conj()  # [size, dh/4]: R(-ρ) on this axis's pairs
            pairs = slice(axis * half, (axis + 1) * half)
            z_turned = torch.view_as_real(zc[:, :, :, None, pairs] * turn).flatten(-2)  # [n, H, L, size, dh/2]
            turned.append(z_turned.transpose(2, 3).to(b.dtype).flatten(2, 3))  # [n, H, size*L, dh/2]
        out = z.new_empty(n, grid_h, grid_w, heads * length)
        # A few objects at a time: their tables (the largest tensors here) are rearranged for the grid
        # product while they are still in cache.
        step = max(1, _TABLE_BYTES // ((grid_h + grid_w) * heads * length * rank * b.element_size()))
        for start in range(0, n, step):
            objects = slice(start, min(start + step, n))
            k = objects.stop - start
            for axis, (size, other) in enumerate(((grid_h, grid_w), (grid_w, grid_h))):
                ch = slice(axis * 2 * half, (axis + 1) * 2 * half)
                t = turned[axis][objects] @ b[objects, :, :, ch].transpose(-1, -2)  # [k, H, size*L, R]
                tables = t.view(k, heads, size, length, rank).transpose(1, 2).reshape(k * size, -1, rank)
                coefs = grid[objects] if axis == 0 else grid[objects].transpose(1, 2)
                scored = torch.bmm(coefs.reshape(k * size, other, rank), tables.transpose(1, 2))
                scored = scored.view(k, size, other, -1)  # [k, line, along, H*L]
                if axis == 0:
                    out[objects] = scored
                else:
                    out[objects] += scored.transpose(1, 2)
        per_row = out.view(n, grid_h * grid_w, -1).gather(1, where.expand(-1, -1, heads * length))
        return per_row.view(n, -1, heads, length).permute(0, 2, 3, 1)


def _per_image_matmul(left: torch.Tensor, right: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """``left[o] @ right[image(o)]`` per head: ``[n, H, L, X]`` x ``[B, H, X, Y]`` → ``[n, H, L, Y]``.

    The objects of one image go through one matmul; a Python loop runs over images, never objects.
    """
    heads, length = left.shape[1:3]

    def one_image(rows: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        k = rows.shape[0]
        out = rows.transpose(0, 1).reshape(heads, k * length, -1) @ shared  # [H, k*L, Y]
        return out.view(heads, k, length, -1).transpose(0, 1)

    if right.shape[0] == 1:
        return one_image(left, right[0])
    order = torch.argsort(image_index, stable=True)
    counts = torch.bincount(image_index, minlength=right.shape[0]).tolist()
    pieces = [one_image(rows, right[b]) for b, rows in enumerate(left[order].split(counts)) if counts[b]]
    return torch.cat(pieces)[torch.argsort(order)]


def _per_object_rows(
    shared: torch.Tensor, image_index: torch.Tensor, row_scale: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """``shared[image_index] * row_scale + bias`` in one pass: ``[n, N, d]``, or ``[1, N, d]`` when that is
    the same for every object (one image, no row scale): broadcast it, never write into it."""
    if shared.shape[0] != 1:
        shared = shared[image_index]
    if row_scale is None:
        return shared if bias is None else shared + bias
    if bias is None:
        return shared * row_scale[..., None]
    return torch.addcmul(bias, shared, row_scale[..., None])


def _shared_times(shared: torch.Tensor, per_object: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """``shared[image(o)] @ per_object[o]ᵀ`` for every object, ``[n, N, R]``."""
    if shared.shape[0] == 1:  # one GEMM over all objects' rows
        n, rank, d = per_object.shape
        return (shared[0] @ per_object.reshape(n * rank, d).t()).view(-1, n, rank).transpose(0, 1)
    return torch.bmm(shared[image_index], per_object.transpose(1, 2))

"""Per-object image memory of the PaDT trunk: a dense copy per object, or the same values kept factored.

Every object updates its own copy of its image's memory (the image→query step of each two-way block,
reference §5.4), so the reference copies the memory once per object (§5.6, §12.4). But the copies of
one image differ only by what each object's few query tokens wrote into them, a low-rank term. The
factored memory keeps, for object ``o`` and memory row ``i``::

    M_o[i] = scale_o[i] * S[i] + coef_o[i] @ U_o          S: [N, d] shared by all objects of the image
                                                          coef_o: [N, R], U_o: [R, d], R << d

An image→query update adds attention probabilities as new ``coef`` columns and the per-head values,
mapped by the output projection, as new ``U`` rows (plus one row for the projection bias); an RMSNorm
of the memory multiplies ``scale``/``coef`` by per-row factors and ``S``/``U`` by the gain. Every
linear map of the memory, ``W·M_o + b``, is then one shared ``S·Wᵀ`` per image plus a rank-``R``
product per object, which is what makes decoding many objects of one image cheap. ``DenseMemory``
does the same arithmetic on explicit copies; it is the readable reference the factored form is
tested against.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from padt_core.decoder import ObjectMemory

from .layers import RMSNorm, attend, merge_heads

__all__ = ["MEMORY_KINDS", "DenseMemory", "FactoredMemory", "TrunkMemory"]


class TrunkMemory(ObjectMemory):
    """What the trunk's blocks do to a memory, besides reading it (``project``)."""

    @classmethod
    @abstractmethod
    def from_shared(
        cls, base: torch.Tensor, base_valid: torch.Tensor, image_index: torch.Tensor, grids: torch.Tensor
    ) -> TrunkMemory:
        """Every object starts from its image's rows of ``base`` ``[B, N, d]`` (``base_valid`` ``[B, N]``)."""

    @abstractmethod
    def attend(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: torch.Tensor | None,
        out: nn.Linear,
    ) -> TrunkMemory:
        """Image→query update ``M += out(attention(queries, keys, values))``.

        Args:
            queries: ``[n, H, N, dh]`` memory-side queries (positions applied).
            keys, values: ``[n, H, L, dh]`` from each object's own query tokens.
            key_mask: ``[n, L]`` True for real query tokens (``None``: all).
            out: the output projection.
        """

    @abstractmethod
    def to_fine(
        self,
        fine: torch.Tensor,
        parents: torch.Tensor,
        fine_valid: torch.Tensor,
        grids: torch.Tensor,
        norm: RMSNorm,
    ) -> TrunkMemory:
        """``norm(M[parents] + fine)``: each fine row gets its cell's row plus the fine features.

        Args:
            fine: ``[B, Nf, d]`` fine features per image (already at the trunk width).
            parents: ``[B, Nf]`` long, the row of the current memory containing each fine row.
            fine_valid: ``[B, Nf]`` bool.
            grids: ``[n, 2]`` fine grid of each object.
            norm: the high-resolution RMSNorm.
        """


# ---------------------------------------------------------------------------------------------------
# Dense: one explicit copy per object
# ---------------------------------------------------------------------------------------------------


class DenseMemory(TrunkMemory):
    """``state [n, N, d]``: an explicit memory per object, as the reference keeps it."""

    def __init__(self, state: torch.Tensor, valid: torch.Tensor, image_index: torch.Tensor, grids: torch.Tensor):
        self.state, self.valid, self.image_index, self.grids = state, valid, image_index, grids
        self.hidden_size = state.shape[-1]

    @classmethod
    def from_shared(cls, base, base_valid, image_index, grids) -> DenseMemory:
        base = base * base_valid[..., None].to(base.dtype)
        return cls(base[image_index], base_valid[image_index], image_index, grids)

    def project(self, weight, bias=None, *, rms_eps=None) -> torch.Tensor:
        x = self.state
        if rms_eps is not None:
            x32 = x.float()
            x = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + rms_eps)).to(x.dtype)
        return F.linear(x, weight, bias)

    def dense(self) -> torch.Tensor:
        return self.state

    def attend(self, queries, keys, values, key_mask, out) -> DenseMemory:
        update = out(merge_heads(attend(queries, keys, values, key_mask)))
        state = self.state + update * self.valid[..., None].to(update.dtype)
        return DenseMemory(state, self.valid, self.image_index, self.grids)

    def to_fine(self, fine, parents, fine_valid, grids, norm) -> DenseMemory:
        rows = parents[self.image_index]
        state = self.state.gather(1, rows[..., None].expand(-1, -1, self.hidden_size)) + fine[self.image_index]
        valid = fine_valid[self.image_index]
        state = norm(state) * valid[..., None].to(state.dtype)
        return DenseMemory(state, valid, self.image_index, grids)


# ---------------------------------------------------------------------------------------------------
# Factored: shared rows per image + a per-object low-rank part
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AttentionPart:
    """Basis rows written by one image→query update: row ``(h, l)`` = ``values[h, l] @ out_map[h-th block]``."""

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
        rows = torch.einsum("nhld,hde->nhle", self.values, out_map.view(heads, dh, -1)).reshape(n, self.rank, -1)
        return rows if fused or wt is None else rows @ wt

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

    def scale_channels(self, gain: torch.Tensor) -> _BiasPart:
        return replace(self, vector=self.vector * gain)


class FactoredMemory(TrunkMemory):
    """``M_o[i] = scale[o, i] * base[image(o), i] + coef[o, i] @ basis_o`` without materialising ``M_o``.

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

    @classmethod
    def from_shared(cls, base, base_valid, image_index, grids) -> FactoredMemory:
        return cls(base * base_valid[..., None].to(base.dtype), base_valid, image_index, grids)

    # --- reading ---------------------------------------------------------------------------------------
    def project(self, weight, bias=None, *, rms_eps=None) -> torch.Tensor:
        row_scale, coef = self.scale, self.coef
        if rms_eps is not None:  # normalising = multiplying both factors of each row by 1/rms
            inv = torch.rsqrt(self._mean_square() + rms_eps)
            row_scale = (inv if row_scale is None else row_scale.float() * inv).to(self.base.dtype)
            coef = None if coef is None else coef * inv[..., None].to(coef.dtype)
        # shared rows (and the bias) in one pass over the output, then the per-object low-rank part
        out = _per_object_rows(F.linear(self.base, weight), self.image_index, row_scale, bias)
        n = self.image_index.shape[0]
        if coef is None:
            return out.expand(n, -1, -1).contiguous()
        basis = self._basis(weight.t())
        if torch.is_grad_enabled() or out.shape[0] != n:
            return torch.baddbmm(out, coef, basis)
        return out.baddbmm_(coef, basis)  # inference: no second [n, N, d_out] buffer

    def dense(self) -> torch.Tensor:
        out = _per_object_rows(self.base, self.image_index, self.scale, None)
        if self.coef is None:
            return out.expand(self.image_index.shape[0], -1, -1)
        return torch.baddbmm(out, self.coef, self._basis(None))

    def _basis(self, wt: torch.Tensor | None) -> torch.Tensor:
        """``[n, R, d_out]``: every part's basis rows (mapped by ``wt``), in ``coef`` column order."""
        if wt is None and self._basis_cache is not None:
            return self._basis_cache
        basis = torch.cat([p.through(wt) for p in self.parts], dim=1)
        if wt is None:
            self._basis_cache = basis
        return basis

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
            cross = (coef * _shared_times(base, basis, self.image_index)).sum(-1)
            total = total + 2 * (cross if scale is None else scale * cross)
            total = total + (torch.bmm(coef, basis @ basis.transpose(1, 2)) * coef).sum(-1)
        self._ms_cache = total.clamp(min=0) / self.hidden_size
        return self._ms_cache

    # --- trunk updates ---------------------------------------------------------------------------------
    def attend(self, queries, keys, values, key_mask, out) -> FactoredMemory:
        n, _, rows, dh = queries.shape
        # The update's coefficients are the attention probabilities themselves, which SDPA does not
        # return; they cost N·L per head, little beside the projections. Scores are laid out
        # [n, H, L, N] because a softmax over a short, strided axis is several times faster on CPU
        # than over a short last axis.
        queries = queries.contiguous()  # a plain copy; the matmul would make a slower, transposing one
        scores = (keys @ queries.transpose(-1, -2)).float() * dh**-0.5  # [n, H, L, N]
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, :, None], float("-inf"))
        probs = scores.softmax(-2).to(values.dtype) * self.valid[:, None, None, :].to(values.dtype)
        new = [probs.permute(0, 3, 1, 2).reshape(n, rows, -1), self.valid[..., None].to(values.dtype)]
        coef = torch.cat(new if self.coef is None else [self.coef, *new], dim=-1)
        parts = (*self.parts, _AttentionPart(values, out.weight.t()), _BiasPart(out.bias, n))
        return FactoredMemory(self.base, self.base_valid, self.image_index, self.grids, self.scale, coef, parts)

    def to_fine(self, fine, parents, fine_valid, grids, norm) -> FactoredMemory:
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


MEMORY_KINDS: dict[str, type[TrunkMemory]] = {"dense": DenseMemory, "factored": FactoredMemory}

"""Per-object image memory of the PaDT trunk: the interface its blocks use, and the dense memory.

Every object updates its own copy of its image's memory (the image→query step of each two-way block,
reference §5.4), so the reference copies the memory once per object (§5.6, §12.4). A memory here
does the two attention steps of a block itself:

* ``read``:   each object's queries attend over its memory rows (keys/values are projections of the
              normalised rows, keys rotated by their 2-D position);
* ``update``: each memory row attends over its object's queries and adds the result.

``DenseMemory`` keeps explicit ``[n, N, d]`` copies and calls SDPA, the reference's arithmetic in a
few lines. ``FactoredMemory`` (``factored_memory.py``) computes the same values without the copies.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from padt_core.decoder import ObjectMemory

from .layers import RMSNorm, attend, attend_projected, rotary_cis, rotary_cos_sin, rotate_pairs, split_heads

__all__ = ["DenseMemory", "MemoryPositions", "Projection", "TrunkMemory"]

Projection = tuple[torch.Tensor, torch.Tensor]  # (weight [d_out, d], bias [d_out]) of a linear map


@dataclass(frozen=True)
class MemoryPositions:
    """2-D rotary positions of the memory rows of every image (padded like the memory).

    Attributes:
        cells: ``[B, N, 2]`` long, (row, col) of each memory row's cell on its grid (0 on padding).
        factor: fine patches per cell side: a row's rotary position is ``cells * factor`` (fine-patch units).
        head_dim: attention head dim; ``theta``: rotary base.
    """

    cells: torch.Tensor
    factor: int
    head_dim: int
    theta: float

    @cached_property
    def cis(self) -> torch.Tensor:
        """``[B, N, 1, head_dim/2]`` complex rotation of each channel pair (broadcast over heads)."""
        return rotary_cis(self.cells * self.factor, self.head_dim, self.theta)[:, :, None]

    def axis_cis(self, axis: int, count: int) -> torch.Tensor:
        """``[count, head_dim/4]``: rotations at cells ``0..count-1`` of the pairs that turn with ``axis`` (0 = row)."""
        pos = torch.zeros(count, 2, dtype=torch.long, device=self.cells.device)
        pos[:, axis] = torch.arange(count, device=self.cells.device) * self.factor
        quarter = self.head_dim // 4  # the first half of a head's pairs turns with the row, the rest with the column
        cis = rotary_cis(pos, self.head_dim, self.theta)
        return cis[:, :quarter] if axis == 0 else cis[:, quarter:]

    @cached_property
    def cos_sin(self) -> torch.Tensor:
        """``cis`` as real ``(cos, sin)`` pairs, ``[B, N, 1, head_dim/2, 2]``: what compiled code rotates with."""
        return rotary_cos_sin(self.cis)

    def per_object(self, image_index: torch.Tensor) -> torch.Tensor:
        """``cis`` for every object, ``[n|1, N, 1, head_dim/2]`` (broadcast instead of copied for one image);
        inside ``torch.compile`` the real ``cos_sin`` instead (no complex kernels there)."""
        rotation = self.cos_sin if torch.compiler.is_compiling() else self.cis
        return rotation if rotation.shape[0] == 1 else rotation[image_index]


class TrunkMemory(ObjectMemory):
    """A per-object memory as the trunk's blocks use it (heads only ``project`` it)."""

    image_index: torch.Tensor  # [n]

    @classmethod
    @abstractmethod
    def from_shared(
        cls,
        base: torch.Tensor,
        base_valid: torch.Tensor,
        image_index: torch.Tensor,
        grids: torch.Tensor,
        full: bool | None = None,
    ) -> TrunkMemory:
        """Every object starts from its image's rows of ``base`` ``[B, N, d]`` (``base_valid`` ``[B, N]``).

        ``full``: whether every row is valid, when the caller knows (else read from ``base_valid``).
        """

    @abstractmethod
    def read(
        self,
        queries: torch.Tensor,
        key: Projection,
        value: Projection,
        *,
        rms_eps: float,
        positions: MemoryPositions,
    ) -> torch.Tensor:
        """Each object's queries attend over its memory: ``softmax(q · rope(k(x)))·v(x)``, x = rmsnorm(M).

        Args:
            queries: ``[n, H, L, dh]`` (channel pairs permuted like ``key``'s rows, see ``layers.py``).
            key, value: projections with the norm's gain folded in (``weight * gain``).
            rms_eps: eps of the RMS normalisation of the rows.
            positions: rotary positions of the rows.

        Returns:
            ``[n, H, L, dh]`` attention output per head (before the output projection).
        """

    @abstractmethod
    def update(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: torch.Tensor | None,
        query: Projection,
        out: nn.Linear,
        *,
        rms_eps: float,
        positions: MemoryPositions,
    ) -> TrunkMemory:
        """``M += out(attention(rope(q(x)) over the object's keys/values))``, x = rmsnorm(M).

        Args:
            keys, values: ``[n, H, L, dh]`` from each object's query tokens (``keys`` pair-permuted).
            key_mask: ``[n, L]`` True for real query tokens (``None``: all).
            query: the memory-side query projection (gain folded in, rows pair-permuted).
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
        full: bool | None = None,
    ) -> TrunkMemory:
        """``norm(M[parents] + fine)``: each fine row gets its cell's row plus the fine features.

        Args:
            fine: ``[B, Nf, d]`` fine features per image (already at the trunk width).
            parents: ``[B, Nf]`` long, the row of the current memory containing each fine row.
            fine_valid: ``[B, Nf]`` bool.
            grids: ``[n, 2]`` fine grid of each object.
            norm: the high-resolution RMSNorm.
            full: whether every fine row is valid, when the caller knows (else read from ``fine_valid``).
        """


class DenseMemory(TrunkMemory):
    """``state [n, N, d]``: an explicit memory per object, as the reference keeps it.

    ``full``: every row is real (no padding), so the masking multiplies are skipped; known once per
    memory, not re-checked (a host sync on GPUs) at every step.
    """

    def __init__(
        self,
        state: torch.Tensor,
        valid: torch.Tensor,
        image_index: torch.Tensor,
        grids: torch.Tensor,
        full: bool | None = None,
    ):
        self.state, self.valid, self.image_index, self.grids = state, valid, image_index, grids
        self.hidden_size = state.shape[-1]
        self.full = bool(valid.all()) if full is None else full
        self._normalised: tuple[float, torch.Tensor] | None = None

    @classmethod
    def from_shared(cls, base, base_valid, image_index, grids, full=None) -> DenseMemory:
        full = bool(base_valid.all()) if full is None else full
        if not full:
            base = base * base_valid[..., None].to(base.dtype)
        return cls(base[image_index], base_valid[image_index], image_index, grids, full)

    def project(self, weight, bias=None, *, rms_eps=None) -> torch.Tensor:
        x = self.state
        if rms_eps is not None:
            # a block's read (keys, values) and update (queries) normalise the same rows: once
            if self._normalised is None or self._normalised[0] != rms_eps:
                x32 = x.float()
                self._normalised = (
                    rms_eps,
                    (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + rms_eps)).to(x.dtype),
                )
            x = self._normalised[1]
        return F.linear(x, weight, bias)

    def dense(self) -> torch.Tensor:
        return self.state

    def read(self, queries, key, value, *, rms_eps, positions) -> torch.Tensor:
        heads = queries.shape[1]
        keys = rotate_pairs(self.project(*key, rms_eps=rms_eps), positions.per_object(self.image_index))
        values = self.project(*value, rms_eps=rms_eps)
        mask = None if self.full else self.valid
        return attend(queries, split_heads(keys, heads), split_heads(values, heads), mask)

    def update(self, keys, values, key_mask, query, out, *, rms_eps, positions) -> DenseMemory:
        heads = keys.shape[1]
        queries = rotate_pairs(self.project(*query, rms_eps=rms_eps), positions.per_object(self.image_index))
        queries = split_heads(queries, heads)
        if self.full:
            state = attend_projected(queries, keys, values, key_mask, out, residual=self.state)
        else:
            delta = attend_projected(queries, keys, values, key_mask, out)
            state = self.state + delta * self.valid[..., None].to(delta.dtype)
        return DenseMemory(state, self.valid, self.image_index, self.grids, self.full)

    def to_fine(self, fine, parents, fine_valid, grids, norm, full=None) -> DenseMemory:
        rows = parents[self.image_index]
        state = self.state.gather(1, rows[..., None].expand(-1, -1, self.hidden_size)) + fine[self.image_index]
        valid = fine_valid[self.image_index]
        full = bool(fine_valid.all()) if full is None else full
        state = norm(state) if full else norm(state) * valid[..., None].to(state.dtype)
        return DenseMemory(state, valid, self.image_index, grids, full)

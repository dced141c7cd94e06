"""The records that flow through the decoder: ``DecoderInputs`` (objects packed, their images), the trunk's
``TrunkOutput`` and ``ObjectMemory``, the ``DecoderContext`` heads read and the ``DecoderOutputs`` they fill.

Plugins import them from ``padt_core.decoder`` (its docstring draws the data flow).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .features import VisualFeatures
from .layout import Layout
from .packing import _shapes, _take

__all__ = ["DecoderContext", "DecoderInputs", "DecoderOutputs", "ObjectMemory", "TrunkOutput"]


# ---------------------------------------------------------------------------------------------------
# Inputs and targets
# ---------------------------------------------------------------------------------------------------


@dataclass
class DecoderInputs:
    """Objects of a batch, packed, and the images they point into.

    Attributes:
        features: one ``VisualFeatures`` per image (raster order).
        prototypes: per image ``[h*w, D_llm]`` VRT prototypes (same order as ``features[b].tokens``);
            the trunk's low-resolution memory is made from them.
        image_index: ``[n_obj]`` long, the image of each object.
        vrt_states: ``[sum_K, D_llm]`` last-layer LLM states at the steps that emitted each object's VRTs,
            objects back to back in object order.
        vrt_cells: ``[sum_K]`` long, cell index ``k`` of each VRT in its image.
        counts: ``[n_obj]`` long, ``K_o`` VRTs per object.
        original_sizes: per image ``(height, width)`` of the original image (post-processing target).
    """

    features: list[VisualFeatures]
    prototypes: list[torch.Tensor]
    image_index: torch.Tensor
    vrt_states: torch.Tensor
    vrt_cells: torch.Tensor
    counts: torch.Tensor
    original_sizes: list[tuple[int, int]]

    @property
    def num_objects(self) -> int:
        return int(self.counts.numel())

    @property
    def num_images(self) -> int:
        return len(self.features)

    @property
    def has_fine(self) -> bool:
        """Whether the images carry fine features (all or none of them do; see ``validate``)."""
        return bool(self.features) and self.features[0].fine is not None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the object/image and the reason for any inconsistent input."""
        n_img = self.num_images
        if len(self.prototypes) != n_img or len(self.original_sizes) != n_img:
            raise ValueError(
                f"DecoderInputs has {n_img} feature sets, {len(self.prototypes)} prototype tensors and "
                f"{len(self.original_sizes)} original sizes; they must all be per image"
            )
        for b, (feat, proto) in enumerate(zip(self.features, self.prototypes)):
            if proto.shape[0] != feat.num_cells:
                raise ValueError(
                    f"image {b}: {proto.shape[0]} prototypes for a {feat.grid[0]}x{feat.grid[1]} grid "
                    f"({feat.num_cells} cells)"
                )
        fine = [f.fine is not None for f in self.features]
        if any(fine) and not all(fine):
            raise ValueError(
                f"images {[b for b, x in enumerate(fine) if x]} carry fine features and images "
                f"{[b for b, x in enumerate(fine) if not x]} do not; all images of a batch must agree"
            )
        factors = {f.fine_factor for f in self.features}
        if len(factors) > 1:
            raise ValueError(f"images of one batch have different fine/grid factors {sorted(factors)}")
        n = self.num_objects
        if self.image_index.shape != (n,):
            raise ValueError(f"image_index has shape {tuple(self.image_index.shape)}, expected ({n},) (one per object)")
        total = self.vrt_states.shape[0]
        if self.vrt_cells.shape != (total,):
            raise ValueError(f"vrt_cells has shape {tuple(self.vrt_cells.shape)}, vrt_states has {total} rows")
        if n == 0:
            if total:
                raise ValueError(f"no objects (counts is empty) but {total} VRT states")
            return
        if int(self.counts.sum()) != total:
            raise ValueError(f"counts sum to {int(self.counts.sum())} but vrt_states has {total} rows")
        empty = (self.counts <= 0).nonzero()
        if len(empty):
            o = int(empty[0])
            raise ValueError(
                f"object {o} has {int(self.counts[o])} VRTs; every object needs at least one VRT hidden state"
            )
        bad_img = ((self.image_index < 0) | (self.image_index >= n_img)).nonzero()
        if len(bad_img):
            o = int(bad_img[0])
            raise ValueError(f"object {o} points to image {int(self.image_index[o])}, batch has {n_img} images")
        cells = torch.tensor([f.num_cells for f in self.features], device=self.vrt_cells.device)
        owner = torch.repeat_interleave(torch.arange(n, device=self.counts.device), self.counts)
        limit = cells[self.image_index.to(cells.device)[owner.to(cells.device)]]
        bad = ((self.vrt_cells < 0) | (self.vrt_cells >= limit)).nonzero()
        if len(bad):
            i = int(bad[0])
            o = int(owner[i])
            b = int(self.image_index[o])
            h, w = self.features[b].grid
            pos = i - int(self.counts[:o].sum())
            raise ValueError(
                f"object {o}: VRT {pos} has cell index {int(self.vrt_cells[i])}, outside its image {b} "
                f"(grid {h}x{w} = {h * w} cells)"
            )

    def select(self, objects: Sequence[int]) -> DecoderInputs:
        """The inputs of ``objects`` only (indices in ascending order); images stay as they are."""
        objects = list(objects)
        if any(b <= a for a, b in itertools.pairwise(objects)):
            raise ValueError(f"DecoderInputs.select needs ascending object indices, got {objects[:10]}")
        index = torch.tensor(objects, dtype=torch.long, device=self.counts.device)
        keep = torch.zeros(self.num_objects, dtype=torch.bool, device=self.counts.device)
        keep[index] = True
        rows = keep.repeat_interleave(self.counts, output_size=self.vrt_states.shape[0])
        return replace(
            self,
            image_index=self.image_index[index],
            vrt_states=self.vrt_states[rows],
            vrt_cells=self.vrt_cells[rows],
            counts=self.counts[index],
        )


# ---------------------------------------------------------------------------------------------------
# What a trunk hands to heads
# ---------------------------------------------------------------------------------------------------


class ObjectMemory(ABC):
    """The trunk's image memory after decoding, one copy per object (rows in layout order).

    Row ``i`` of object ``o`` is memory token ``i`` of o's image; rows are padded to the largest image
    of the batch and ``valid`` marks real ones. A trunk may keep the memory factored (a part shared by
    all objects of an image plus a per-object low-rank part), so heads read it only through
    ``project``, which never needs the per-object copies to exist.

    Attributes:
        valid: ``[n_obj, N]`` bool.
        grids: ``[n_obj, 2]`` long, ``(rows, cols)`` of each object's memory grid (raster over it).
        hidden_size: width ``d`` of a memory row.
    """

    valid: torch.Tensor
    grids: torch.Tensor
    hidden_size: int

    @abstractmethod
    def project(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, rms_eps: float | None = None
    ) -> torch.Tensor:
        """``linear(x, weight, bias)`` of every memory row, ``[n_obj, N, d_out]``.

        With ``rms_eps`` the rows are first RMS-normalised (``x / sqrt(mean(x²) + eps)``, no gain:
        fold a norm's gain into ``weight`` as ``weight * gain``).
        """

    def project_chunks(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        rms_eps: float | None = None,
        max_bytes: int = 8 * 2**20,
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """``project`` a few objects at a time: ``(objects, [len(objects), N, d_out])`` pairs in order.

        For heads that run more per-row work after the projection (the mask head): each chunk's
        buffers stay about ``max_bytes`` (cache-sized) instead of ``n_obj`` times one image's rows.
        This default yields everything at once.
        """
        yield slice(0, self.valid.shape[0]), self.project(weight, bias, rms_eps=rms_eps)

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """The memory itself, ``[n_obj, N, d]`` (a factored memory materialises it: one projection's cost)."""


@dataclass
class TrunkOutput:
    """What a trunk returns.

    Attributes:
        queries: ``[n_obj, Q, d]`` output tokens of the heads' query tokens, heads in order.
        memory: the per-object image memory (fine grid when the images have fine features), or
            ``None`` when no head asked for it.
    """

    queries: torch.Tensor
    memory: ObjectMemory | None = None


@dataclass
class DecoderContext:
    """Everything a head may look at besides its own query outputs.

    Attributes:
        inputs: the decoder inputs.
        layout: ordering/placement conventions of per-patch tensors.
        grids: ``[n_obj, 2]`` VRT grid (rows, cols) of each object's image.
        fine_grids: ``[n_obj, 2]`` fine grid of each object's image, ``None`` without fine features.
        original_sizes: ``[n_obj, 2]`` (height, width) of each object's original image.
        memory: the trunk's final memory (only while heads predict; ``None`` if no head reads it).
        predictions: predictions of every head, by head name (complete when losses run).
    """

    inputs: DecoderInputs
    layout: Layout
    grids: torch.Tensor
    fine_grids: torch.Tensor | None
    original_sizes: torch.Tensor
    memory: ObjectMemory | None = None
    predictions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_inputs(cls, inputs: DecoderInputs, layout: Layout) -> DecoderContext:
        device = inputs.image_index.device
        idx = inputs.image_index.long()

        def per_object(values: Sequence[tuple[int, int]]) -> torch.Tensor:
            table = torch.tensor(list(values), dtype=torch.long, device=device).view(-1, 2)
            return table[idx]

        fine = per_object([f.fine_grid for f in inputs.features]) if inputs.has_fine else None
        return cls(
            inputs=inputs,
            layout=layout,
            grids=per_object([f.grid for f in inputs.features]),
            fine_grids=fine,
            original_sizes=per_object(inputs.original_sizes),
        )

    @property
    def num_objects(self) -> int:
        return self.inputs.num_objects

    def require_fine(self, who: str) -> torch.Tensor:
        """The fine grids, or a ``ValueError`` naming ``who`` needs them and which objects lack them."""
        if self.fine_grids is None:
            objects = list(range(self.num_objects))
            raise ValueError(
                f"{who} needs fine image features (VisualFeatures.fine), but the images of this batch have "
                f"none (objects {objects[:10]}{'...' if len(objects) > 10 else ''}); use a backbone that "
                f"provides them or remove this head from decoder.heads"
            )
        return self.fine_grids

    def select(self, objects: Sequence[int]) -> DecoderContext:
        """The context of ``objects`` only (ascending indices): their inputs, grids and every head's predictions."""
        index = torch.tensor(list(objects), dtype=torch.long, device=self.grids.device)
        return DecoderContext(
            inputs=self.inputs.select(objects),
            layout=self.layout,
            grids=self.grids[index],
            fine_grids=None if self.fine_grids is None else self.fine_grids[index],
            original_sizes=self.original_sizes[index],
            predictions={k: _take(v, index) for k, v in self.predictions.items()},
        )


class DecoderOutputs(Mapping[str, Any]):
    """Predictions by head name (``outputs["box"]``), plus the ``context`` the heads saw."""

    def __init__(self, predictions: dict[str, Any], context: DecoderContext) -> None:
        self._predictions = predictions
        self.context = context

    def __getitem__(self, name: str) -> Any:
        return self._predictions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._predictions)

    def __len__(self) -> int:
        return len(self._predictions)

    def __repr__(self) -> str:
        shapes = {k: _shapes(v) for k, v in self._predictions.items()}
        return f"DecoderOutputs({shapes})"

"""Decoder interfaces: a *trunk* turns objects into query tokens, *heads* turn query tokens into outputs.

An object is a run of VRTs the LLM emitted; the decoder sees, per object, the last-layer hidden states
at the steps that emitted its VRTs and the features of its image (reference §5, §8.3)::

    vrt_states [sum_K, D_llm] ──┐                     ┌─> box head   ─> predict / loss / postprocess
    counts [n_obj] (K_o each)   ├─> Trunk ─> queries ─┼─> score head ─>   "
    image_index [n_obj]         │   (+ per-object     └─> mask head  ─>   "   (reads the memory too)
    features / prototypes ──────┘      image memory)

Packing: objects are rows of one batch, never a Python loop. ``vrt_states`` holds the objects back to
back; trunks pad them to ``[n_obj, K_max, D]`` with a validity mask (``pad_packed``); images of
different sizes are padded to the largest (``pad_rows``) and attention is restricted to each object's
own queries and its own image::

    vrt_states: |o0 o0 o0|o1 o1 o1 o1 o1|o2|   counts = [3, 5, 1]
    padded:     o0: q q q . .   o1: q q q q q   o2: q . . . .   (. = masked key)

Heads are plugins (entry-point group ``padt``, hook ``padt_heads``): each owns ``num_queries`` learned
query tokens, which the trunk prepends to every object's VRT queries, and reads back their outputs.
A recipe lists the heads it wants; a third-party package can add one (see ``docs/writing-a-head.md``).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .features import VisualFeatures
from .layout import Layout, get_layout
from .objects import ObjectTargets
from .plugins import PluginConfig, get_plugin

if TYPE_CHECKING:
    from .recipe import DecoderConfig
    from .viz import DrawContext

__all__ = [
    "SKIPPED_PREFIX",
    "DecoderContext",
    "DecoderInputs",
    "DecoderOutputs",
    "Head",
    "ObjectMemory",
    "ObjectTargets",
    "PaDTDecoder",
    "Trunk",
    "TrunkOutput",
    "pad_packed",
    "pad_rows",
]

#: Prefix of the loss entries that count, per head, the objects left out for lack of its targets.
SKIPPED_PREFIX = "skipped_"


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


# ---------------------------------------------------------------------------------------------------
# Plugin base classes
# ---------------------------------------------------------------------------------------------------


class Trunk(nn.Module, ABC):
    """Base of trunk plugins: per object, VRT states + image features → output query tokens.

    Subclasses set ``name`` and ``Config`` and keep ``hidden_size``, ``llm_hidden_size`` and
    ``vision_hidden_size`` (``None`` when built for a backbone without fine features).
    ``compile_training`` is set by the decoder from ``decoder.compile``: a trunk may then run its
    training forward through ``torch.compile`` (same values; ignoring it is correct too).
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]
    compile_training: bool = False

    hidden_size: int
    llm_hidden_size: int
    vision_hidden_size: int | None

    @classmethod
    @abstractmethod
    def from_config(
        cls,
        config: PluginConfig,
        *,
        llm_hidden_size: int,
        vision_hidden_size: int | None,
        num_queries: int,
        reads_memory: bool,
        layout: Layout,
    ) -> Trunk:
        """Build from the recipe's ``decoder.trunk`` section.

        ``num_queries`` is the number of head query tokens each object will carry; ``reads_memory``
        says whether some head reads the final memory (else the trunk may skip computing it).
        """

    @abstractmethod
    def forward(self, queries: torch.Tensor, inputs: DecoderInputs, *, return_memory: bool) -> TrunkOutput:
        """Decode all objects at once.

        Args:
            queries: ``[Q, d]`` the heads' learned query tokens, prepended to every object's queries.
            inputs: validated decoder inputs with at least one object.
            return_memory: whether to return the final per-object memory.
        """

    @classmethod
    def released_state_dict(
        cls, tensors: Mapping[str, torch.Tensor], head_names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Map a released PaDT checkpoint's decoder (``vl_decoder.*``, reference §10.2) onto this trunk and its heads.

        Args:
            tensors: the released decoder's tensors, keys without the ``vl_decoder.`` prefix. Read
                only the keys you map: the converter reports every key left unread as unmapped.
            head_names: the heads of the recipe's decoder.

        Returns:
            ``{key relative to PaDTDecoder ("trunk.…", "heads.box.…"): tensor}``.
        """
        raise NotImplementedError(f"trunk {cls.name!r} cannot read released PaDT checkpoints")

    def dummy_inputs(self, cell_size: int = 1) -> DecoderInputs:
        """One object on a one-cell blank image: run on empty batches so that every parameter is used.

        ``cell_size``: pixels of that cell (the batch's backbone cell when it has images); the values
        are never read, only the graph matters.
        """
        param = next(self.parameters())
        device, dtype = param.device, param.dtype
        fine, fine_grid = None, None
        if self.vision_hidden_size is not None:
            fine, fine_grid = torch.zeros(4, self.vision_hidden_size, device=device, dtype=dtype), (2, 2)
        features = VisualFeatures(
            tokens=torch.zeros(1, self.llm_hidden_size, device=device, dtype=dtype),
            grid=(1, 1),
            cell_size=cell_size,
            image_size=(cell_size, cell_size),
            fine=fine,
            fine_grid=fine_grid,
        )
        one = torch.ones(1, dtype=torch.long, device=device)
        return DecoderInputs(
            features=[features],
            prototypes=[features.tokens],
            image_index=one - 1,
            vrt_states=torch.zeros(1, self.llm_hidden_size, device=device, dtype=dtype),
            vrt_cells=one - 1,
            counts=one,
            original_sizes=[(cell_size, cell_size)],
        )


class Head(nn.Module, ABC):
    """Base of head plugins (box, score, mask, ...).

    A head owns ``num_queries`` learned query tokens (``self.query``, ``[num_queries, d]``), which the
    trunk decodes with every object; ``predict`` reads their outputs. Predictions are a tensor, or a
    tuple/dict of tensors, with the object on dim 0.

    Class attributes:
        name: registry name, used in recipes (``decoder.heads: [box, score]``).
        Config: pydantic model of the head's recipe section (loss weights, thresholds, ...).
        num_queries: query tokens per object.
        reads_memory: whether ``predict`` reads ``ctx.memory`` (the trunk then keeps it).
        needs_fine: whether the head needs fine image features (checked when the decoder is built).
        requires: names of heads whose predictions ``loss`` reads from ``ctx.predictions``.
        loss_keys: names of the terms ``loss`` returns (``box_giou``, ...); unique across heads.
        target_keys: the ``ObjectTargets`` keys ``loss`` reads (``"box"``, ``"mask"``, or an annotation
            extra such as ``"keypoints"``). ``loss`` sees only the objects that carry all of them; the
            decoder counts the others (``skipped_<name>`` in its losses).
        output_keys: the keys ``postprocess`` fills in each predicted object (``PredictedObject.outputs``);
            unique across heads. Default ``(name,)``: one value per object. With several keys each
            value is a dict holding exactly those keys.

    ``compile_training`` is set by the decoder from ``decoder.compile``: a head may
    then run its training math through ``torch.compile`` (same values; ignoring it is correct too).
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]
    compile_training: bool = False
    num_queries: ClassVar[int] = 1
    reads_memory: ClassVar[bool] = False
    needs_fine: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    loss_keys: ClassVar[tuple[str, ...]] = ()
    target_keys: ClassVar[tuple[str, ...]] = ()
    output_keys: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "output_keys" not in cls.__dict__ and "name" in cls.__dict__:
            cls.output_keys = (cls.name,)

    def __init__(self, config: PluginConfig, *, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.query = nn.Parameter(torch.empty(self.num_queries, hidden_size))
        nn.init.normal_(self.query, std=0.02)

    @classmethod
    def from_config(cls, config: PluginConfig, *, hidden_size: int) -> Head:
        """Build from the head's recipe section for a trunk of width ``hidden_size``."""
        return cls(config, hidden_size=hidden_size)

    @abstractmethod
    def predict(self, query_out: torch.Tensor, ctx: DecoderContext) -> Any:
        """Raw predictions from ``query_out`` ``[n_obj, num_queries, d]`` (and ``ctx.memory``)."""

    @abstractmethod
    def loss(self, pred: Any, targets: ObjectTargets, ctx: DecoderContext) -> dict[str, torch.Tensor]:
        """Weighted float32 loss terms keyed by ``loss_keys``; ``ctx.predictions`` holds every head's output."""

    @abstractmethod
    def postprocess(self, pred: Any, ctx: DecoderContext) -> list[Any]:
        """One plain Python value per object, in original-image coordinates (a ``{key: value}`` dict
        per object when the head has several ``output_keys``)."""

    def draw(self, key: str, value: Any, ctx: DrawContext) -> bool:
        """Draw output ``key`` of one object (``value`` as ``postprocess`` made it) onto ``ctx.draw``.

        Return ``False`` to leave it to ``padt_core.viz``'s default (a marker for a point, a text
        label otherwise). ``box``, ``score`` and ``mask`` are always drawn by ``viz`` itself.
        """
        return False


# ---------------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------------


class PaDTDecoder(nn.Module):
    """A trunk plus the heads a recipe lists.

    ``forward`` decodes every object of a batch at once, ``loss`` returns one float32 entry per loss
    term plus ``"total"``, and ``postprocess`` returns per object ``{head name: value}``, e.g.
    ``{"box": [x1, y1, x2, y2], "score": 0.93, "mask": bool array}`` in original-image pixels.
    """

    def __init__(
        self, trunk: Trunk, heads: Sequence[Head], layout: str | Layout = "raster", *, compile: bool = False
    ) -> None:
        super().__init__()
        names = [h.name for h in heads]
        if not names:
            raise ValueError("a decoder needs at least one head")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"decoder.heads lists {dupes} more than once")
        for head in heads:
            missing = [r for r in head.requires if r not in names]
            if missing:
                raise ValueError(f"head {head.name!r} needs head(s) {missing} in decoder.heads (has {names})")
            if head.needs_fine and trunk.vision_hidden_size is None:
                raise ValueError(
                    f"head {head.name!r} needs fine image features, but the backbone provides none "
                    f"(vision_hidden_size is None)"
                )
            if head.hidden_size != trunk.hidden_size:
                raise ValueError(f"head {head.name!r} has width {head.hidden_size}, trunk {trunk.hidden_size}")
        keys = [k for h in heads for k in h.loss_keys]
        clash = sorted({k for k in keys if keys.count(k) > 1 or k == "total" or k.startswith(SKIPPED_PREFIX)})
        if clash:
            raise ValueError(f"loss keys {clash} are claimed twice (or are reserved)")
        outputs = [k for h in heads for k in h.output_keys]
        clash = sorted({k for k in outputs if outputs.count(k) > 1 or k in ("label", "vrt")})
        if clash:
            owners = {k: [h.name for h in heads if k in h.output_keys] for k in clash}
            raise ValueError(f"output keys claimed twice (or reserved: label, vrt): {owners}")
        self.trunk = trunk
        self.heads = nn.ModuleDict({h.name: h for h in heads})
        self.layout = get_layout(layout)
        for part in (trunk, *heads):
            part.compile_training = compile

    @classmethod
    def from_config(cls, config: DecoderConfig, *, llm_hidden_size: int, vision_hidden_size: int | None) -> PaDTDecoder:
        """Build the trunk and heads named in a recipe's ``decoder`` section (looked up in the registry)."""
        layout = get_layout(config.layout)
        head_classes = [get_plugin("heads", h.name) for h in config.heads]
        trunk_cls = get_plugin("trunks", config.trunk.name)
        trunk = trunk_cls.from_config(
            config.trunk,
            llm_hidden_size=llm_hidden_size,
            vision_hidden_size=vision_hidden_size,
            num_queries=sum(c.num_queries for c in head_classes),
            reads_memory=any(c.reads_memory for c in head_classes),
            layout=layout,
        )
        heads = [c.from_config(h, hidden_size=trunk.hidden_size) for c, h in zip(head_classes, config.heads)]
        return cls(trunk, heads, layout, compile=config.compile)

    @property
    def reads_memory(self) -> bool:
        return any(h.reads_memory for h in self.heads.values())

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, inputs: DecoderInputs) -> DecoderOutputs:
        """Decode every object of ``inputs``; returns the heads' raw predictions by head name."""
        inputs.validate()
        if inputs.num_objects == 0:
            return self._forward_empty(inputs)
        ctx = DecoderContext.from_inputs(inputs, self.layout)
        return DecoderOutputs(self._predict(inputs, ctx), ctx)

    def _predict(self, inputs: DecoderInputs, ctx: DecoderContext) -> dict[str, Any]:
        queries = torch.cat([h.query for h in self.heads.values()], dim=0)
        out = self.trunk(queries, inputs, return_memory=self.reads_memory)
        ctx.memory = out.memory
        start = 0
        for name, head in self.heads.items():
            ctx.predictions[name] = head.predict(out.queries[:, start : start + head.num_queries], ctx)
            start += head.num_queries
        ctx.memory = None  # heads have read it; do not keep the per-object memory alive with the outputs
        return dict(ctx.predictions)

    def _forward_empty(self, inputs: DecoderInputs) -> DecoderOutputs:
        # Decode one dummy object so every parameter takes part in the graph (DDP and ZeRO-3 wait for
        # all of them), then return predictions with zero objects of the same trailing shapes.
        dummy = self.trunk.dummy_inputs(inputs.features[0].cell_size if inputs.features else 1)
        dummy_ctx = DecoderContext.from_inputs(dummy, self.layout)
        dummy_preds = self._predict(dummy, dummy_ctx)
        ctx = DecoderContext.from_inputs(inputs, self.layout)
        ctx.predictions = {k: _map_tensors(lambda t: t[:0], v) for k, v in dummy_preds.items()}
        outputs = DecoderOutputs(dict(ctx.predictions), ctx)
        outputs.dummy_predictions = dummy_preds  # read by loss()
        return outputs

    # --- loss ----------------------------------------------------------------------------------------
    def loss(
        self, outputs: DecoderOutputs, targets: ObjectTargets, inputs: DecoderInputs | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted float32 loss terms of every head, ``"total"`` (their sum) and per head
        ``"skipped_<name>"``: how many objects lacked one of its ``target_keys`` (left out of its loss).

        Each head's ``loss`` sees only the objects that carry its targets (``targets.select``,
        ``ctx.select``). A head none of whose objects does, and every head when there are zero
        objects, gives zeros that still depend on its parameters (DDP waits for every gradient).
        """
        ctx = outputs.context
        n = ctx.num_objects
        if inputs is not None and inputs.num_objects != n:
            raise ValueError(f"outputs hold {n} objects, inputs {inputs.num_objects}")
        targets.validate(n)
        losses: dict[str, torch.Tensor] = {}
        skipped: dict[str, int] = {}
        for name, head in self.heads.items():
            have = [targets.available(k, n) for k in head.target_keys]
            objects = [o for o in range(n) if all(col[o] for col in have)]
            skipped[name] = n - len(objects)
            if not objects:  # nothing to learn from: keep the head in the graph
                preds = outputs.dummy_predictions[name] if n == 0 else outputs[name]
                zero = sum(t.float().sum() for t in _tensors(preds)) * 0.0
                losses.update({k: zero for k in head.loss_keys})
                continue
            if len(objects) == n:
                terms = head.loss(outputs[name], targets, ctx)
            else:
                index = torch.tensor(objects, dtype=torch.long, device=ctx.grids.device)
                pred = _take(outputs[name], index)
                terms = head.loss(pred, targets.select(objects), ctx.select(objects))
            unknown = sorted(set(terms) - set(head.loss_keys))
            if unknown:
                raise ValueError(f"head {name!r} returned loss terms {unknown} not in its loss_keys")
            losses.update({k: v.float() for k, v in terms.items()})
        losses["total"] = sum(losses.values(), torch.zeros((), device=ctx.grids.device))
        # Host numbers (no device sync); every head always reports, so all ranks log the same keys.
        losses.update({f"{SKIPPED_PREFIX}{name}": torch.tensor(float(k)) for name, k in skipped.items()})
        return losses

    # --- post-processing -------------------------------------------------------------------------------
    def postprocess(self, outputs: DecoderOutputs, inputs: DecoderInputs | None = None) -> list[dict[str, Any]]:
        """Per object ``{output key: value}`` in original-image coordinates (the heads' ``output_keys``)."""
        ctx = outputs.context
        results: list[dict[str, Any]] = [{} for _ in range(ctx.num_objects)]
        for name, head in self.heads.items():
            values = head.postprocess(outputs[name], ctx)
            if len(values) != ctx.num_objects:
                raise ValueError(f"head {name!r} postprocessed {len(values)} values for {ctx.num_objects} objects")
            if len(head.output_keys) == 1:
                for res, value in zip(results, values):
                    res[head.output_keys[0]] = value
                continue
            for o, (res, value) in enumerate(zip(results, values)):
                if not isinstance(value, Mapping) or set(value) != set(head.output_keys):
                    got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                    raise ValueError(
                        f"head {name!r} declares output_keys {list(head.output_keys)} but postprocessed "
                        f"{got} for object {o}"
                    )
                res.update(value)
        return results


# ---------------------------------------------------------------------------------------------------
# Helpers shared by trunks and heads
# ---------------------------------------------------------------------------------------------------


def pad_packed(values: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects back to back ``[sum_K, ...]`` → ``[n, K_max, ...]`` zero-padded, and a ``[n, K_max]`` validity mask."""
    n = counts.numel()
    k_max = int(counts.max()) if n else 0
    owner = torch.repeat_interleave(torch.arange(n, device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(values.shape[0], device=counts.device) - starts[owner]
    out = values.new_zeros(n, k_max, *values.shape[1:])
    out[owner, slot] = values
    mask = torch.zeros(n, k_max, dtype=torch.bool, device=counts.device)
    mask[owner, slot] = True
    return out, mask


def pad_rows(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``[N_b, ...]`` tensors → ``[B, N_max, ...]`` zero-padded, and a ``[B, N_max]`` validity mask."""
    if len({r.shape[0] for r in rows}) == 1:  # images of one size: a stack, all rows valid
        padded = torch.stack(list(rows))
        return padded, torch.ones(padded.shape[:2], dtype=torch.bool, device=padded.device)
    padded = nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
    lengths = torch.tensor([r.shape[0] for r in rows], device=padded.device)
    valid = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return padded, valid


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(fn, v) for v in obj)
    return obj


def _take(obj: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` (objects) of every tensor of a prediction."""
    return _map_tensors(lambda t: t[index.to(t.device)], obj)


def _shapes(obj: Any) -> Any:
    return _map_tensors(lambda t: tuple(t.shape), obj)

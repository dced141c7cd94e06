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

Where each part lives: this module holds the plugin interfaces (``Trunk``, ``Head``) and re-exports the
rest, which plugins import from here too: the records (``padt_core/decoder_data.py``), ``PaDTDecoder``
(``padt_core/padt_decoder.py``) and the packing helpers (``padt_core/packing.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .decoder_data import DecoderContext, DecoderInputs, DecoderOutputs, ObjectMemory, TrunkOutput
from .features import VisualFeatures
from .layout import Layout
from .objects import ObjectTargets
from .packing import pad_packed, pad_rows
from .padt_decoder import SKIPPED_PREFIX, PaDTDecoder
from .plugins import PluginConfig

if TYPE_CHECKING:
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

"""The object record: one object from its annotation to its prediction, whatever its heads learn.

Every stage carries the same open set of keys, so a head with a new kind of target (keypoints, a
centre, a depth) needs no edit here or anywhere else in the core::

    ObjectAnn            box, mask, extra = {"keypoints": [[x, y, v]], ...}   (a dataset reader fills extra)
      │ PaDTCollator
    ObjectBatch          the batch's objects packed back to back: sample, counts, positions, cells,
      │                  targets = ObjectTargets(boxes, masks, extras by key)
      │ pack_objects     (the one packer, for training and for inference)
    DecoderInputs ─> heads: loss reads the head's ``target_keys``, postprocess fills its ``output_keys``
      │
    PredictedObject      label, vrt, outputs = {"box": ..., "score": ..., "mask": ..., "keypoints": ...}
      │ object_json
    JSON                 label, vrt, box, score, mask, then every other output key

Inference builds its ``ObjectBatch`` from the parsed completions (:meth:`ObjectBatch.from_parsed`);
training gets it from the collator, with targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .decoder import DecoderInputs
    from .vrt import ParsedCompletion

__all__ = [
    "FAMILIAR_KEYS",
    "ObjectBatch",
    "ObjectTargets",
    "PredictedObject",
    "json_value",
    "object_json",
    "pack_objects",
]

#: Output keys every ``PredictedObject`` has as attributes (``None`` when no head produced them) and
#: every prediction JSON object has, in this order, after ``label`` and ``vrt``.
FAMILIAR_KEYS = ("box", "score", "mask")


# ---------------------------------------------------------------------------------------------------
# Targets by key
# ---------------------------------------------------------------------------------------------------


@dataclass
class ObjectTargets:
    """Ground truth per object, in object order, by *target key*.

    ``"box"`` and ``"mask"`` are the annotation's own fields; every other key is an annotation extra
    (``ObjectAnn.extra``, filled by a dataset reader: ``"keypoints"``, ``"depth"``, ...).
    A head lists the keys its loss reads in ``Head.target_keys``; ``PaDTDecoder.loss`` hands it only
    the objects that carry all of them (``select``) and counts the others.

    Attributes:
        boxes: ``[n_obj, 4]`` (x1, y1, x2, y2) normalised to [0, 1] by the image size, or ``None``
            (no boxes: a head that needs ``"box"`` learns from no object).
        masks: per object a bool/float ``[H, W]`` mask at any resolution (e.g. the original image) or
            ``None`` (no mask: the object is left out of the mask loss). ``None`` = no masks at all.
        extras: per extra key, one value per object (a tensor, or ``None`` where the object's
            annotation lacks the key).

    Example:
        >>> targets = ObjectTargets(extras={"depth": [torch.tensor([3.2]), None]})
        >>> targets.available("depth", 2), targets.select([0])["depth"].shape
        ([True, False], torch.Size([1, 1]))
    """

    boxes: torch.Tensor | None = None
    masks: list[torch.Tensor | None] | None = None
    extras: dict[str, list[Any]] = field(default_factory=dict)

    def mask_list(self, n: int) -> list[torch.Tensor | None]:
        masks = self.masks if self.masks is not None else [None] * n
        if len(masks) != n:
            raise ValueError(f"ObjectTargets has {len(masks)} masks for {n} objects")
        return list(masks)

    def validate(self, n: int) -> None:
        """Raise ``ValueError`` naming the key when a target does not hold one entry per object."""
        if self.boxes is not None and tuple(self.boxes.shape) != (n, 4):
            raise ValueError(f"targets.boxes has shape {tuple(self.boxes.shape)}, expected ({n}, 4)")
        self.mask_list(n)
        for key, values in self.extras.items():
            if len(values) != n:
                raise ValueError(f"ObjectTargets has {len(values)} {key!r} targets for {n} objects")

    def available(self, key: str, n: int) -> list[bool]:
        """Per object, whether it carries target ``key`` (host-side: no device sync)."""
        if key == "box":
            return [self.boxes is not None] * n
        if key == "mask":
            return [m is not None for m in self.mask_list(n)]
        values = self.extras.get(key)
        return [False] * n if values is None else [v is not None for v in values]

    def __getitem__(self, key: str) -> Any:
        """``"box"``: ``boxes``; ``"mask"``: the mask list; an extra: its values stacked ``[n_obj, ...]``.

        Raises ``KeyError`` for a key no object carries and ``ValueError`` when some objects lack it
        (a head's ``loss`` sees only objects that carry its ``target_keys``).
        """
        if key == "box":
            if self.boxes is None:
                raise KeyError("these targets hold no boxes")
            return self.boxes
        if key == "mask":
            if self.masks is None:
                raise KeyError("these targets hold no masks")
            return self.masks
        if key not in self.extras:
            raise KeyError(f"no object carries target {key!r} (extras: {sorted(self.extras)})")
        values = self.extras[key]
        missing = [o for o, v in enumerate(values) if v is None]
        if missing:
            raise ValueError(f"objects {missing[:10]} have no {key!r} target; list it in the head's target_keys")
        if not values:
            return torch.zeros(0)
        return torch.stack([torch.as_tensor(v) for v in values])

    def select(self, objects: Sequence[int]) -> ObjectTargets:
        """The targets of ``objects`` (indices, in that order)."""
        objects = list(objects)
        boxes = None
        if self.boxes is not None:
            boxes = self.boxes[torch.tensor(objects, dtype=torch.long, device=self.boxes.device)]
        masks = None if self.masks is None else [self.masks[o] for o in objects]
        extras = {k: [v[o] for o in objects] for k, v in self.extras.items()}
        return ObjectTargets(boxes=boxes, masks=masks, extras=extras)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ObjectTargets:
        """A copy with ``fn`` applied to every tensor (a device move, ``pin_memory``, ...)."""

        def apply(v: Any) -> Any:
            return fn(v) if isinstance(v, torch.Tensor) else v

        return ObjectTargets(
            boxes=apply(self.boxes),
            masks=None if self.masks is None else [apply(m) for m in self.masks],
            extras={k: [apply(v) for v in values] for k, values in self.extras.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ObjectTargets:
        """A copy with every tensor on ``device``."""
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))


# ---------------------------------------------------------------------------------------------------
# The objects of a batch
# ---------------------------------------------------------------------------------------------------


@dataclass
class ObjectBatch:
    """The objects of a batch, back to back in object order (samples in batch order), and their targets.

    Attributes:
        sample: ``[n_obj]`` long, the batch row of each object.
        counts: ``[n_obj]`` long, ``K_o`` VRTs per object.
        positions: ``[sum_K]`` long, completion index of each VRT: the LLM state that emitted it is
            ``hidden_states[sample, position]`` of a forward with ``logits_to_keep = L + 1``.
        cells: ``[sum_K]`` long, cell index of each VRT in its image (raster order).
        keep: ``[n_obj]`` long, how many of each object's VRTs the decoder sees when trained on cell
            subsets (``train.decoder_cell_subsets``), drawn by the collator; ``None`` at inference.
        targets: the ground truth (training), ``None`` at inference.
        image: ``[n_obj]`` long, which of its sample's images each object lies in (``None``: the first,
            as for every single-image sample).
    """

    sample: torch.Tensor
    counts: torch.Tensor
    positions: torch.Tensor
    cells: torch.Tensor
    keep: torch.Tensor | None = None
    targets: ObjectTargets | None = None
    image: torch.Tensor | None = None

    @property
    def num_objects(self) -> int:
        return int(self.counts.numel())

    @classmethod
    def from_parsed(cls, parsed: Sequence[ParsedCompletion], device: torch.device | str = "cpu") -> ObjectBatch:
        """The objects of parsed completions (row ``b`` of the generated ids = ``parsed[b]``)."""
        sample, counts, positions, cells, image = [], [], [], [], []
        for b, completion in enumerate(parsed):
            for obj in completion.objects:
                sample.append(b)
                counts.append(len(obj.vrt))
                positions += obj.steps
                cells += obj.vrt if obj.cells is None else obj.cells
                image.append(obj.image)

        def long(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            sample=long(sample),
            counts=long(counts),
            positions=long(positions),
            cells=long(cells),
            image=long(image) if any(image) else None,
        )

    def prefix(self, keep: torch.Tensor) -> ObjectBatch:
        """Only the first ``keep[o]`` (1..K_o) VRTs of each object (targets are drawn in random order,
        so a prefix is a random subset)."""
        keep = keep.to(self.counts.device)
        starts = torch.cumsum(self.counts, 0) - self.counts
        rank = torch.arange(self.cells.numel(), device=self.counts.device) - torch.repeat_interleave(
            starts, self.counts
        )
        rows = rank < torch.repeat_interleave(keep, self.counts)
        return replace(self, counts=keep, positions=self.positions[rows], cells=self.cells[rows], keep=None)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ObjectBatch:
        """A copy with ``fn`` applied to every tensor, targets included (a device move, ``pin_memory``)."""
        return ObjectBatch(
            sample=fn(self.sample),
            counts=fn(self.counts),
            positions=fn(self.positions),
            cells=fn(self.cells),
            keep=None if self.keep is None else fn(self.keep),
            targets=None if self.targets is None else self.targets.map_tensors(fn),
            image=None if self.image is None else fn(self.image),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ObjectBatch:
        """A copy with every tensor on ``device``."""
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))


def pack_objects(
    objects: ObjectBatch,
    encoded: Any,
    hidden_states: torch.Tensor | None,
    original_sizes: Sequence[tuple[int, int]],
    *,
    from_prototypes: bool = False,
) -> DecoderInputs:
    """The decoder's inputs for ``objects``: the one packing used by training and by ``predict``.

    Args:
        objects: the batch's objects.
        encoded: the batch's ``padt_core.model.Encoded`` (features, prototypes, image of each sample).
        hidden_states: ``[B, T, D]`` last-layer LLM states, index ``t`` = the state that emitted
            completion token ``t``; unused with ``from_prototypes``.
        original_sizes: per image ``(height, width)`` of the original image.
        from_prototypes: read each VRT's own prototype instead of the LLM state that emitted it (the
            prototype warm-up: early in training the LLM's states are noise).

    Example:
        >>> inputs = pack_objects(ObjectBatch.from_parsed(parsed), encoded, out.hidden_states, sizes)
        >>> results = decoder.postprocess(decoder(inputs), inputs)
    """
    from .decoder import DecoderInputs  # decoder.py imports this module (ObjectTargets)

    counts, cells = objects.counts, objects.cells
    device = counts.device
    # The batch image of each object: its sample's `image`-th image (the first when `objects.image` is None).
    own = encoded.sample_images
    widest = max((len(o) for o in own), default=0)
    table = torch.tensor([[*o, *[-1] * (widest - len(o))] for o in own], dtype=torch.long, device=device)
    if not counts.numel():
        image_index = counts
    elif objects.image is None:
        image_index = table[objects.sample, 0]
    else:
        image_index = table[objects.sample, objects.image.to(device)]
    if from_prototypes:
        width = encoded.prototypes[0].shape[-1] if encoded.prototypes else hidden_states.shape[-1]
        if cells.numel():
            flat = torch.cat(encoded.prototypes)
            offsets = torch.tensor([0] + [p.shape[0] for p in encoded.prototypes], device=device).cumsum(0)
            states = flat[offsets[image_index.repeat_interleave(counts)] + cells]
        else:
            states = encoded.prototypes[0].new_zeros(0, width) if encoded.prototypes else hidden_states[0, :0]
    else:
        rows = objects.sample.repeat_interleave(counts)
        states = hidden_states[rows, objects.positions]
    return DecoderInputs(
        features=encoded.features,
        prototypes=encoded.prototypes,
        image_index=image_index,
        vrt_states=states,
        vrt_cells=cells,
        counts=counts,
        original_sizes=list(original_sizes),
    )


# ---------------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------------


@dataclass(init=False, repr=False, eq=False)
class PredictedObject:
    """One predicted object: its label, its VRT cells and every head's post-processed output by key.

    ``outputs`` holds what the decoder heads produced (their ``output_keys``), in original-image
    coordinates: ``obj.outputs["keypoints"]``. The familiar ones are attributes too (``None`` when
    no head produced them): ``box`` (xyxy pixels), ``score`` (in [0, 1]), ``mask`` (bool ``[H, W]``
    at the original image size).

    Example:
        >>> obj = PredictedObject("red square", [3, 4], box=[10.0, 8.0, 40.0, 30.0], outputs={"depth": 3.2})
        >>> obj.box, obj.score, sorted(obj.outputs)
        ([10.0, 8.0, 40.0, 30.0], None, ['box', 'depth'])
    """

    label: str
    vrt: list[int]
    outputs: dict[str, Any]
    image: int | None
    cells: list[int] | None

    def __init__(
        self,
        label: str,
        vrt: list[int],
        box: list[float] | None = None,
        score: float | None = None,
        mask: np.ndarray | None = None,
        *,
        outputs: Mapping[str, Any] | None = None,
        image: int | None = None,
        cells: list[int] | None = None,
    ) -> None:
        self.label = label
        self.vrt = vrt
        # Set for samples with several images: which one the object is in, its cells in that image's grid
        # (``vrt`` numbers the concatenation of the images' cells); outputs are in that image's pixels.
        self.image = image
        self.cells = cells
        merged = dict(outputs or {})
        merged.update({k: v for k, v in zip(FAMILIAR_KEYS, (box, score, mask)) if v is not None})
        # the familiar keys first, then the others in the order the heads produced them
        self.outputs: dict[str, Any] = {**{k: merged[k] for k in FAMILIAR_KEYS if k in merged}, **merged}

    box = property(lambda self: self.outputs.get("box"), doc="``[x1, y1, x2, y2]`` in original-image pixels")
    score = property(lambda self: self.outputs.get("score"), doc="confidence in [0, 1]")
    mask = property(lambda self: self.outputs.get("mask"), doc="bool ``[H, W]`` at the original image size")

    def __repr__(self) -> str:
        shown = {k: (f"array{tuple(v.shape)}" if isinstance(v, np.ndarray) else v) for k, v in self.outputs.items()}
        where = "" if self.image is None else f", image={self.image}, cells={self.cells!r}"
        return f"PredictedObject(label={self.label!r}, vrt={self.vrt!r}{where}, outputs={shown})"


def json_value(value: Any, rle: bool = False, key: str = "value") -> Any:
    """A head output as JSON: tensors and arrays as (nested) lists, numpy/torch scalars as numbers.

    A boolean ``[H, W]`` array is a mask: COCO RLE with ``rle``, else its shape and area (the
    pixels of a full-resolution mask do not belong in a terminal). ``key`` names the output in
    the error for a value that has no JSON form.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _mask_json(value, rle) if value.dtype == np.bool_ and value.ndim == 2 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): json_value(v, rle, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v, rle, key) for v in value]
    raise TypeError(
        f"output {key!r} is a {type(value).__name__}, which has no JSON form; a head's postprocess should "
        "return numbers, lists, dicts, tensors or arrays"
    )


def object_json(obj: PredictedObject, rle: bool = False) -> dict[str, Any]:
    """One predicted object as JSON: ``label``, ``vrt`` (then ``image`` and ``cells`` for an object of a
    multi-image sample), ``box``, ``score``, ``mask`` (always, ``None`` when absent; boxes as floats), then
    every other output key in the order the heads produced them."""
    out: dict[str, Any] = {"label": obj.label, "vrt": [int(k) for k in obj.vrt]}
    if obj.image is not None:  # an object of a multi-image sample
        out["image"] = int(obj.image)
        out["cells"] = [int(k) for k in (obj.cells if obj.cells is not None else obj.vrt)]
    out |= {
        "box": None if obj.box is None else [float(v) for v in obj.box],
        "score": None if obj.score is None else float(obj.score),
        "mask": None,
    }
    if obj.mask is not None:
        mask = np.asarray(obj.mask.detach().cpu() if isinstance(obj.mask, torch.Tensor) else obj.mask)
        out["mask"] = _mask_json(mask, rle)
    for key, value in obj.outputs.items():
        if key not in out:
            out[key] = json_value(value, rle, key)
    return out


def _mask_json(mask: np.ndarray, rle: bool) -> dict[str, Any]:
    if rle:
        from .rle import encode

        return encode(mask)
    return {"shape": list(mask.shape), "area": int(mask.sum())}

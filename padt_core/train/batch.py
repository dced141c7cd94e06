"""``TrainBatch``: the typed contract between the collator and the training step.

It is a dataclass, read as ``batch.objects.targets.boxes``; it is also a read-only mapping over its
field names, because Hugging Face ``Trainer`` asks ``"labels" in inputs`` and ``len(inputs)`` of
every batch. Device moves go through :meth:`TrainBatch.to` (what accelerate's ``send_to_device``
calls on an object that has ``to``; ``PaDTTrainer._prepare_inputs`` calls it too) and pinned memory
through :meth:`TrainBatch.pin_memory` (what torch's ``DataLoader`` calls first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..backbone import BackboneBatch
from ..objects import ObjectBatch

__all__ = ["TrainBatch"]


@dataclass
class TrainBatch(Mapping[str, Any]):
    """One training batch (from ``PaDTCollator``).

    Attributes:
        prompt: the backbone's processed prompts and images (left-padded ``input_ids`` ``[B, Lp]``).
        completion_ids: ``[B, L]`` long, text and VRT ids (VRT = ``V + cell``), right-padded.
        completion_mask: ``[B, L]`` long, 1 on real completion tokens.
        vrt_ignore: ``[B, L, P_max]`` bool, cells removed from the softmax at each position (robust
            CE), or ``None`` for an answer format without VRTs.
        objects: the batch's objects (VRT positions and cells) and their targets.
        original_sizes: per image ``(height, width)`` of the original image.
        skipped: samples the collator dropped while building this batch, by reason (``missing_image``, ...):
            counted by the Trainer in the main process, whichever DataLoader worker collated the batch.
    """

    prompt: BackboneBatch
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    vrt_ignore: torch.Tensor | None
    objects: ObjectBatch
    original_sizes: list[tuple[int, int]]
    skipped: dict[str, int] = field(default_factory=dict)

    # --- the mapping view Trainer needs ---------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(f"TrainBatch has no field {key!r} (fields: {', '.join(self._keys())})")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def batch_size(self) -> int:
        return int(self.completion_ids.shape[0])

    # --- device moves ----------------------------------------------------------------------------------
    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainBatch:
        """A copy with ``fn`` applied to every tensor (prompt, completion, objects and targets)."""

        def apply(value: Any) -> Any:
            return fn(value) if isinstance(value, torch.Tensor) else value

        prompt = BackboneBatch()
        for key, value in self.prompt.items():
            prompt[key] = apply(value)
        return TrainBatch(
            prompt=prompt,
            completion_ids=fn(self.completion_ids),
            completion_mask=fn(self.completion_mask),
            vrt_ignore=apply(self.vrt_ignore),
            objects=self.objects.map_tensors(fn),
            original_sizes=list(self.original_sizes),
            skipped=dict(self.skipped),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        """A copy with every tensor on ``device``."""
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TrainBatch:
        """A copy with every CPU tensor in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        return self.map_tensors(lambda t: t.pin_memory())

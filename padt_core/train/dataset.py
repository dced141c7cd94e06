"""The training dataset: dataset readers concatenated, each sample handed a seed for its VRT targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

__all__ = ["SampleDataset"]


class SampleDataset(Dataset):
    """Samples of several readers (or plain sample lists) with a per-(sample, epoch) seed.

    The Trainer calls ``set_epoch`` every epoch; readers whose samples vary by epoch (COCO category
    shuffling) are told too, so every epoch sees fresh prompts while staying reproducible.
    """

    def __init__(self, sources: Sequence[Any], seed: int = 0):
        self.sources = list(sources)
        self.seed = seed
        self.epoch = 0
        self._offsets = [0]
        for source in self.sources:
            self._offsets.append(self._offsets[-1] + len(source))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(self.epoch)

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = next(i for i in range(len(self.sources)) if index < self._offsets[i + 1])
        sample = self.sources[part][index - self._offsets[part]]
        return {"sample": sample, "seed": [self.seed, self.epoch, index]}

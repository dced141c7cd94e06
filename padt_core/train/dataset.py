"""A map-style dataset of samples that hands each sample a seed for its random VRT targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from ..data.sample import Sample

__all__ = ["SampleDataset"]


class SampleDataset(Dataset):
    """Samples plus a per-(sample, epoch) seed; the Trainer calls ``set_epoch`` every epoch."""

    def __init__(self, samples: Sequence[Sample], seed: int = 0):
        self.samples = list(samples)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"sample": self.samples[index], "seed": [self.seed, self.epoch, index]}

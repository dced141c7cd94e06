"""The training dataset: dataset readers concatenated, each sample handed a seed for its VRT targets.

``task_weights`` re-balances the task mix (recipe ``data.task_weights``): a weight ``w`` draws every
sample of that task ``floor(w)`` times per epoch plus a seeded ``frac(w)`` share of them, chosen afresh
each epoch (0 drops the task). The epoch length stays the same from epoch to epoch, so the Trainer's
step count holds. Generated shapes data has ~3 referring sentences per object but one OVD prompt and
one caption per image: unweighted, OVD and RIC are ~12 % each of what the model sees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["SampleDataset"]


class SampleDataset(Dataset):
    """Samples of several readers (or plain sample lists) with a per-(sample, epoch) seed.

    The Trainer calls ``set_epoch`` every epoch; readers whose samples vary by epoch (COCO category
    shuffling) are told too, so every epoch sees fresh prompts while staying reproducible.
    """

    def __init__(self, sources: Sequence[Any], seed: int = 0, task_weights: Mapping[str, float] | None = None):
        self.sources = list(sources)
        self.seed = seed
        self.epoch = 0
        self._offsets = [0]
        for source in self.sources:
            self._offsets.append(self._offsets[-1] + len(source))
        self.task_weights = dict(task_weights or {})
        bad = {t: w for t, w in self.task_weights.items() if not (w >= 0 and math.isfinite(w))}
        if bad:
            raise ValueError(f"task_weights must be finite and >= 0, got {bad}")
        self._by_task: dict[str, np.ndarray] = {}
        self._order: np.ndarray | None = None  # epoch's sample order when weighted: position -> sample index
        if any(w != 1 for w in self.task_weights.values()):
            tasks: dict[str, list[int]] = {}
            for i in range(self._offsets[-1]):
                tasks.setdefault(self._sample(i).task, []).append(i)
            unknown = sorted(set(self.task_weights) - set(tasks))
            if unknown:
                have = sorted(tasks)
                raise ValueError(f"task_weights name tasks {unknown} that the training data does not have ({have})")
            self._by_task = {t: np.asarray(ix) for t, ix in tasks.items()}
            self._order = self._epoch_order()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(self.epoch)
        if self._order is not None:
            self._order = self._epoch_order()

    def task_counts(self) -> dict[str, int]:
        """Samples per task in one epoch (after weighting)."""
        if self._order is None:
            counts: dict[str, int] = {}
            for i in range(len(self)):
                task = self._sample(i).task
                counts[task] = counts.get(task, 0) + 1
            return counts
        return {t: self._drawn(t) for t in self._by_task if self._drawn(t)}

    def __len__(self) -> int:
        return self._offsets[-1] if self._order is None else len(self._order)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        sample = self._sample(index if self._order is None else int(self._order[index]))
        # the position, not the sample, seeds the VRT targets: repeats of a sample get different ones
        return {"sample": sample, "seed": [self.seed, self.epoch, index]}

    def _sample(self, index: int) -> Any:
        part = next(i for i in range(len(self.sources)) if index < self._offsets[i + 1])
        return self.sources[part][index - self._offsets[part]]

    def _drawn(self, task: str) -> int:
        return round(self.task_weights.get(task, 1.0) * len(self._by_task[task]))

    def _epoch_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 0x7A5C])
        parts = []
        for task, indices in self._by_task.items():
            whole, rest = divmod(self._drawn(task), len(indices))
            parts += [indices] * whole
            parts.append(rng.choice(indices, size=rest, replace=False))
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.sort(order, kind="stable")

"""Objects as rows of one batch: padding packed per-object runs and per-image rows, and row selection in
predictions (a tensor, or a tuple/list/dict of tensors, with the object on dim 0).

Shared by trunks, heads and the decoder (``padt_core/decoder.py`` describes the packing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["pad_packed", "pad_rows"]


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

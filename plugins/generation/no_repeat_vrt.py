"""No-repeat VRT decoding: inside a run of consecutive VRTs, a cell already emitted cannot come again.

The robust per-token CE never ranks an object's own cells against each other, so greedy decoding
tends to repeat its favourite cell; forbidding repeats within the run gives distinct cells. An
optional cap on the run length ends runs that would grow without bound.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from transformers import LogitsProcessor

from padt_core.plugins import PluginConfig

__all__ = ["NoRepeatVRT", "NoRepeatVRTConfig"]


class NoRepeatVRTConfig(PluginConfig):
    name: Literal["no_repeat_vrt"] = "no_repeat_vrt"
    max_run: int | None = Field(None, ge=1, description="at most this many VRTs in a row (None: no cap)")


class NoRepeatVRT(LogitsProcessor):
    """Works with greedy, sampling and beam search, any batch size (rows are independent)."""

    name: ClassVar[str] = "no_repeat_vrt"
    Config: ClassVar[type[PluginConfig]] = NoRepeatVRTConfig

    def __init__(self, vocab_rows: int, max_run: int | None = None):
        self.vocab_rows = vocab_rows
        self.max_run = max_run

    @classmethod
    def from_config(cls, config: NoRepeatVRTConfig, model) -> NoRepeatVRT:
        return cls(model.backbone.vocab_rows, config.max_run)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width = scores.shape[-1] - self.vocab_rows
        if width <= 0:
            return scores
        is_vrt = input_ids >= self.vocab_rows
        # Trailing run: positions from the last non-VRT token to the end.
        run = is_vrt.flip(-1).long().cumprod(-1).flip(-1).bool()
        cells = (input_ids - self.vocab_rows).clamp(0, width - 1)
        forbid = torch.zeros(scores.shape[0], width, dtype=torch.long, device=scores.device)
        forbid.scatter_reduce_(1, cells, run.long(), reduce="amax")
        forbid = forbid.bool()
        if self.max_run is not None:
            forbid |= (run.sum(-1) >= self.max_run).unsqueeze(-1)
        vrt_scores = scores[:, self.vocab_rows :].masked_fill(forbid, -float("inf"))
        return torch.cat([scores[:, : self.vocab_rows], vrt_scores], dim=-1)

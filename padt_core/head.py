"""PaDT head: the extended classifier ``[text logits ++ per-sample VRT logits]``.

VRT logit of cell ``k`` for sample ``b`` = ``h · bank[b, k]`` (no bias, no scale). Padding columns
(cells that the sample's image does not have) get the dtype's minimum, not ``-inf``, so a fully
masked row can never produce NaN in a softmax.
"""

from __future__ import annotations

import torch

from .embedding import PrototypeBank

__all__ = ["extend_logits", "vrt_logits"]


def vrt_logits(hidden: torch.Tensor, bank: PrototypeBank) -> torch.Tensor:
    """``[B, T, P]`` logits of the sample's own cells, padding at the dtype's minimum (one kernel)."""
    view = bank.view(hidden.shape[0], hidden.dtype)
    return torch.baddbmm(view.bias, hidden, view.bank_t)


def extend_logits(text_logits: torch.Tensor, hidden: torch.Tensor, bank: PrototypeBank) -> torch.Tensor:
    """``cat(text_logits, vrt_logits)`` along the vocabulary axis; column ``V + k`` is VRT ``k``."""
    if bank.width == 0:
        return text_logits
    vrt = vrt_logits(hidden, bank)
    return torch.cat([text_logits, vrt if vrt.dtype == text_logits.dtype else vrt.to(text_logits.dtype)], dim=-1)

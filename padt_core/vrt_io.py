"""The backbone LLM's VRT input and output while a PaDT forward or ``generate`` runs.

VRT ids (``>= V``) read their sample's prototype instead of an embedding row, and the classifier
appends the sample's VRT logits to the text logits (``[B, T, V + P]``). Instead of forward hooks, the
input embedding's and ``lm_head``'s ``forward`` are replaced for the duration of the block (what
accelerate does for its hooks): no hook dispatch, and every tensor a step needs is prepared once
per call and batch size (:class:`_Prepared`), so a decoding step adds no per-step tensor setup.

Three paths, the same values:

- **fused** (inference, small tables, plain ``nn.Embedding`` / ``nn.Linear`` modules): per batch size
  one table ``[n, V + P, D]`` = the embedding rows followed by the sample's prototypes, so a step's
  embedding is one ``torch.embedding`` (ids offset by ``b * (V + P)`` for ``n > 1``). At batch 1 the
  classifier is one product too, over the same ``[V + P, D]`` rows, with a bias that holds the
  ``lm_head`` bias, the never-generate mask and the padding mask: a step issues exactly the plain
  backbone's operations. It copies the embedding table ``n`` times per call, so it is taken only
  while that copy stays within ``fused_bytes`` (tiny and small-vocabulary models; a 150 k-row
  vocabulary never is).
- **split** (the classifier of a decoding step at ``n > 1``, or at any ``n`` without a fused table; a plain
  ``nn.Linear``, no gradients): the plain text product (``addmm`` with the never-generate bias) and the
  samples' VRT product (``bmm``; ``baddbmm`` with the padding bias if the bank has padding) written into
  one ``[n, 1, V + P]`` buffer reused from step to step (:func:`_split_step`): no ``cat``, no new logits
  tensor per step.
- **general** (training, other module types, and any pass over more than one position, which so
  rounds exactly like the plain classifier): the module's own forward on the text ids, one
  ``F.embedding`` into the flattened bank and a ``where``; the text logits (never-generate mask folded
  into the bias), ``baddbmm`` VRT logits and a ``cat`` (``padt_core.embedding`` / ``padt_core.head``).

``suppress`` ids (the backbone's :attr:`~padt_core.backbone.Backbone.never_generate_ids`: image
placeholders, vision start/end) get the dtype's minimum as logit, folded into the same bias.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import PrototypeBank, embed_with_bank
from .head import extend_logits

__all__ = ["FUSED_TABLE_BYTES", "vrt_io"]

#: Largest per-call fused table (``n × (V + P) × D`` elements) the fused path builds.
FUSED_TABLE_BYTES = 32 * 2**20
#: How many tensors share a storage (torch's own private counter; without it every step gets a new buffer).
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)
# Bound once: a decoding step's key reads them at every token (a module attribute lookup each, otherwise).
_grad_enabled, _inference_mode, _autocast = (
    torch.is_grad_enabled,
    torch.is_inference_mode_enabled,
    torch.is_autocast_enabled,
)


@contextmanager
def vrt_io(
    hf_model: nn.Module,
    bank: PrototypeBank | None,
    vocab_rows: int,
    *,
    capture: list[torch.Tensor] | None = None,
    suppress: Sequence[int] = (),
    fused_bytes: int | None = None,
) -> Iterator[None]:
    """Within the block, ``hf_model`` reads VRT ids from ``bank`` and emits VRT logits.

    Args:
        hf_model: the backbone's Hugging Face model (``get_input_embeddings`` / ``get_output_embeddings``).
        bank: the batch's prototypes; ``None`` (an answer format without VRTs): text only.
        vocab_rows: ``V``, the first VRT id.
        capture: if a list, the last-layer hidden states that feed the classifier are appended at every call.
        suppress: text ids whose logit is the dtype's minimum (never generated).
        fused_bytes: size limit of the fused path's table (default :data:`FUSED_TABLE_BYTES`; 0: always general).

    Example:
        >>> with vrt_io(model.backbone.hf_model, encoded.bank, model.backbone.vocab_rows):  # doctest: +SKIP
        ...     out = model.backbone.hf_model.generate(**inputs)
    """
    emb, head = hf_model.get_input_embeddings(), hf_model.get_output_embeddings()
    limit = FUSED_TABLE_BYTES if fused_bytes is None else fused_bytes
    prepared = _Prepared(emb, head, bank, vocab_rows, suppress, limit)

    def head_forward(hidden: torch.Tensor) -> torch.Tensor:
        capture.append(hidden)
        return prepared.logits(hidden)

    with (
        _forward_replaced(emb, prepared.embed),
        _forward_replaced(head, prepared.logits if capture is None else head_forward),
    ):
        yield


@contextmanager
def _forward_replaced(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """``module.forward`` is ``forward`` within the block (an instance attribute, as accelerate sets its hooks)."""
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


@dataclass(frozen=True)
class _Fused:
    """The fused path for one batch size ``n``."""

    table: torch.Tensor  # embedding rows [n (V + P), D], sample after sample (text rows, then its prototypes)
    offsets: torch.Tensor | None  # [n, 1]: first row of each sample's block; None for n = 1
    weight: torch.Tensor | None  # n = 1: classifier rows [V + P, D], text then VRT; None for n > 1
    bias: torch.Tensor | None  # n = 1: [V + P] (lm_head bias, never-generate and padding minima); else None


def _split_step(
    weight_t: torch.Tensor, text_bias: torch.Tensor | None, bank_t: torch.Tensor, vrt_bias: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoding-step classifier for ``n`` rows without a fused weight: the plain text product and the
    samples' VRT product, each written into its part of one ``[n, 1, V + P]`` logits buffer.

    ``bank_t [n, D, P]``; ``vrt_bias [n, 1, P]`` (padding at the minimum), ``None`` for a bank without padding
    (the bias is all zero then, and plain ``bmm`` gives the same values as ``baddbmm``). No ``cat`` and no
    fresh logits tensor per step: the buffer is reused while nobody else holds it (Hugging Face ``generate``
    copies a step's logits before processing them and drops its output before the next step); a caller that
    keeps a step's logits (or any view of them) makes the next step use a new buffer. The step is a closure
    over its tensors, not a class reading attributes: inside a decoding loop every lookup and call frame costs
    several times what it does alone (timed inside ``generate`` at batch 8, ``tiny_llava``: 12 µs less per step).
    """
    (n, width, cells), rows = bank_t.shape, weight_t.shape[1]
    shape, options = (n, 1, rows + cells), {"dtype": weight_t.dtype, "device": weight_t.device}
    scratch = torch.empty(n, 1, cells, **options)  # never handed out
    out = text = vrt = None
    refs = uses = address = -1
    use_count, refcount = _USE_COUNT, sys.getrefcount
    addmm, mm, bmm, baddbmm = torch.addmm, torch.mm, torch.bmm, torch.baddbmm

    def new_buffer() -> None:
        nonlocal out, text, vrt, refs, uses, address
        out = torch.empty(shape, **options)
        text, vrt = out[:, 0, :rows], out[:, :, rows:]
        # Free = the buffer's own references only: to the tensor (a caller holding the result itself) and to
        # its storage (a caller holding a view of it: here `out`, `text` and `vrt`).
        refs = refcount(out)
        if use_count is not None:
            address = out.untyped_storage()._cdata
            uses = use_count(address)

    def step(hidden: torch.Tensor) -> torch.Tensor:
        if use_count is None or refcount(out) != refs or use_count(address) != uses:
            new_buffer()  # the last step's logits are still held somewhere (or this torch cannot tell)
        # The same kernels as F.linear (addmm / mm on the folded rows) and as extend_logits (baddbmm / bmm).
        if text_bias is None:
            mm(hidden.view(n, width), weight_t, out=text)
        else:
            addmm(text_bias, hidden.view(n, width), weight_t, out=text)
        # The VRT product goes through a contiguous scratch: bmm straight into the strided part measured
        # 2 x slower than bmm + copy_ (33 vs 15 µs at batch 8, tiny_llava).
        if vrt_bias is None:
            bmm(hidden, bank_t, out=scratch)
        else:
            baddbmm(vrt_bias, hidden, bank_t, out=scratch)
        vrt.copy_(scratch)
        return out

    new_buffer()
    return step


class _Prepared:
    """Per-call tensors of the VRT input/output, built once per (batch size, grad mode) at first use."""

    def __init__(
        self,
        emb: nn.Module,
        head: nn.Module,
        bank: PrototypeBank | None,
        vocab_rows: int,
        suppress: Sequence[int],
        fused_bytes: int,
    ):
        self.text_embed, self.text_logits = emb.forward, head.forward  # the modules' own (bound) forwards
        self.emb, self.head, self.bank, self.vocab = emb, head, bank, vocab_rows
        self.width = 0 if bank is None else bank.width
        self.suppress = sorted({int(i) for i in suppress if 0 <= int(i) < vocab_rows})
        self.fused_bytes = fused_bytes
        self.plain_modules = type(emb) is nn.Embedding and emb.max_norm is None and type(head) is nn.Linear
        self._fused: dict[int, _Fused | None] = {}
        self._steps: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}
        weight = getattr(head, "weight", None)
        self.device_type = weight.device.type if isinstance(weight, torch.Tensor) else "cpu"  # autocast's key
        self._text_bias: dict[torch.dtype, torch.Tensor | None] = {}
        self._suppress_ids: dict[torch.device, torch.Tensor] = {}

    # --- fused path ---------------------------------------------------------------------------
    def fused(self, n: int) -> _Fused | None:
        """The fused path's tensors for ``n`` rows, or ``None`` where it does not apply (see the module doc).

        The classifier is fused for ``n = 1`` only: ``n`` per-sample ``[V + P, D]`` weights would be read
        at every step (8 × the classifier's memory traffic at batch 8, measured 2-4 × slower than the
        split products); the embedding reads only ``n`` rows of its table, so it is fused at any ``n``.
        """
        if n in self._fused:
            return self._fused[n]
        if not self.width or not self.plain_modules:  # no VRTs or other module types: the modules' own
            self._fused[n] = None
            return None
        weight = self.head.weight
        rows = self.vocab + self.width
        tied = self.emb.weight is weight
        if (n + (0 if tied else 1)) * rows * weight.shape[1] * weight.element_size() > self.fused_bytes:
            self._fused[n] = None
            return None
        table = self._table(self.emb.weight, n)
        if n == 1 and weight.shape[0] == self.vocab:
            head = table if tied else self._table(weight, 1)
            fused = _Fused(table[0], None, head[0], self.logit_bias(1, weight.dtype)[0, 0])
        else:
            offsets = None if n == 1 else (torch.arange(n, device=weight.device) * rows).unsqueeze(1)
            fused = _Fused(table.reshape(n * rows, -1), offsets, None, None)
        self._fused[n] = fused
        return fused

    def _table(self, weight: torch.Tensor, n: int) -> torch.Tensor:
        """``[n, V + P, D]``: the text rows, then sample ``b``'s prototypes (zero rows for padding)."""
        text = weight.detach().unsqueeze(0).expand(n, -1, -1)
        return torch.cat([text, self.bank.expand(n).bank.to(weight.dtype)], dim=1)

    def logit_bias(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """``[n, 1, V + P]``: ``lm_head`` bias (or 0), the dtype's minimum at suppressed ids and padding cells."""
        text = self.text_bias(dtype)
        if text is None:
            text = torch.zeros(self.vocab, dtype=dtype, device=self.head.weight.device)
        return torch.cat([text.expand(n, 1, self.vocab), self.bank.view(n, dtype).bias], dim=-1)

    def text_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The ``lm_head`` bias with the suppressed ids at the dtype's minimum; ``None`` if neither exists."""
        if dtype not in self._text_bias:
            bias = getattr(self.head, "bias", None)
            if bias is None and self.suppress:
                bias = torch.zeros(self.vocab, dtype=dtype, device=self.head.weight.device)
            if bias is not None:
                bias = bias.detach().to(dtype).clone()
                bias[self.suppress] = torch.finfo(dtype).min
            self._text_bias[dtype] = bias
        return self._text_bias[dtype]

    def suppress_ids(self, device: torch.device) -> torch.Tensor:
        """The never-generate ids as a tensor on ``device``, made once per call (not at every forward)."""
        if device not in self._suppress_ids:
            self._suppress_ids[device] = torch.tensor(self.suppress, device=device)
        return self._suppress_ids[device]

    # --- the two replaced forwards ---------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding of text and VRT ids ``[n, T]`` (the replaced ``forward`` of the input embedding)."""
        fused = None if torch.is_grad_enabled() or ids.dim() != 2 else self.fused(ids.shape[0])
        if fused is not None:  # torch.embedding: F.embedding's own op without its Python checks
            return torch.embedding(fused.table, ids if fused.offsets is None else ids + fused.offsets)
        if self.width == 0 or ids.dim() != 2:
            return self.text_embed(ids)
        is_vrt = ids >= self.vocab
        return embed_with_bank(self.text_embed(ids.masked_fill(is_vrt, 0)), ids, self.vocab, self.bank, is_vrt)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, T, V + P]`` logits (the replaced ``forward`` of ``lm_head``).

        A decoding step (one position) runs the classifier chosen for its key at the first such step (a
        fused product, the buffered split, or the general path); a longer teacher-forced pass keeps the
        general path, whose product has the plain classifier's shape and so its rounding, bit for bit.
        """
        shape = hidden.shape
        if len(shape) != 3 or shape[1] != 1:
            return self.general_logits(hidden)
        key = (
            shape[0],
            hidden.dtype,
            hidden.is_contiguous(),  # F.linear folds only contiguous rows into one addmm: the same kernel
            _grad_enabled(),
            _inference_mode(),  # a buffer made in inference mode stays in it
            _autocast(self.device_type),
        )
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = self.step_logits(key)
        return step(hidden)

    def step_logits(
        self, key: tuple[int, torch.dtype, bool, bool, bool, bool]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The classifier of one-position passes with ``key`` = (rows, dtype, contiguous, grad, inference mode,
        autocast): the fused product (batch 1), the buffered split (a plain ``nn.Linear``) or the general path."""
        n, dtype, contiguous, grad, _, autocast = key
        if grad or autocast or not self.width or type(self.head) is not nn.Linear:
            return self.general_logits
        weight = self.head.weight
        if (dtype, self.device_type) != (weight.dtype, weight.device.type):
            return self.general_logits
        fused = self.fused(n)
        if fused is not None and fused.weight is not None:
            return partial(F.linear, weight=fused.weight, bias=fused.bias)
        if not contiguous:
            return self.general_logits
        bank = self.bank.expand(n)
        view = bank.view(n, dtype)
        bank_t = view.bank_t
        if fused is not None and fused.table.dtype == dtype:  # the table's own prototype rows: one copy in cache
            bank_t = fused.table.view(n, -1, fused.table.shape[1])[:, self.vocab :].transpose(1, 2)
        vrt_bias = None if bool(bank.valid.all()) else view.bias
        return _split_step(weight.detach().t(), self.text_bias(dtype), bank_t, vrt_bias)

    def general_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Text logits (never-generate ids at the minimum), then ``extend_logits``'s VRT logits and ``cat``."""
        if not self.suppress:
            text = self.text_logits(hidden)
        elif type(self.head) is nn.Linear and not torch.is_grad_enabled():  # the mask folded into the bias
            text = F.linear(hidden, self.head.weight, self.text_bias(self.head.weight.dtype))
        else:
            lowest = torch.finfo(hidden.dtype).min
            text = self.text_logits(hidden).index_fill(-1, self.suppress_ids(hidden.device), lowest)
        if self.width == 0:
            return text
        return extend_logits(text, hidden, self.bank)

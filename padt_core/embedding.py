"""Dynamic embedding: visual prototypes and the per-sample prototype bank.

Prototype of cell ``j``: ``P_j = LN(e_j) + W_up W_down LN(e_j)`` where ``e_j`` is the merged visual
token. The LayerNorm starts at zero (weight and bias), so every prototype is exactly zero at the
start of training and VRT logits/embeddings start neutral. Prototypes are kept per sample in a
padded bank ``[B, P_max, D]``; the full embedding table is never concatenated with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BankView", "PrototypeBank", "PrototypeProjection", "embed_with_bank"]


def sinusoid_2d(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 2-D sin/cos embedding: half the channels encode the row, half the column (no table, no limit)."""
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=rows.device, dtype=torch.float32) / max(quarter, 1)))
    parts = []
    for coord in (rows, cols):
        angle = coord.float().unsqueeze(-1) * freqs
        parts += [angle.sin(), angle.cos()]
    out = torch.cat(parts, dim=-1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[-1]))


class PrototypeProjection(nn.Module):
    """Zero-initialised LayerNorm followed by a low-rank residual adapter (``D → rank → D``).

    Optionally a 2-D position embedding is added (``position``): ``learned`` row + column tables of
    ``max_grid`` size (a larger grid is an error naming the limit), or ``sinusoidal`` scaled by a
    learned per-channel gain; and with ``max_images``, a learned embedding of the image's place in its
    sample (image 0, 1, ...). All start at zero, so prototypes still start exactly at zero.
    """

    def __init__(
        self,
        dim: int,
        rank: int = 64,
        enabled: bool = True,
        init_std: float = 0.02,
        position: str = "none",
        max_grid: tuple[int, int] = (64, 64),
        max_images: int = 0,
    ):
        super().__init__()
        self.enabled = enabled
        self.position = position
        self.max_grid = tuple(max_grid)
        self.max_images = int(max_images)
        if self.max_images:  # which of its sample's images a cell is in (multi-image samples); starts at zero
            self.image_embed = nn.Parameter(torch.zeros(self.max_images, dim))
        if enabled:
            self.norm = nn.LayerNorm(dim, eps=1e-5)
            self.down = nn.Linear(dim, rank, bias=False)
            self.up = nn.Linear(rank, dim, bias=False)
            self.reset_parameters(init_std)
        if position == "learned":
            self.row_embed = nn.Parameter(torch.zeros(self.max_grid[0], dim))
            self.col_embed = nn.Parameter(torch.zeros(self.max_grid[1], dim))
        elif position == "sinusoidal":
            self.pos_gain = nn.Parameter(torch.zeros(dim))
        elif position != "none":
            raise ValueError(f"unknown prototype position embedding {position!r} (none, learned, sinusoidal)")

    def position_embedding(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        h, w = grid
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        if self.position == "learned":
            if h > self.max_grid[0] or w > self.max_grid[1]:
                raise ValueError(
                    f"VRT grid {h}x{w} exceeds vrt.max_grid {list(self.max_grid)} of the learned prototype "
                    "position tables; raise vrt.max_grid (retraining them) or use vrt.position: sinusoidal"
                )
            return (self.row_embed[rows] + self.col_embed[cols]).to(dtype)
        return (sinusoid_2d(rows, cols, self.pos_gain.shape[0]) * self.pos_gain).to(dtype)

    def reset_parameters(self, init_std: float = 0.02) -> None:
        if not self.enabled:
            return
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.normal_(self.up.weight, std=init_std)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None, image: int = 0) -> torch.Tensor:
        """Prototypes of raster-ordered merged tokens (``grid`` is needed for position embeddings; ``image``
        is the image's place in its sample, read with ``max_images``)."""
        if self.enabled:
            x = self.norm(tokens)
            out = x + self.up(self.down(x))
        else:
            out = tokens
        if self.position != "none":
            if grid is None:
                raise ValueError("prototype position embeddings need the VRT grid")
            out = out + self.position_embedding(grid, tokens.device, out.dtype)
        if self.max_images:
            if image >= self.max_images:
                raise ValueError(
                    f"image {image} of a sample: vrt.max_images is {self.max_images} (the learned image embeddings); "
                    "raise it (retraining them) or pass fewer images per sample"
                )
            out = out + self.image_embed[image].to(out.dtype)
        return out

    def project_all(
        self,
        tokens: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        places: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """``forward`` of every image's tokens, in order; images of one grid size (and place in their sample,
        ``places``: 0 for the first image of a sample, 1 for the second, ...) are projected together (one
        batched pass instead of a dozen small ops per image)."""
        places = [0] * len(tokens) if places is None or not self.max_images else list(places)
        groups: dict[tuple[tuple[int, int], int], list[int]] = {}
        for i, (grid, place) in enumerate(zip(grids, places)):
            groups.setdefault((tuple(grid), place), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(tokens)
        for (grid, place), members in groups.items():
            if len(members) == 1:
                out[members[0]] = self(tokens[members[0]], grid, place)
                continue
            for i, row in zip(members, self(torch.stack([tokens[i] for i in members]), grid, place).unbind(0)):
                out[i] = row
        return out


@dataclass(frozen=True)
class BankView:
    """A bank laid out for one batch size, built once and reused at every decoding step.

    ``flat [n*P, D]`` + ``offsets [n, 1]`` gather rows with one ``F.embedding``; ``bank_t [n, D, P]``
    and ``bias [n, 1, P]`` (0 for real cells, the dtype's minimum for padding) give VRT logits with
    one ``baddbmm``. Padding rows of the bank are zero, so padded logits are exactly the minimum.
    """

    flat: torch.Tensor
    offsets: torch.Tensor
    bank_t: torch.Tensor
    bias: torch.Tensor


@dataclass
class PrototypeBank:
    """Per-sample prototypes, padded: ``bank [B, P, D]`` and ``valid [B, P]`` (False = padding)."""

    bank: torch.Tensor
    valid: torch.Tensor
    _views: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_prototypes(
        cls,
        prototypes: Sequence[torch.Tensor],
        image_index: Sequence[int | Sequence[int]],
        dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> PrototypeBank:
        """Bank for a batch whose sample ``b`` uses image ``image_index[b]`` (``-1``: no image), or the images
        of a list ``image_index[b]``, whose prototypes are its row back to back (VRT ``k`` numbers the
        concatenation of their cells)."""
        rows = [_row(prototypes, i) for i in image_index]
        sizes = [0 if row is None else row.shape[0] for row in rows]
        width = max(sizes, default=0)
        if width and all(n == width for n in sizes):  # every row of one size (one image per sample, typically)
            bank = torch.stack(rows).to(device=device, dtype=dtype)
            return cls(bank, torch.ones(bank.shape[:2], dtype=torch.bool, device=device))
        bank = torch.zeros(len(image_index), width, dim, device=device, dtype=dtype)
        valid = torch.zeros(len(image_index), width, dtype=torch.bool, device=device)
        for b, (row, n) in enumerate(zip(rows, sizes)):
            if n:
                bank[b, :n] = row.to(dtype)
                valid[b, :n] = True
        return cls(bank, valid)

    @property
    def width(self) -> int:
        return self.bank.shape[1]

    def expand(self, batch_size: int) -> PrototypeBank:
        """Repeat rows for beam search / several return sequences (``batch_size`` a multiple of B)."""
        b = self.bank.shape[0]
        if batch_size == b:
            return self
        if batch_size % b:
            raise ValueError(f"cannot expand a prototype bank of {b} samples to a batch of {batch_size}")
        r = batch_size // b
        return PrototypeBank(self.bank.repeat_interleave(r, 0), self.valid.repeat_interleave(r, 0))

    def view(self, batch_size: int, dtype: torch.dtype) -> BankView:
        """The bank for ``batch_size`` rows (beams/return sequences repeat samples), cached per call site."""
        key = (batch_size, dtype)
        if key not in self._views:
            bank = self.expand(batch_size)
            data = bank.bank.to(dtype)
            n, width = data.shape[:2]
            bias = torch.zeros(n, 1, width, dtype=dtype, device=data.device)
            bias = bias.masked_fill(~bank.valid.unsqueeze(1), torch.finfo(dtype).min)
            offsets = (torch.arange(n, device=data.device) * width).unsqueeze(1)
            self._views[key] = BankView(data.reshape(n * width, -1), offsets, data.transpose(1, 2), bias)
        return self._views[key]


def _row(prototypes: Sequence[torch.Tensor], images: int | Sequence[int]) -> torch.Tensor | None:
    """A sample's bank row: its image's prototypes, its images' concatenated, or ``None`` (no image)."""
    if isinstance(images, int):
        return prototypes[images] if images >= 0 else None
    images = list(images)
    if not images:
        return None
    return prototypes[images[0]] if len(images) == 1 else torch.cat([prototypes[i] for i in images])


def embed_with_bank(
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    vocab_rows: int,
    bank: PrototypeBank,
    is_vrt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace the rows of VRT ids (``>= vocab_rows``) in ``text_embeds`` by their sample's prototypes.

    ``is_vrt`` is ``input_ids >= vocab_rows`` when the caller already has it.
    """
    if bank.width == 0:
        return text_embeds
    view = bank.view(input_ids.shape[0], text_embeds.dtype)
    cells = (input_ids - vocab_rows).clamp_(0, bank.width - 1)
    if input_ids.shape[0] > 1:
        cells += view.offsets
    is_vrt = input_ids >= vocab_rows if is_vrt is None else is_vrt
    # No `any()` shortcut: it would cost a host sync per decoding step on GPU.
    return torch.where(is_vrt.unsqueeze(-1), F.embedding(cells, view.flat), text_embeds)

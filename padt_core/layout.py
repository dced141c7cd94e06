"""Decoder layouts: every ordering and position convention of per-patch tensors, in one module.

padt keeps one convention everywhere: **raster order** (row-major) over the VRT grid and over the
fine grid, as ``VisualFeatures`` delivers them. Positions are ``(row, col)`` in *fine-patch units*
(14 px for Qwen2.5-VL) so that the rotary tables of a vision tower can be reused::

    VRT grid 2x3 (s = 2)          fine grid 4x6                 mask canvas (4x4 sub-cells per fine patch)
    +----+----+----+              +--+--+--+--+--+--+           fine patch i lands at rows 4*(i // fw) ..,
    | 0  | 1  | 2  |   cell k     | 0| 1| 2| 3| 4| 5|           cols 4*(i % fw) ..; VRT cell k covers
    +----+----+----+   covers     +--+--+--+--+--+--+           fine patches (2r..2r+1, 2c..2c+1)
    | 3  | 4  | 5  |   fine       | 6| 7| 8| 9|10|11|
    +----+----+----+   patches    ...
    cell k = (k // w, k % w), position (row*s, col*s) = its top-left fine patch

Released PaDT checkpoints were trained with a different, partly window-ordered arrangement
(reference §4.3). Loading them needs a ``reference`` layout that reproduces it; it will be one more
``Layout`` subclass here (fine rows in window order via ``fine_order``, their true rotary positions,
low-res positions and cell repetition by sequence index, mask blocks placed by sequence index), and no
other module needs to change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

__all__ = ["LAYOUTS", "Layout", "RasterLayout", "get_layout", "vrt_cell_rc"]


def vrt_cell_rc(cells: torch.Tensor, grid_cols: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of VRT cell ids. VRT ids are raster over the VRT grid in every layout (reference
    §2.3): layouts only differ in how the decoder's memory rows are ordered."""
    cells = cells.long()
    return cells // grid_cols, cells % grid_cols


class Layout(ABC):
    """Where each per-patch row sits in the image, and how per-patch outputs are placed back."""

    name: ClassVar[str]

    @abstractmethod
    def cell_positions(self, grid: tuple[int, int], factor: int, device: torch.device | None = None) -> torch.Tensor:
        """``[h*w, 2]`` (row, col) in fine-patch units of each VRT-grid memory row (its top-left fine patch)."""

    @abstractmethod
    def fine_order(self, fine_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """``[fh*fw]`` long: which row of ``VisualFeatures.fine`` (raster) becomes each fine memory row."""

    @abstractmethod
    def fine_positions(self, fine_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """``[fh*fw, 2]`` (row, col) of each fine memory row."""

    @abstractmethod
    def fine_to_cell(
        self, grid: tuple[int, int], fine_grid: tuple[int, int], device: torch.device | None = None
    ) -> torch.Tensor:
        """``[fh*fw]`` long: the VRT-grid row whose cell contains each fine row."""

    @abstractmethod
    def place_patches(self, values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """Place per-patch blocks on a per-object canvas.

        Args:
            values: ``[n, N, sh, sw]``: an ``sh x sw`` block of values for each of the ``N`` memory rows
                of each object (rows beyond an object's own grid are padding and ignored).
            grids: ``[n, 2]`` long, ``(rows, cols)`` of each object's patch grid.

        Returns:
            ``[n, sh*H, sw*W]`` with ``(H, W)`` the largest grid; zero outside each object's own
            ``sh*rows x sw*cols`` region (which always starts at the top-left corner).
        """

    @abstractmethod
    def cell_centres(self, grids: torch.Tensor, num_rows: int) -> torch.Tensor:
        """``[n, num_rows, 2]``: (x, y) centre of each memory row's patch, normalised to [0, 1] by the image size."""


class RasterLayout(Layout):
    """Row-major order over both grids; the convention of padt's backbones and of new training."""

    name = "raster"

    def cell_positions(self, grid: tuple[int, int], factor: int, device: torch.device | None = None) -> torch.Tensor:
        return _raster_positions(*grid, device) * factor

    def fine_order(self, fine_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        return torch.arange(fine_grid[0] * fine_grid[1], device=device)

    def fine_positions(self, fine_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        return _raster_positions(*fine_grid, device)

    def fine_to_cell(
        self, grid: tuple[int, int], fine_grid: tuple[int, int], device: torch.device | None = None
    ) -> torch.Tensor:
        (h, w), (fh, fw) = grid, fine_grid
        if fh % h or fw % w or fh // h != fw // w:
            raise ValueError(f"fine grid {fh}x{fw} is not an integer, isotropic refinement of grid {h}x{w}")
        s = fh // h
        pos = _raster_positions(fh, fw, device)
        return (pos[:, 0] // s) * w + pos[:, 1] // s

    def place_patches(self, values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        n, num_rows, sh, sw = values.shape
        if n == 0:
            return values.new_zeros(0, 0, 0)
        rows, cols = grids[:, 0], grids[:, 1]
        height, width = int(rows.max()) * sh, int(cols.max()) * sw
        ys = torch.arange(height, device=values.device)
        xs = torch.arange(width, device=values.device)
        pr, pc = (ys // sh)[None, :, None], (xs // sw)[None, None, :]  # patch row/col of each canvas pixel
        inside = (pr < rows[:, None, None]) & (pc < cols[:, None, None])  # [n, H, W]
        patch = (pr * cols[:, None, None] + pc).clamp(max=num_rows - 1)
        sub = ((ys % sh)[:, None] * sw + (xs % sw)[None, :])[None]  # sub-cell inside the patch block
        flat = values.reshape(n, num_rows * sh * sw)
        out = flat.gather(1, (patch * (sh * sw) + sub).reshape(n, -1)).view(n, height, width)
        return out * inside.to(out.dtype)

    def cell_centres(self, grids: torch.Tensor, num_rows: int) -> torch.Tensor:
        idx = torch.arange(num_rows, device=grids.device)[None, :]
        rows, cols = grids[:, :1], grids[:, 1:]
        x = (idx % cols + 0.5) / cols
        y = (idx // cols + 0.5) / rows
        return torch.stack([x, y], dim=-1).float()


def _raster_positions(h: int, w: int, device: torch.device | None) -> torch.Tensor:
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([rows, cols], dim=-1)


LAYOUTS: dict[str, type[Layout]] = {"raster": RasterLayout}  # layout name (recipe `decoder.layout`) -> class


def get_layout(name: str | Layout) -> Layout:
    """The layout named in a recipe's ``decoder.layout``."""
    if isinstance(name, Layout):
        return name
    if name == "reference":
        raise NotImplementedError(
            "decoder.layout 'reference' (the window-ordered arrangement of released PaDT checkpoints, "
            "reference §4.3) is not implemented yet; use layout: raster"
        )
    try:
        return LAYOUTS[name]()
    except KeyError:
        raise ValueError(f"unknown decoder layout {name!r}; known: {', '.join(sorted(LAYOUTS))}") from None

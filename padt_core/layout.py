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
(reference §4.2-4.3); ``ReferenceLayout`` (``layout: reference``) reproduces it bit for bit. Its fine
memory rows follow Qwen2.5-VL's vision-tower order: merged cells in *window order* (4x4-cell windows
visited row-major, cells row-major inside a window), each cell's 2x2 fine patches consecutive::

    merged grid 2x6, windows of 4 cells        fine memory row i (sequence index)
    +--+--+--+--+--+--+                         i = 4*j + s: sub-patch s (TL, TR, BL, BR) of the
    | 0| 1| 2| 3| 4| 5|   window order:         j-th cell in window order
    +--+--+--+--+--+--+   0 1 2 3 6 7 8 9 4 5 10 11
    | 6| 7| 8| 9|10|11|                         rows 4..7 = cell 1 = patches (0..1, 2..3)
    +--+--+--+--+--+--+

and every quirk of the reference decoder is kept: fine rows carry their true rotary positions, the
low-res rows are the prototypes in raster order but get the position of the j-th *window-ordered*
cell, fine row i adds low-res row ``i // 4`` (by sequence index), and the mask block of fine row i is
drawn at fine cell ``(i // W, i % W)``. Only the positions of fine rows are spatially right; new
training should use ``raster``. ``docs/layouts.md`` says when to use which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

__all__ = ["LAYOUTS", "Layout", "RasterLayout", "ReferenceLayout", "get_layout", "vrt_cell_rc", "window_order"]


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
        return _place_by_index(values, grids)

    def cell_centres(self, grids: torch.Tensor, num_rows: int) -> torch.Tensor:
        idx = torch.arange(num_rows, device=grids.device)[None, :]
        rows, cols = grids[:, :1], grids[:, 1:]
        x = (idx % cols + 0.5) / cols
        y = (idx // cols + 0.5) / rows
        return torch.stack([x, y], dim=-1).float()


def _place_by_index(values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """Memory row ``i`` of an object with grid ``(rows, cols)`` drawn at cell ``(i // cols, i % cols)``."""
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


def _raster_positions(h: int, w: int, device: torch.device | None) -> torch.Tensor:
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([rows, cols], dim=-1)


def window_order(grid: tuple[int, int], window: int = 4, device: torch.device | None = None) -> torch.Tensor:
    """``[h*w]`` long: raster ids of the cells of a ``grid`` in *window order*.

    Windows of ``window x window`` cells tile the grid (the last row/column of windows may be
    narrower); windows are visited row-major and cells row-major inside each window. This is the
    order Qwen2.5-VL's vision tower keeps its rows in (``window_size 112 px / (14 px * merge 2) = 4``
    cells, reference §4.2); ``window_order((2, 6))`` is ``[0, 1, 2, 3, 6, 7, 8, 9, 4, 5, 10, 11]``.
    """
    h, w = grid
    if window < 1:
        raise ValueError(f"window must be >= 1 cell, got {window}")
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    windows_per_row = -(-w // window)
    # Sort key: (window row, window col, row inside the window, col inside the window).
    win = (rows // window) * windows_per_row + cols // window
    inside = (rows % window) * window + cols % window
    return torch.argsort(win * window * window + inside, stable=True)


class ReferenceLayout(Layout):
    """The released checkpoints' arrangement (reference §4.3), reproduced exactly; see the module docstring.

    Args:
        merge: fine patches per cell side (Qwen2.5-VL ``spatial_merge_size``, 2).
        window: cells per window side (Qwen2.5-VL ``window_size / patch_size / merge`` = 112 / 14 / 2 = 4).
    """

    name = "reference"

    def __init__(self, merge: int = 2, window: int = 4) -> None:
        self.merge, self.window = merge, window

    def _cell_grid(self, fine_grid: tuple[int, int]) -> tuple[int, int]:
        fh, fw = fine_grid
        if fh % self.merge or fw % self.merge:
            raise ValueError(
                f"layout 'reference' needs a fine grid divisible by the merge factor {self.merge}, got {fh}x{fw}"
            )
        return fh // self.merge, fw // self.merge

    def cell_positions(self, grid: tuple[int, int], factor: int, device: torch.device | None = None) -> torch.Tensor:
        # Low-res row j is raster cell j (a prototype) but takes the rotary position of sub-patch 0 of
        # the j-th cell in window order (the reference slices the window-ordered table every 4 rows).
        if factor != self.merge:
            raise ValueError(f"layout 'reference' was built for merge factor {self.merge}, the features have {factor}")
        return _raster_positions(*grid, device)[window_order(grid, self.window, device)] * factor

    def fine_order(self, fine_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        # Sequence index i = unit * j + s: sub-patch s (row-major inside the cell) of window-ordered cell j.
        h, w = self._cell_grid(fine_grid)
        m = self.merge
        cells = _raster_positions(h, w, device)[window_order((h, w), self.window, device)]  # [h*w, 2]
        sub = _raster_positions(m, m, device)  # [m*m, 2]
        fine_rc = cells[:, None, :] * m + sub[None, :, :]  # [h*w, m*m, 2]
        return (fine_rc[..., 0] * fine_grid[1] + fine_rc[..., 1]).flatten()

    def fine_positions(self, fine_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        # Fine states and the vision rotary table were permuted alike: each row keeps its true position.
        return _raster_positions(*fine_grid, device)[self.fine_order(fine_grid, device)]

    def fine_to_cell(
        self, grid: tuple[int, int], fine_grid: tuple[int, int], device: torch.device | None = None
    ) -> torch.Tensor:
        # Repeat-and-add by sequence index: fine row i gets low-res row i // (m*m), whatever cell holds it.
        if self._cell_grid(fine_grid) != tuple(grid):
            raise ValueError(f"fine grid {fine_grid[0]}x{fine_grid[1]} is not grid {grid[0]}x{grid[1]} x {self.merge}")
        unit = self.merge * self.merge
        return torch.arange(fine_grid[0] * fine_grid[1], device=device) // unit

    def place_patches(self, values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        # Row i is drawn at fine cell (i // W, i % W): what raster placement does with sequence indices.
        return _place_by_index(values, grids)

    def cell_centres(self, grids: torch.Tensor, num_rows: int) -> torch.Tensor:
        # True centre of each fine memory row (grids are fine grids here, as memory rows are fine rows).
        out = torch.zeros(grids.shape[0], num_rows, 2, device=grids.device)
        for grid in {tuple(g) for g in grids.tolist()}:
            fh, fw = grid
            pos = self.fine_positions((fh, fw), grids.device)[:num_rows].float()
            centre = torch.stack([(pos[:, 1] + 0.5) / fw, (pos[:, 0] + 0.5) / fh], dim=-1)
            rows = (grids == torch.tensor(grid, device=grids.device)).all(-1)
            out[rows, : centre.shape[0]] = centre
        return out


LAYOUTS: dict[str, type[Layout]] = {  # layout name (recipe `decoder.layout`) -> class
    "raster": RasterLayout,
    "reference": ReferenceLayout,
}


def get_layout(name: str | Layout) -> Layout:
    """The layout named in a recipe's ``decoder.layout``."""
    if isinstance(name, Layout):
        return name
    try:
        return LAYOUTS[name]()
    except KeyError:
        raise ValueError(f"unknown decoder layout {name!r}; known: {', '.join(sorted(LAYOUTS))}") from None

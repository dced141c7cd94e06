"""What a backbone hands to the rest of padt for one image: ``VisualFeatures``, always in raster order.

Raster order (row-major over the grid) is the one ordering convention of padt. Backbones whose
vision tower works in another order un-permute inside the plugin; layouts that must reproduce a
different order (released checkpoints) are handled by the decoder's layout module, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["VisualFeatures"]


@dataclass
class VisualFeatures:
    """Features of one image.

    Attributes:
        tokens: ``[h*w, D_llm]`` merged tokens (what the LLM sees at image positions and what VRT
            prototypes are made from), raster order over the VRT grid.
        grid: ``(h, w)`` of the VRT grid; VRT ``k`` is cell ``(k // w, k % w)``.
        cell_size: pixels per VRT cell side in the resized image (28 for Qwen2.5-VL).
        image_size: ``(height, width)`` in pixels of the resized image the model saw.
        fine: optional ``[h*s * w*s, D_vis]`` finer features (pre-merger), raster order over ``fine_grid``.
        fine_grid: ``(h*s, w*s)`` when ``fine`` is given.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    cell_size: int
    image_size: tuple[int, int]
    fine: torch.Tensor | None = None
    fine_grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        h, w = self.grid
        if self.tokens.shape[0] != h * w:
            raise ValueError(f"VisualFeatures.tokens has {self.tokens.shape[0]} rows, grid {h}x{w} needs {h * w}")
        if self.fine is not None:
            if self.fine_grid is None:
                raise ValueError("VisualFeatures.fine given without fine_grid")
            fh, fw = self.fine_grid
            if self.fine.shape[0] != fh * fw or fh % h or fw % w:
                raise ValueError(
                    f"VisualFeatures.fine has {self.fine.shape[0]} rows for fine_grid {fh}x{fw} "
                    f"(must be a multiple of grid {h}x{w})"
                )

    @property
    def num_cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def fine_factor(self) -> int:
        """Fine cells per VRT cell side (the merge factor, 2 for Qwen2.5-VL)."""
        if self.fine_grid is None:
            return 1
        return self.fine_grid[0] // self.grid[0]

    def to(self, *args, **kwargs) -> VisualFeatures:
        return VisualFeatures(
            tokens=self.tokens.to(*args, **kwargs),
            grid=self.grid,
            cell_size=self.cell_size,
            image_size=self.image_size,
            fine=None if self.fine is None else self.fine.to(*args, **kwargs),
            fine_grid=self.fine_grid,
        )

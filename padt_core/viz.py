"""Pictures of predictions: boxes, labels, scores, translucent masks and the emitted VRT cells."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_prediction", "gallery"]


def _colour(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.61803) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_prediction(
    image: Image.Image, prediction, grid: tuple[int, int] | None = None, mask_alpha: float = 0.45
) -> Image.Image:
    """The image with every object's mask (translucent), VRT cells (outlined), box, label and score.

    ``grid`` is the ``(h, w)`` VRT grid of the image as the model saw it; cells are drawn in the
    original image's coordinates (the processor resizes the whole image onto the grid).
    """
    canvas = image.convert("RGB").copy()
    width, height = canvas.size
    pixels = np.asarray(canvas).astype(np.float32)
    for i, obj in enumerate(prediction.objects):
        if obj.mask is not None and obj.mask.shape == (height, width):
            colour = np.array(_colour(i), dtype=np.float32)
            pixels[obj.mask] = (1 - mask_alpha) * pixels[obj.mask] + mask_alpha * colour
    canvas = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i, obj in enumerate(prediction.objects):
        colour = _colour(i)
        if grid is not None:
            gh, gw = grid
            cw, ch = width / gw, height / gh
            for k in obj.vrt:
                r, c = divmod(int(k), gw)
                draw.rectangle([c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1], outline=colour, width=1)
        if obj.box is not None:
            x1, y1, x2, y2 = obj.box
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
            text = obj.label or "object"
            if obj.score is not None:
                text = f"{text} {obj.score:.2f}"
            tx, ty = x1 + 2, max(0, y1 - 11)
            box = draw.textbbox((tx, ty), text)
            draw.rectangle(box, fill=(0, 0, 0))
            draw.text((tx, ty), text, fill=colour)
    return canvas


def gallery(
    tiles: Sequence[Image.Image], columns: int = 4, tile: int = 224, captions: Sequence[str] = ()
) -> Image.Image:
    """Tiles resized to ``tile`` px (longer side) in a grid, each with an optional caption below."""
    rows = (len(tiles) + columns - 1) // columns
    caption_h = 14 if captions else 0
    out = Image.new("RGB", (columns * tile, max(1, rows) * (tile + caption_h)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, im in enumerate(tiles):
        scale = tile / max(im.size)
        small = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
        x, y = (i % columns) * tile, (i // columns) * (tile + caption_h)
        out.paste(small, (x, y))
        if i < len(captions):
            draw.text((x + 2, y + tile + 1), captions[i][: tile // 6], fill=(0, 0, 0))
    return out

"""Pictures of predictions: boxes, labels, scores, translucent masks, the emitted VRT cells, and every
other head output (a head's ``draw`` hook, else a marker for points and a text label for the rest)."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DrawContext", "draw_prediction", "gallery"]

_DRAWN_BY_VIZ = ("box", "score", "mask")  # the familiar outputs, drawn here whatever head made them


def _colour(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.61803) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class DrawContext:
    """What a head's ``draw(key, value, ctx)`` hook draws with, for one object.

    Attributes:
        draw: a ``PIL.ImageDraw.Draw`` on the picture (original-image pixel coordinates).
        colour: ``(r, g, b)`` of the object (its box, cells and mask share it).
        size: ``(width, height)`` of the picture.
        obj: the ``PredictedObject`` being drawn (``obj.box``, ``obj.outputs``, ...).
    """

    draw: ImageDraw.ImageDraw
    colour: tuple[int, int, int]
    size: tuple[int, int]
    obj: Any

    def marker(self, x: float, y: float, text: str | None = None, radius: float = 5) -> None:
        """A ring with a cross at ``(x, y)``, and ``text`` beside it."""
        d, r = self.draw, radius
        d.ellipse([x - r, y - r, x + r, y + r], outline=self.colour, width=2)
        d.line([x - r, y, x + r, y], fill=self.colour, width=1)
        d.line([x, y - r, x, y + r], fill=self.colour, width=1)
        if text:
            self.label(x + r + 2, y - 6, text)

    def label(self, x: float, y: float, text: str) -> None:
        """``text`` on a black patch with its top-left corner at ``(x, y)``."""
        box = self.draw.textbbox((x, y), text)
        self.draw.rectangle(box, fill=(0, 0, 0))
        self.draw.text((x, y), text, fill=self.colour)


def draw_prediction(
    image: Image.Image,
    prediction,
    grid: tuple[int, int] | None = None,
    mask_alpha: float = 0.45,
    heads: Iterable[Any] = (),
) -> Image.Image:
    """The image with every object's mask (translucent), VRT cells (outlined), box, label, score and
    every other output of ``prediction``'s objects.

    Args:
        image: the original image.
        prediction: a ``Prediction`` (``PaDTModel.predict``).
        grid: the ``(h, w)`` VRT grid of the image as the model saw it; cells are drawn in the original
            image's coordinates (the processor resizes the whole image onto the grid).
        mask_alpha: opacity of the masks.
        heads: the decoder's heads (``model.decoder.heads.values()``): an output key goes to the
            ``draw`` hook of the head that declares it in ``output_keys``; keys no hook draws get a
            marker (a point ``[x, y]`` or a list of points) or a ``key: value`` label.

    Example:
        >>> draw_prediction(image, model.predict(image, "Find the red star.")[0], heads=model.decoder.heads.values())
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
    drawers = {key: head for head in heads for key in getattr(head, "output_keys", ())}
    for i, obj in enumerate(prediction.objects):
        ctx = DrawContext(draw=draw, colour=_colour(i), size=(width, height), obj=obj)
        if grid is not None:
            gh, gw = grid
            cw, ch = width / gw, height / gh
            for k in obj.vrt:
                r, c = divmod(int(k), gw)
                draw.rectangle([c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1], outline=ctx.colour, width=1)
        if obj.box is not None:
            x1, y1, x2, y2 = obj.box
            draw.rectangle([x1, y1, x2, y2], outline=ctx.colour, width=2)
            text = obj.label or "object"
            if obj.score is not None:
                text = f"{text} {obj.score:.2f}"
            ctx.label(x1 + 2, max(0, y1 - 11), text)
        _draw_other_outputs(obj, ctx, drawers)
    return canvas


def _draw_other_outputs(obj: Any, ctx: DrawContext, drawers: dict[str, Any]) -> None:
    """Every output but box/score/mask: the declaring head's hook, else a marker or a text label."""
    lines = 0  # text labels stack inside the box's top-left corner (the image's without a box)
    x, y = (obj.box[0] + 2, obj.box[1] + 3) if obj.box is not None else (2.0, 2.0)
    for key, value in obj.outputs.items():
        if key in _DRAWN_BY_VIZ or value is None:
            continue
        head = drawers.get(key)
        if head is not None and head.draw(key, value, ctx):
            continue
        points = _points(value)
        if points is not None:
            for j, (px, py) in enumerate(points):
                ctx.marker(px, py, key if j == 0 else None)
            continue
        ctx.label(x, y + 11 * lines, f"{key}: {_short(value)}")
        lines += 1


def _points(value: Any) -> list[tuple[float, float]] | None:
    """``[(x, y), ...]`` when ``value`` is a point ``[x, y]`` or a list of ``[x, y(, extra)]`` points."""
    try:
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape == (2,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or not np.isfinite(arr[:, :2]).all():
        return None
    return [(float(px), float(py)) for px, py in arr[:, :2]]


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, np.ndarray):
        return f"array{tuple(value.shape)}"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

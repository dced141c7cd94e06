"""Pictures of predictions: boxes, labels, scores, translucent masks, the emitted VRT cells, the prompt,
and every other head output (a head's ``draw`` hook, else a marker for points and a text label for the rest).

Text and line widths grow with the picture (:func:`drawing_scale`: 1 up to 512 px on the longer side,
3.1 at 1600 px), so labels stay readable on large images. Object colours are the tab10 palette (blue
first: pure red hides on red shapes), then golden-ratio hues.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["DrawContext", "draw_prediction", "drawing_scale", "gallery"]

_DRAWN_BY_VIZ = ("box", "score", "mask")  # the familiar outputs, drawn here whatever head made them
_BASE_SIDE = 512  # pictures up to this many pixels (longer side) are drawn at scale 1
_FONT_SIZE = 10  # PIL's default font size, at scale 1
# matplotlib's tab10: distinct, readable on photos; blue first
_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def _colour(i: int) -> tuple[int, int, int]:
    if i < len(_PALETTE):
        return _PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((0.1 + i * 0.61803) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def drawing_scale(size: tuple[int, int]) -> float:
    """How much larger than at 512 px text and lines are drawn on a ``(width, height)`` picture (at least 1)."""
    return max(1.0, max(size) / _BASE_SIDE)


def _font(scale: float) -> Any:
    return ImageFont.load_default(size=round(_FONT_SIZE * scale))


@dataclass
class DrawContext:
    """What a head's ``draw(key, value, ctx)`` hook draws with, for one object.

    Attributes:
        draw: a ``PIL.ImageDraw.Draw`` on the picture (original-image pixel coordinates).
        colour: ``(r, g, b)`` of the object (its box, cells and mask share it).
        size: ``(width, height)`` of the picture.
        obj: the ``PredictedObject`` being drawn (``obj.box``, ``obj.outputs``, ...).
        scale: :func:`drawing_scale` of the picture: multiply line widths and marker sizes by it.
    """

    draw: ImageDraw.ImageDraw
    colour: tuple[int, int, int]
    size: tuple[int, int]
    obj: Any
    scale: float = 1.0

    def width(self, pixels: float) -> int:
        """A line width of ``pixels`` at scale 1, scaled to the picture."""
        return max(1, round(pixels * self.scale))

    def marker(self, x: float, y: float, text: str | None = None, radius: float = 5) -> None:
        """A ring with a cross at ``(x, y)`` (``radius`` at scale 1), and ``text`` beside it."""
        d, r = self.draw, radius * self.scale
        d.ellipse([x - r, y - r, x + r, y + r], outline=self.colour, width=self.width(2))
        d.line([x - r, y, x + r, y], fill=self.colour, width=self.width(1))
        d.line([x, y - r, x, y + r], fill=self.colour, width=self.width(1))
        if text:
            self.label(x + r + 2 * self.scale, y - 6 * self.scale, text)

    def label(self, x: float, y: float, text: str) -> None:
        """``text`` on a patch of the object's colour with its top-left corner at ``(x, y)``."""
        font = _font(self.scale)
        left, top, right, bottom = self.draw.textbbox((x, y), text, font=font)
        pad = self.scale
        self.draw.rectangle([left - pad, top - pad, right + pad, bottom + pad], fill=self.colour)
        r, g, b = self.colour
        ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)  # readable on the patch
        self.draw.text((x, y), text, fill=ink, font=font)

    @property
    def line_height(self) -> float:
        """Height of one text line at the picture's scale."""
        return 11 * self.scale


def draw_prediction(
    image: Image.Image,
    prediction,
    grid: tuple[int, int] | None = None,
    mask_alpha: float = 0.45,
    heads: Iterable[Any] = (),
    prompt: str | None = None,
) -> Image.Image:
    """The image with every object's mask (translucent), VRT cells (outlined), box, label, score and
    every other output of ``prediction``'s objects, and the prompt along the top edge.

    Args:
        image: the original image.
        prediction: a ``Prediction`` (``PaDTModel.predict``).
        grid: the ``(h, w)`` VRT grid of the image as the model saw it; cells are drawn in the original
            image's coordinates (the processor resizes the whole image onto the grid).
        mask_alpha: opacity of the masks.
        heads: the decoder's heads (``model.decoder.heads.values()``): an output key goes to the
            ``draw`` hook of the head that declares it in ``output_keys``; keys no hook draws get a
            marker (a point ``[x, y]`` or a list of points) or a ``key: value`` label.
        prompt: the question the prediction answers, written on a dark band at the top (at most two
            lines; longer prompts end in "...").

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
    scale = drawing_scale((width, height))
    if prompt:
        _prompt_band(pixels, prompt, scale)
    canvas = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    if prompt:
        _prompt_text(draw, prompt, width, scale)
    drawers = {key: head for head in heads for key in getattr(head, "output_keys", ())}
    for i, obj in enumerate(prediction.objects):
        ctx = DrawContext(draw=draw, colour=_colour(i), size=(width, height), obj=obj, scale=scale)
        if grid is not None:
            gh, gw = grid
            cw, ch = width / gw, height / gh
            for k in obj.vrt:
                r, c = divmod(int(k), gw)
                box = [c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1]
                draw.rectangle(box, outline=ctx.colour, width=ctx.width(1))
        if obj.box is not None:
            x1, y1, x2, y2 = obj.box
            draw.rectangle([x1, y1, x2, y2], outline=ctx.colour, width=ctx.width(2))
            text = obj.label or "object"
            if obj.score is not None:
                text = f"{text} {obj.score:.2f}"
            ctx.label(x1 + 2 * scale, max(0, y1 - ctx.line_height), text)
        _draw_other_outputs(obj, ctx, drawers)
    return canvas


def _prompt_lines(draw: ImageDraw.ImageDraw, prompt: str, width: int, scale: float) -> list[str]:
    """``prompt`` wrapped to the picture's width in at most two lines (the second cut with "...")."""
    font, room = _font(scale), width - 4 * scale
    lines: list[str] = []
    words = prompt.split()
    while words and len(lines) < 2:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= room:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] = lines[-1].rstrip(".") + "..."
    return lines


def _prompt_band(pixels: np.ndarray, prompt: str, scale: float) -> None:
    """Darken the top of the picture where the prompt goes (in place, before the text is drawn)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows = len(_prompt_lines(probe, prompt, pixels.shape[1], scale))
    band = min(pixels.shape[0], round((rows * 12 + 4) * scale))
    pixels[:band] *= 0.35


def _prompt_text(draw: ImageDraw.ImageDraw, prompt: str, width: int, scale: float) -> None:
    for row, line in enumerate(_prompt_lines(draw, prompt, width, scale)):
        draw.text((2 * scale, (2 + 12 * row) * scale), line, fill=(255, 255, 255), font=_font(scale))


def _draw_other_outputs(obj: Any, ctx: DrawContext, drawers: dict[str, Any]) -> None:
    """Every output but box/score/mask: the declaring head's hook, else a marker or a text label."""
    lines = 0  # text labels stack inside the box's top-left corner (the image's without a box)
    pad = 2 * ctx.scale
    x, y = (obj.box[0] + pad, obj.box[1] + 1.5 * pad) if obj.box is not None else (pad, pad)
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
        ctx.label(x, y + ctx.line_height * lines, f"{key}: {_short(value)}")
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

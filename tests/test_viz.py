"""Drawings of predictions: familiar outputs, head draw hooks, and the default marker/label for other keys."""

from __future__ import annotations

import numpy as np
from PIL import Image

from padt_core.model import PredictedObject, Prediction
from padt_core.viz import DrawContext, draw_prediction


def _blank(width: int = 80, height: int = 60) -> Image.Image:
    return Image.new("RGB", (width, height), (0, 0, 0))


def _lit(picture: Image.Image, x0: int, y0: int, x1: int, y1: int) -> int:
    """Pixels that are not black in the window ``[x0, x1) x [y0, y1)``."""
    return int((np.asarray(picture)[y0:y1, x0:x1].sum(-1) > 0).sum())


def test_a_point_output_without_a_hook_gets_a_marker():
    obj = PredictedObject("star", [], outputs={"centroid": [60.0, 40.0]})
    picture = draw_prediction(_blank(), Prediction(text="", objects=[obj]))
    assert _lit(picture, 54, 34, 67, 47) > 10  # a ring and a cross at (60, 40)
    assert _lit(picture, 0, 0, 40, 30) == 0  # nothing elsewhere (no box, no cells)


def test_a_non_point_output_gets_a_text_label_inside_the_box():
    obj = PredictedObject("star", [], box=[10.0, 20.0, 70.0, 55.0], outputs={"depth": 3.25})
    plain = draw_prediction(_blank(), Prediction(text="", objects=[PredictedObject("star", [], box=obj.box)]))
    labelled = draw_prediction(_blank(), Prediction(text="", objects=[obj]))
    assert _lit(labelled, 12, 23, 68, 34) > _lit(plain, 12, 23, 68, 34)  # "depth: 3.25" under the top edge


class _Head:
    """A stand-in for a decoder head with a draw hook (only what viz reads)."""

    output_keys = ("centroid",)

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def draw(self, key: str, value: object, ctx: DrawContext) -> bool:
        self.calls.append((key, value))
        ctx.draw.rectangle([0, 0, 4, 4], fill=ctx.colour)
        return True


def test_the_declaring_heads_hook_draws_its_key():
    head = _Head()
    obj = PredictedObject("star", [], outputs={"centroid": [60.0, 40.0]})
    picture = draw_prediction(_blank(), Prediction(text="", objects=[obj]), heads=[head])
    assert head.calls == [("centroid", [60.0, 40.0])]
    assert _lit(picture, 0, 0, 5, 5) == 25 and _lit(picture, 54, 34, 67, 47) == 0  # the hook's, not the default


def test_text_and_lines_grow_with_the_picture():
    """On a 1600-px picture the label and the box outline are ~3x what they are at 512 px and below."""

    def drawn(width: int, height: int) -> tuple[int, int]:
        obj = PredictedObject("star", [], box=[width * 0.25, height * 0.5, width * 0.75, height * 0.9], score=0.5)
        picture = np.asarray(draw_prediction(_blank(width, height), Prediction(text="", objects=[obj])))
        lit = picture.sum(-1) > 0
        label_rows = int(lit[: int(height * 0.5) - 1].any(1).sum())  # the label's patch sits above the box
        x = int(width * 0.25)
        return label_rows, int(lit[int(height * 0.7), x - 8 : x + 8].sum())  # the box's left edge

    (label_small, line_small), (label_large, line_large) = drawn(400, 300), drawn(1600, 1200)
    assert label_large >= 2.5 * label_small > 0
    assert line_large >= 2.5 * line_small > 0


def test_the_first_colour_is_not_red_and_colours_differ():
    from padt_core.viz import _colour

    r, g, b = _colour(0)
    assert not (r > 200 and g < 60 and b < 60)
    assert len({_colour(i) for i in range(20)}) == 20


def test_the_prompt_is_written_along_the_top():
    image = Image.new("RGB", (200, 120), (255, 255, 255))
    empty = Prediction(text="", objects=[])
    plain = np.asarray(draw_prediction(image, empty))
    with_prompt = np.asarray(draw_prediction(image, empty, prompt="Find the red star."))
    assert (plain == 255).all()
    top, rest = with_prompt[:14], with_prompt[20:]
    assert top.mean() < 150  # a dark band with white text
    assert (top > 200).all(-1).sum() > 20  # the white letters
    assert (rest == 255).all()

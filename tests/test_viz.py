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

"""Answer formats: how a completion writes the objects of an answer, and how they are read back.

A sample's answer is a template whose objects are placeholders ``<|Obj_k|>`` (``data/sample.py``).
An answer-format plugin (hook ``padt_answer_formats``, recipe section ``answer_format``) decides

* how the collator turns that template into the completion it trains on (:meth:`AnswerFormat.render`),
* how a generated completion is read back into objects with label and box (:meth:`AnswerFormat.parse`),
* whether the VRT machinery is used at all (:attr:`AnswerFormat.uses_vrt`).

``uses_vrt = True`` (the built-in ``vrt`` format, PaDT itself) hands objects to the core's VRT path:
the collator writes VRT ids for the placeholders, the loss is the robust VRT CE plus the decoder
heads' losses, the codec parses VRT runs and the decoder turns them into boxes, scores and masks.
``uses_vrt = False`` formats write objects as plain text: the model has no prototype bank and no
decoder, trains with next-token CE on :meth:`render`'s text, and :meth:`parse` alone produces boxes.

Boxes in a completion are pixels of the *resized* image the processor hands the model (as
Qwen2.5-VL's own grounding does); :class:`ImageGeometry` carries both sizes so a format can map them
to pixels of the original image. Guide for writing a format: ``docs/answer-formats.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .plugins import PluginConfig, get_plugin

if TYPE_CHECKING:
    from .data.sample import Sample
    from .recipe import Recipe

__all__ = ["AnswerFormat", "AnswerObject", "ImageGeometry", "ParsedAnswer", "build_answer_format"]


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes of one image, each ``(height, width)`` in pixels.

    ``original``: the image handed to the processor (ground truth and predictions live here).
    ``resized``: the image the model sees after the processor's resize (VRT grid × cell size).
    """

    original: tuple[int, int]
    resized: tuple[int, int]

    def to_resized(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A normalised xyxy box in (unrounded) pixels of the resized image."""
        h, w = self.resized
        x1, y1, x2, y2 = box
        return x1 * w, y1 * h, x2 * w, y2 * h

    def resized_to_original(self, box: tuple[float, float, float, float]) -> list[float]:
        """An xyxy box in resized pixels → xyxy pixels of the original image."""
        (oh, ow), (rh, rw) = self.original, self.resized
        x1, y1, x2, y2 = box
        sx, sy = ow / rw, oh / rh
        return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


@dataclass
class AnswerObject:
    """One object read from a completion: its label and its box (xyxy pixels of the original image)."""

    label: str
    box: list[float] | None = None


@dataclass
class ParsedAnswer:
    """What a format read from one completion.

    ``skipped``: what was ignored and why (malformed or out-of-image boxes, boxes without a label);
    ``clipped``: boxes that reached past the image and were clipped to it (kept in ``objects``).
    """

    text: str
    objects: list[AnswerObject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    clipped: int = 0


class AnswerFormat:
    """Base of answer-format plugins.

    Class attributes a subclass sets:
        name: registry name, what a recipe's ``answer_format.name`` selects.
        Config: pydantic config model of the recipe section ``answer_format: {name: ..., <options>}``.
        uses_vrt: objects are VRT runs decoded by the decoder heads (``True``) or plain text that
            :meth:`parse` reads alone (``False``).
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]
    uses_vrt: ClassVar[bool] = False

    def __init__(self, config: PluginConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config(name=self.name)
        elif isinstance(config, dict):
            config = self.Config.model_validate({"name": self.name, **config})
        self.config = config

    def render(self, sample: Sample, geometry: ImageGeometry) -> str:
        """The completion text of ``sample`` (without the end-of-sequence token) with every object written out.

        :param sample: the training sample; ``sample.answer`` holds ``<|Obj_k|>`` placeholders and
            ``sample.objects[k].box`` their normalised xyxy boxes.
        :param geometry: sizes of the sample's image as the processor resized it.
        :raises ValueError: the template cannot be rendered (the collator skips the sample, naming why).
        """
        raise NotImplementedError(f"answer format {self.name!r} does not render answers as text")

    def parse(self, text: str, geometry: ImageGeometry | None) -> ParsedAnswer:
        """Objects of a generated completion (decoded text up to the end-of-sequence token).

        Never raises on model output: malformed parts are reported in ``skipped``. ``geometry`` is
        ``None`` for a sample without an image (no box can be placed then).
        """
        raise NotImplementedError(f"answer format {self.name!r} does not parse text answers")


def build_answer_format(recipe: Recipe) -> AnswerFormat:
    """The answer format a recipe selects (``answer_format``), configured from its section."""
    section = recipe.answer_format
    return get_plugin("answer_formats", section.name)(section)

"""Answer formats: how a completion writes the objects of an answer, and how they are read back.

A sample's answer is a template whose objects are placeholders ``<|Obj_k|>`` (``data/sample.py``).
An answer-format plugin (hook ``padt_answer_formats``, recipe section ``answer_format``) decides,
through its own methods, everything the core does differently per format:

* which recipes it fits (:meth:`AnswerFormat.check_recipe`, run when a recipe is validated),
* whether the model builds visual prototypes, hence a prototype bank and the VRT hooks
  (:meth:`AnswerFormat.build_projection`),
* how the collator turns a sample into the completion it trains on (:meth:`AnswerFormat.encode_answer`),
* how generated completions become predicted objects (:meth:`AnswerFormat.read_completions`).

The defaults of this base class are those of a format that writes objects as plain text: no
prototypes, no decoder (a recipe with one is an error), the completion is :meth:`render`'s text
trained with next-token CE, and :meth:`parse` alone places the boxes. A text format implements only
``render`` and ``parse``. The built-in ``vrt`` format (PaDT itself, ``plugins/answer_formats/vrt.py``)
overrides the four methods to hand objects to the core's VRT path: prototypes and a bank, VRT ids
and robust-CE masks from the collator, VRT runs parsed by the codec and decoded by the heads.

Boxes in a completion are pixels of the *resized* image the processor hands the model (as
Qwen2.5-VL's own grounding does); :class:`ImageGeometry` carries both sizes so a format can map them
to pixels of the original image. Guide for writing a format: ``docs/answer-formats.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .plugins import PluginConfig, get_plugin

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from .backbone import Backbone, BackboneBatch
    from .data.sample import Sample
    from .model import Encoded, PaDTModel, Prediction
    from .recipe import Recipe
    from .train.collator import PaDTCollator

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
    """Base of answer-format plugins; its defaults are those of a format that writes objects as text.

    Class attributes a subclass sets:
        name: registry name, what a recipe's ``answer_format.name`` selects.
        Config: pydantic config model of the recipe section ``answer_format: {name: ..., <options>}``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]

    def __init__(self, config: PluginConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config(name=self.name)
        elif isinstance(config, dict):
            config = self.Config.model_validate({"name": self.name, **config})
        self.config = config

    # --- what the core asks of a format -------------------------------------------------------------
    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Raise ``ValueError`` (naming the section) when ``recipe``'s other sections do not fit this format.

        Called when a recipe is validated. Default: objects are text, so there are no VRTs for decoder
        heads to read and a ``decoder`` section would train on nothing.
        """
        if recipe.decoder is not None:
            heads = ", ".join(h.name for h in recipe.decoder.heads)
            raise ValueError(
                f"answer_format {cls.name!r} writes objects as text and decodes no VRTs, but decoder is set "
                f"(trunk {recipe.decoder.trunk.name!r}, heads {heads}); set `decoder: null`"
            )

    def build_projection(self, recipe: Recipe, backbone: Backbone) -> torch.nn.Module | None:
        """The module that turns visual tokens into VRT prototypes, or ``None`` (the default): no VRTs.

        ``None`` means the model is the plain backbone: no prototype bank, no VRT hooks on its
        embeddings, VRT ids in its input are an error.
        """
        return None

    def encode_answer(
        self,
        collator: PaDTCollator,
        sample: Sample,
        grid: tuple[int, int],
        size: tuple[int, int],
        rng: np.random.Generator,
    ) -> Any:
        """The training completion of ``sample`` (a collator record), or ``None`` to skip the sample.

        Default: :meth:`render`'s text plus end-of-sequence, no VRT targets, no decoder objects.

        Args:
            collator: the calling collator (its tokenizer, skip counter and VRT writer).
            sample: the training sample.
            grid: ``(rows, cols)`` of the VRT grid the processor gave its image.
            size: ``(height, width)`` of the original image.
            rng: the sample's random stream (VRT target draws).
        """
        return collator.encode_text_answer(sample, grid, size)

    def read_completions(
        self,
        model: PaDTModel,
        batch: BackboneBatch,
        encoded: Encoded,
        completions: torch.Tensor,
        images: list[Image.Image | None],
    ) -> list[Prediction]:
        """Generated ``completions`` ``[B, new]`` (right-padded ids) → one :class:`Prediction` each.

        Default: decode the text and let :meth:`parse` place the boxes (in the resized image the model
        saw, grid × cell size pixels).
        """
        from .model import PredictedObject, Prediction

        cell = model.backbone.cell_size
        eos, pad = model.codec.eos_token_ids, model.backbone.pad_token_id
        predictions = []
        for b, row in enumerate(completions.tolist()):
            image = batch["image_index"][b]
            geometry = None
            if image >= 0:  # the model saw the image at grid × cell pixels (the processor's resize)
                rows, cols = batch["image_grids"][image]
                geometry = ImageGeometry((images[b].height, images[b].width), (rows * cell, cols * cell))
            text = model.codec.decode(row)
            parsed = self.parse(text, geometry)
            predictions.append(
                Prediction(
                    text=text,
                    objects=[PredictedObject(label=o.label, vrt=[], box=o.box) for o in parsed.objects],
                    skipped=parsed.skipped,
                    truncated=not any(i in eos for i in row),
                    ids=[i for i in row if i != pad],
                )
            )
        return predictions

    # --- what a text format implements -----------------------------------------------------------------
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

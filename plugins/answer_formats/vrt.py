"""The ``vrt`` answer format (PaDT, the default): every object is a run of Visual Reference Tokens.

Nothing here renders or parses text: a VRT object is token ids drawn on the processor's grid. The
format hands objects to the core's VRT machinery (reference §6.6, §7, §8): it builds the prototype
projection (so the model has a per-sample bank and the VRT hooks), the collator writes ``K`` VRT ids
per ``<|Obj_k|>`` with their robust-CE masks (``PaDTCollator.encode_vrt_answer``), and generated
completions are grouped into labelled VRT runs by ``VRTCodec.parse`` and decoded by the decoder heads
into boxes, scores, masks (``PaDTModel.decode_objects``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from padt_core.answer_format import AnswerFormat
from padt_core.embedding import PrototypeProjection
from padt_core.model import PredictedObject, Prediction
from padt_core.plugins import PluginConfig

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from padt_core.backbone import Backbone, BackboneBatch
    from padt_core.data.sample import Sample
    from padt_core.model import Encoded, PaDTModel
    from padt_core.recipe import Recipe
    from padt_core.train.collator import PaDTCollator

__all__ = ["VRTFormat", "VRTFormatConfig"]


class VRTFormatConfig(PluginConfig):
    """Recipe section ``answer_format: {name: vrt}`` (no options: VRT settings live in ``train`` and ``vrt``)."""

    name: Literal["vrt"] = "vrt"


class VRTFormat(AnswerFormat):
    """Objects as VRT runs: prototypes and a bank, VRT targets in training, the decoder at prediction."""

    name: ClassVar[str] = "vrt"
    Config: ClassVar[type[PluginConfig]] = VRTFormatConfig

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Any decoder fits, and none: without one, predictions carry the VRTs and labels only."""

    def build_projection(self, recipe: Recipe, backbone: Backbone) -> PrototypeProjection:
        """The prototype projection of the recipe's ``vrt`` section on the backbone's merged tokens."""
        vrt = recipe.vrt
        return PrototypeProjection(
            backbone.hidden_size,
            vrt.rank,
            vrt.projection,
            position=vrt.position,
            max_grid=vrt.max_grid,
            max_images=vrt.max_images,
        )

    def encode_answer(
        self,
        collator: PaDTCollator,
        sample: Sample,
        grid: tuple[int, int],
        size: tuple[int, int],
        rng: np.random.Generator,
    ) -> Any:
        """``K`` VRT ids per object in place of its placeholder, their robust-CE masks and decoder targets."""
        return collator.encode_vrt_answer(sample, grid, size, rng)

    def read_completions(
        self,
        model: PaDTModel,
        batch: BackboneBatch,
        encoded: Encoded,
        completions: torch.Tensor,
        images: list[Image.Image | None],
    ) -> list[Prediction]:
        """VRT runs of each completion as labelled objects; the decoder heads fill in what they predict."""
        codec = model.codec
        parsed = [codec.parse(row, image_cells=encoded.image_cells(b)) for b, row in enumerate(completions)]
        # Objects of a multi-image sample say which image they are in (and their cells in its grid).
        several = [len(own) > 1 for own in encoded.sample_images]
        predictions = [
            Prediction(
                text=codec.decode(row),
                objects=[
                    PredictedObject(o.label, o.vrt, image=o.image, cells=o.cells)
                    if many
                    else PredictedObject(label=o.label, vrt=o.vrt)
                    for o in p.objects
                ],
                skipped=p.skipped,
                truncated=p.truncated,
                ids=[int(i) for i in row if int(i) != model.backbone.pad_token_id],
            )
            for row, p, many in zip(completions, parsed, several)
        ]
        if model.decoder is not None and any(p.objects for p in parsed):
            model.decode_objects(batch, encoded, completions, parsed, images, predictions)
        return predictions

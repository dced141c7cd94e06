"""Where emitted VRTs land: distinct cells per object and the on-target rate (issue 8's VRT health numbers).

Box metrics say whether the decoded box is right; these two say whether the *tokens* the LLM emitted
are. Both read ``PredictedObject.vrt`` (raster cell ids of the image's VRT grid, as emitted):

- ``distinct_cells``: mean over emitted objects of ``len(set(obj.vrt))`` — greedy decoding without the
  no-repeat processor collapses to ~1.6 (``shared/NOTES-tiny-training.md``); 5-VRT answers should give 4–5.
- ``on_target``: of all VRTs emitted in answers to referring (REC) samples, the fraction whose cell is one
  of the referred object's ground-truth cells (:func:`padt_core.data.sample.object_cells`, the same
  coverage rule the collator trains with). Every emission counts, repeats included, so a model that
  repeats one on-target cell still scores its repeats as on target; ``distinct_cells`` shows the repeat.

Objects without VRTs (a text-coordinate answer format) are not "emitted objects": a model that emits
none gets ``None`` for both numbers, not 0. The ground-truth cells need the VRT grid the backbone's
processor makes for each image; :func:`processor_grid` asks the model's processor once per image size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.sample import object_cells

__all__ = ["processor_grid", "vrt_cell_stats"]

GridOf = Callable[[Any], tuple[int, int]]  # sample -> (rows, cols) of its image's VRT grid


def vrt_cell_stats(
    samples: Sequence[Any],
    predictions: Sequence[Any],
    grid_of: GridOf,
    *,
    coverage: float,
    tasks: Sequence[str] = ("rec",),
) -> dict[str, float | int | None]:
    """Distinct VRT cells per emitted object and the on-target rate of REC answers.

    Args:
        samples: evaluated samples (``id``, ``task``, ``objects``, ``image_size`` or ``image``).
        predictions: one prediction per sample, in the same order (objects with a ``vrt`` list).
        grid_of: ``(rows, cols)`` of the VRT grid of a sample's image (see :func:`processor_grid`).
        coverage: a cell is on the object when the object covers this fraction of it (the recipe's
            ``data.coverage``, else the backbone's ``default_coverage``, as in training).
        tasks: sample tasks whose answers are counted; on-target is computed on the ``rec`` ones only
            (one referred object each).

    Returns:
        ``{"distinct_cells", "on_target", "objects", "emitted", "on_target_emitted"}``: the two rates
        (``None`` when nothing was emitted), objects with VRTs, VRTs emitted in REC answers, and how
        many of those were on target.

    Raises:
        ValueError: ``samples`` and ``predictions`` differ in length, or a REC sample does not have
            exactly one ground-truth object.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples; pass one per sample")
    objects = distinct = emitted = on_target = 0
    for sample, prediction in zip(samples, predictions):
        if sample.task not in tasks:
            continue
        emitted_objects = [o for o in (getattr(prediction, "objects", None) or []) if getattr(o, "vrt", None)]
        for obj in emitted_objects:
            objects += 1
            distinct += len(set(obj.vrt))
        if sample.task != "rec" or not emitted_objects:
            continue
        if len(sample.objects) != 1:
            raise ValueError(
                f"sample {sample.id!r}: a REC sample has one ground-truth object, this one has {len(sample.objects)}"
            )
        grid = tuple(grid_of(sample))
        target = set(object_cells(sample.objects[0], grid, _image_size(sample), coverage))
        for obj in emitted_objects:
            emitted += len(obj.vrt)
            on_target += sum(int(cell) in target for cell in obj.vrt)
    return {
        "distinct_cells": distinct / objects if objects else None,
        "on_target": on_target / emitted if emitted else None,
        "objects": objects,
        "emitted": emitted,
        "on_target_emitted": on_target,
    }


def processor_grid(model: Any) -> GridOf:
    """``grid_of(sample)`` for :func:`vrt_cell_stats` from a model's processor, cached by image size.

    The grid depends only on the image size (the processor resizes within the recipe's pixel budget),
    so one processor call per distinct size suffices; a blank image of that size stands in.
    """
    from PIL import Image

    cache: dict[tuple[int, int], tuple[int, int]] = {}

    def grid_of(sample: Any) -> tuple[int, int]:
        size = _image_size(sample)
        if size not in cache:
            image = Image.new("RGB", (size[1], size[0]))
            batch = model.backbone.process([model.backbone.format_prompt("x", True)], [image])
            cache[size] = tuple(int(v) for v in batch["image_grids"][0])
        return cache[size]

    return grid_of


def _image_size(sample: Any) -> tuple[int, int]:
    """``(height, width)`` of the sample's original image: ``image_size``, else the file's header."""
    size = getattr(sample, "image_size", None)
    if size is not None:
        return int(size[0]), int(size[1])
    image = getattr(sample, "image", None)
    if image is None or not Path(str(image)).is_file():
        raise ValueError(f"sample {getattr(sample, 'id', '?')!r}: no image_size and image file {image!r} not found")
    from PIL import Image

    with Image.open(image) as im:
        return im.height, im.width

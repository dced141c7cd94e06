"""Training batches: prompts left-padded, completions with VRT targets right-padded, robust-CE masks.

For every object the collator draws its VRT targets on the *actual* processor grid of its image
(``K`` random foreground cells, or the 5-point centre/left/top/right/bottom strategy), writes them
into the answer in place of ``<|Obj_k|>``, and records which other cells of the same object must not
compete with each target (the robust per-token CE).

The answer format chooses how a sample becomes its completion
(:meth:`~padt_core.answer_format.AnswerFormat.encode_answer`): the ``vrt`` format asks for the VRT
completion above (:meth:`PaDTCollator.encode_vrt_answer`); a format that writes objects as text
(e.g. ``text_box``) renders the whole answer itself (:meth:`PaDTCollator.encode_text_answer`) and the
batch carries no VRT targets, ignore masks or objects: plain next-token CE on that text.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..answer_format import ImageGeometry
from ..data.image import ImageError, load_image
from ..data.sample import Sample, decode_mask, object_cells
from ..data.templates import DEFAULT_TEMPLATES, TaskTemplates, drop_objects
from ..decoder import ObjectTargets
from ..model import PromptError
from ..objects import ObjectBatch
from .batch import TrainBatch

__all__ = ["PaDTCollator", "five_point_cells", "pick_vrt_targets"]

logger = logging.getLogger(__name__)
_OBJ = re.compile(r"<\|Obj_(\d+)\|>")


def pick_vrt_targets(cells: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """``k`` cells drawn without replacement when the object has enough, with replacement otherwise.

    ``k < 0`` returns all cells in ascending order.
    """
    cells = list(cells)
    if k < 0:
        return sorted(cells)
    replace = len(cells) < k
    return [int(c) for c in rng.choice(cells, size=k, replace=replace)]


def five_point_cells(cells: Sequence[int], grid_w: int, rng: np.random.Generator) -> list[int]:
    """One cell each from centre, left-most, top-most, right-most and bottom-most cells, in that order."""
    arr = np.asarray(cells)
    x, y = arr % grid_w, arr // grid_w
    left, right, top, bottom = x == x.min(), x == x.max(), y == y.min(), y == y.max()
    centre = ~(left | right | top | bottom)
    if not centre.any():
        centre = np.ones_like(centre)
    return [int(rng.choice(arr[sel])) for sel in (centre, left, top, right, bottom)]


@dataclass
class _Encoded:
    completion: list[int]
    ignore: list[tuple[int, list[int]]]  # (completion index, cells that must not compete there)
    objects: list[dict[str, Any]] = field(default_factory=list)


class PaDTCollator:
    """Turns a list of :class:`Sample` into a :class:`~padt_core.train.batch.TrainBatch` for :class:`PaDTModel`.

    Its ``objects`` hold every object's VRT positions and cells and its targets: boxes, masks and
    every annotation extra by key (``ObjectAnn.extra``), whatever heads will read them.

    Bad samples (missing/corrupt image, objects that cover no cell, broken masks) are skipped with
    one warning line each and counted in ``self.skipped``; a batch is never lost to one bad record.
    """

    def __init__(
        self,
        model,
        vrt_per_object: int = 5,
        vrt_sampling: str = "random",
        coverage: float | None = None,
        seed: int = 0,
        relative_coverage: float | None = None,
        templates: TaskTemplates = DEFAULT_TEMPLATES,
    ):
        self.backbone = model.backbone
        self.codec = model.codec
        self.answer_format = model.answer_format
        self.prepare = model.prepare
        self.k = vrt_per_object
        self.sampling = vrt_sampling
        self.coverage = coverage if coverage is not None else model.coverage  # None: the model's recipe/backbone
        recipe = getattr(model, "recipe", None)
        self.relative_coverage = (
            relative_coverage if relative_coverage is not None else (recipe.data.relative_coverage if recipe else 0.0)
        )
        self.rng = np.random.default_rng(seed)
        self.templates = templates
        self.skipped: Counter[str] = Counter()

    def _skip(self, sample: Sample, reason: str, detail: str) -> None:
        """Count a skipped sample under ``reason`` (the readers' keys: ``missing_image``, ``bad_mask``, ...)."""
        self.skipped[reason] += 1
        logger.warning("skipping sample %s (%s): %s", sample.id, sample.image, detail)

    def _load(self, sample: Sample) -> Image.Image | list[Image.Image] | None:
        """The sample's image, or the list of its images (a multi-image sample); ``None``: skipped."""
        paths = sample.image_paths
        loaded = []
        for j, path in enumerate(paths):
            try:
                loaded.append(load_image(path))
            except ImageError as err:  # missing, a directory, truncated, too large (padt_core/data/image.py)
                where = f"image {j} of {len(paths)}: " if len(paths) > 1 else ""
                self._skip(sample, err.reason, where + str(err))
                return None
        return loaded if sample.images else loaded[0]

    def _processable(self, sample: Sample, image: Image.Image | list[Image.Image]) -> bool:
        """Whether the model takes this sample alone; a refused one is skipped (``image_rejected``, ``bad_prompt``)."""
        try:
            self.prepare([image], [sample.prompt])
        except PromptError as err:  # special tokens typed into the data's prompt text
            self._skip(sample, "bad_prompt", str(err))
            return False
        except ValueError as err:
            sizes = ", ".join(f"{im.width}x{im.height}" for im in _images(image))
            self._skip(sample, "image_rejected", f"{sizes} (w x h): {err}")
            return False
        return True

    def _text_ids(self, text: str) -> list[int]:
        return self.backbone.tokenizer.encode(text, add_special_tokens=False) if text else []

    def encode_vrt_answer(
        self,
        sample: Sample,
        grid: tuple[int, int] | list[tuple[int, int]],
        size: tuple[int, int] | list[tuple[int, int]],
        rng: np.random.Generator,
    ) -> _Encoded | None:
        """``K`` VRT ids per ``<|Obj_k|>`` drawn from the object's cells, their robust-CE masks and decoder targets.

        A multi-image sample gives a list of grids and sizes, one per image: each object's cells are drawn on
        its own image's grid and its VRT ids are offset by the cells of the images before it.
        """
        vocab = self.backbone.vocab_rows
        grids = list(grid) if isinstance(grid, list) else [grid]
        sizes = list(size) if isinstance(size, list) else [size]
        offsets = np.cumsum([0] + [h * w for h, w in grids]).tolist()
        try:
            cells_of = [
                object_cells(o, grids[o.image], sizes[o.image], self.coverage, self.relative_coverage)
                for o in sample.objects
            ]
        except ValueError as err:
            self._skip(sample, "bad_mask", f"bad mask: {err}")
            return None
        if not all(cells_of):
            # As the reference: objects too small for any cell leave the answer; the sample stays.
            self.skipped["object_covers_no_cell"] += cells_of.count([])
            kept = drop_objects(sample, [bool(c) for c in cells_of], self.templates)
            if kept is None:
                self._skip(sample, "sample_covers_no_cell", "the referred object is smaller than one cell")
                return None
            sample, cells_of = kept, [c for c in cells_of if c]
        enc = _Encoded(completion=[], ignore=[])
        pos = 0
        for m in _OBJ.finditer(sample.answer):
            enc.completion += self._text_ids(sample.answer[pos : m.start()])
            pos = m.end()
            index = int(m.group(1))
            if index >= len(sample.objects):
                self._skip(sample, "bad_template", f"<|Obj_{index}|> but {len(sample.objects)} objects")
                return None
            obj, cells = sample.objects[index], cells_of[index]
            try:
                mask = decode_mask(obj, sizes[obj.image]) if obj.mask is not None else None
            except ValueError as err:
                self._skip(sample, "bad_mask", f"bad mask: {err}")
                return None
            if self.sampling == "five_point" and self.k != -1:
                targets = five_point_cells(cells, grids[obj.image][1], rng)
            else:
                targets = pick_vrt_targets(cells, self.k, rng)
            start, offset = len(enc.completion), offsets[obj.image]
            cellset = set(cells)
            for j, cell in enumerate(targets):
                enc.ignore.append((start + j, [offset + c for c in sorted(cellset - {cell})]))
            enc.completion += [vocab + offset + c for c in targets]
            enc.objects.append(
                {
                    "positions": list(range(start, start + len(targets))),
                    "cells": targets,  # in the object's own image
                    "image": obj.image,
                    "box": obj.box,
                    "mask": None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)),
                    "extra": {key: _extra_tensor(value) for key, value in obj.extra.items()},
                }
            )
        enc.completion += self._text_ids(sample.answer[pos:])
        enc.completion.append(self.backbone.eos_token_ids[0])
        return enc

    def encode_text_answer(self, sample: Sample, grid: tuple[int, int], size: tuple[int, int]) -> _Encoded | None:
        """The answer as the format writes it (objects as text, in pixels of the resized image) + EOS."""
        cell = self.backbone.cell_size
        geometry = ImageGeometry(original=size, resized=(grid[0] * cell, grid[1] * cell))
        try:
            text = self.answer_format.render(sample, geometry)
        except ValueError as err:
            self._skip(sample, "bad_template", f"bad template: {err}")
            return None
        return _Encoded(completion=[*self._text_ids(text), self.backbone.eos_token_ids[0]], ignore=[])

    def __call__(self, items: Sequence[Sample | dict[str, Any]]) -> TrainBatch:
        # This batch's own skips travel with it: a DataLoader worker's counter stays in its process.
        counted = Counter(self.skipped)
        kept: list[tuple[Sample, Image.Image]] = []
        seeds = []
        for item in items:
            sample = item["sample"] if isinstance(item, dict) else item
            image = self._load(sample)
            if image is not None:
                kept.append((sample, image))
                seeds.append(item.get("seed") if isinstance(item, dict) else None)
        # A per-sample seed (from the dataset: seed, index, epoch) makes targets independent of how
        # batches were formed, so a resumed run draws exactly what an uninterrupted one would.
        rngs = [np.random.default_rng(s) if s is not None else self.rng for s in seeds]
        if not kept:
            raise ValueError(f"every sample of the batch was skipped ({dict(self.skipped)})")
        try:
            prompt = self.prepare([im for _, im in kept], [s.prompt for s, _ in kept])
        except ValueError:  # the processor refused an image (Qwen2.5-VL's aspect-ratio limit) or a prompt: drop it
            accepted = [b for b, (sample, image) in enumerate(kept) if self._processable(sample, image)]
            kept, seeds, rngs = [kept[b] for b in accepted], [seeds[b] for b in accepted], [rngs[b] for b in accepted]
            if not kept:
                raise ValueError(f"every sample of the batch was skipped ({dict(self.skipped)})") from None
            prompt = self.prepare([im for _, im in kept], [s.prompt for s, _ in kept])
        encoded, rows = [], []
        for b, ((sample, image), own) in enumerate(zip(kept, prompt["sample_images"])):
            if isinstance(image, list):  # a multi-image sample: grids and sizes of each of its images
                grid: Any = [tuple(prompt["image_grids"][i]) for i in own]
                size: Any = [(im.height, im.width) for im in image]
            else:
                grid, size = tuple(prompt["image_grids"][own[0]]), (image.height, image.width)
            enc = self.answer_format.encode_answer(self, sample, grid, size, rngs[b])
            if enc is not None:
                # How many of each object's VRTs the decoder sees when trained on cell subsets
                # (train.decoder_cell_subsets): drawn per sample too, from its own stream, so data-parallel
                # ranks and a single process (and a resumed run) draw the same subsets.
                keep_rng = np.random.default_rng([*np.atleast_1d(seeds[b]), 1]) if seeds[b] is not None else self.rng
                for obj in enc.objects:
                    obj["keep"] = int(keep_rng.integers(1, len(obj["cells"]) + 1)) if obj["cells"] else 0
                encoded.append(enc)
                rows.append(b)
        if not encoded:
            raise ValueError(f"every sample of the batch was skipped ({dict(self.skipped)})")
        if len(rows) < len(kept):  # re-process without the dropped samples so tensors stay aligned
            kept = [kept[b] for b in rows]
            prompt = self.prepare([im for _, im in kept], [s.prompt for s, _ in kept])
        sizes = [(im.height, im.width) for _, image in kept for im in _images(image)]  # per batch image
        batch = self._assemble(prompt, encoded, sizes)
        batch.skipped = dict(self.skipped - counted)
        return batch

    def _assemble(self, prompt, encoded: list[_Encoded], sizes: list[tuple[int, int]]) -> TrainBatch:
        pad = self.backbone.pad_token_id
        length = max(len(e.completion) for e in encoded)
        grids = prompt["image_grids"]
        # A sample's VRT vocabulary: the cells of all its images (the bank's row width).
        width = max(sum(grids[i][0] * grids[i][1] for i in own) for own in prompt["sample_images"])
        batch = len(encoded)
        completion = torch.full((batch, length), pad, dtype=torch.long)
        completion_mask = torch.zeros(batch, length, dtype=torch.long)
        ignore = torch.zeros(batch, length, width, dtype=torch.bool)
        sample, counts, positions, cells, keep, image = [], [], [], [], [], []
        objects: list[dict[str, Any]] = []
        for b, enc in enumerate(encoded):
            completion[b, : len(enc.completion)] = torch.tensor(enc.completion)
            completion_mask[b, : len(enc.completion)] = 1
            for t, ignored in enc.ignore:
                ignore[b, t, ignored] = True
            for obj in enc.objects:
                sample.append(b)
                counts.append(len(obj["cells"]))
                positions += obj["positions"]
                cells += obj["cells"]
                keep.append(obj.get("keep", len(obj["cells"])))
                image.append(obj.get("image", 0))
                objects.append(obj)
        # Every extra key any object of the batch carries; objects without it hold None (a head that
        # needs the key leaves them out of its loss and counts them).
        keys = list(dict.fromkeys(k for obj in objects for k in obj["extra"]))
        targets = ObjectTargets(
            boxes=torch.tensor([obj["box"] for obj in objects], dtype=torch.float32).reshape(-1, 4),
            masks=[obj["mask"] for obj in objects],
            extras={k: [obj["extra"].get(k) for obj in objects] for k in keys},
        )

        def long(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long)

        return TrainBatch(
            prompt=prompt,
            completion_ids=completion,
            completion_mask=completion_mask,
            vrt_ignore=ignore if any(e.ignore for e in encoded) else None,  # None: no VRT target in the batch
            objects=ObjectBatch(
                sample=long(sample),
                counts=long(counts),
                positions=long(positions),
                cells=long(cells),
                keep=long(keep),  # VRTs the decoder sees with cell subsets
                targets=targets,
                image=long(image) if any(image) else None,  # None: every object in its sample's first image
            ),
            original_sizes=sizes,
        )


def _images(image: Image.Image | list[Image.Image]) -> list[Image.Image]:
    return image if isinstance(image, list) else [image]


def _extra_tensor(value: Any) -> Any:
    """An annotation extra as a tensor (floats as float32, integers and flags as they are), or the
    value itself when it is not numeric (a head that reads such a key takes it as it is)."""
    if isinstance(value, torch.Tensor):
        tensor = value
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            return value
    return tensor.float() if tensor.is_floating_point() else tensor

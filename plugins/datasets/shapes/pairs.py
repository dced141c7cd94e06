"""``shapes_pairs``: two shapes images in one conversation, and questions that need both.

Each sample shows two generated shapes images (:mod:`.generate`, the same files a ``shapes`` section
makes) and asks one of:

- ``which``: "Which image shows the red circle?" — the answer names the image and points at the
  object in it: ``The "red circle" is in the second image: <|Obj_0|>.``
- ``ordinal``: "Find the red circle in the second image." — the shape is in that image once (the
  other image may hold one too: only the ordinal tells them apart).
- ``both``: "Find the shape that appears in both images." — the one colour + shape that each image
  holds exactly once; two objects, one per image.

A sample's VRTs number the cells of its first image, then its second's (``docs/multi-image.md``);
every object says which image it is in (``ObjectAnn.image``). All samples carry the task ``rec``
(one referent per image; ``both`` has two, so evaluate splits of ``which`` / ``ordinal``
questions with the REC metric, which counts a box in the wrong image as a miss).

Pairs are drawn deterministically from ``(seed, split, index)``; the val split pairs val images only,
so a held-out split never shows a training image.

Example recipe section::

    data:
      train:
        - {name: shapes_pairs, root: runs/data/shapes_pairs, split: train, n_pairs: 4000}
      val:
        - {name: shapes_pairs, root: runs/data/shapes_pairs, split: val, n_pairs: 300, questions: [which]}
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from padt_core.data.reader import DatasetReader
from padt_core.data.sample import ObjectAnn, Sample, box_from_xywh, segmentation_to_rle
from padt_core.plugins import PluginConfig

from .dataset import ShapesImagesConfig
from .generate import ensure_shapes
from .text import SHAPES

__all__ = ["ShapesPairsDataset", "ShapesPairsDatasetConfig", "pair_question"]

Question = Literal["which", "ordinal", "both"]
ORDINALS = ("first", "second")
_SPLIT_CODE = {"train": 0, "val": 1}
_TRIES = 50  # image pairs tried per sample before the question is given up (then counted in `skipped`)


class ShapesPairsDatasetConfig(ShapesImagesConfig):
    """Recipe section ``{name: shapes_pairs, ...}``: the image generation parameters as in ``shapes``, plus
    how many pairs and which questions."""

    name: Literal["shapes_pairs"] = "shapes_pairs"
    n_pairs: int = Field(2000, ge=1, description="samples of this split (pairs drawn from its images)")
    questions: list[Question] = Field(
        default_factory=lambda: ["which", "ordinal", "both"], min_length=1, description="which, ordinal, both"
    )
    # Defaults of their own: fewer, easier images than `shapes` (a pair already doubles the objects).
    n_train: int = Field(1000, ge=0, description="images of the train split")
    seed: int = Field(0, description="generation seed of the images and of the pairs")
    difficulty: Literal["easy", "full"] = Field("easy", description="of the images (see the shapes section)")
    max_objects: int = Field(4, ge=1, le=6)

    @model_validator(mode="after")
    def _check(self) -> ShapesPairsDatasetConfig:
        if len(set(self.questions)) != len(self.questions):
            raise ValueError(f"questions lists a question twice: {self.questions}")
        return self


def _kinds(annotations: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """How often each (colour, shape) occurs in one image."""
    return Counter((a["colour"], SHAPES[a["category_id"] - 1]) for a in annotations)


def pair_question(
    question: Question, kinds: tuple[Counter, Counter], rng: np.random.Generator
) -> tuple[str, str, list[tuple[int, tuple[str, str]]]] | None:
    """Prompt, answer template and ``[(image, (colour, shape))]`` referents of one question about two images
    (``kinds``: the (colour, shape) counts of each), or ``None`` when the pair cannot ask it.

    Example:
        >>> a, b = Counter({("red", "circle"): 1}), Counter({("blue", "star"): 1})
        >>> pair_question("which", (a, b), np.random.default_rng(0))[1]
        'The "blue star" is in the second image: <|Obj_0|>.'
    """
    first, second = kinds
    if question == "which":
        options = [(j, k) for j, own in enumerate(kinds) for k, n in own.items() if n == 1 and kinds[1 - j][k] == 0]
        if not options:
            return None
        image, (colour, shape) = options[rng.integers(len(options))]
        noun = f"{colour} {shape}"
        prompt = f"Which image shows the {noun}? Find it."
        return prompt, f'The "{noun}" is in the {ORDINALS[image]} image: <|Obj_0|>.', [(image, (colour, shape))]
    if question == "ordinal":
        options = [(j, k) for j, own in enumerate(kinds) for k, n in own.items() if n == 1]
        if not options:
            return None
        image, (colour, shape) = options[rng.integers(len(options))]
        noun = f"{colour} {shape}"
        prompt = f"Find the {noun} in the {ORDINALS[image]} image."
        return prompt, f'The "{noun}" in the {ORDINALS[image]} image is <|Obj_0|>.', [(image, (colour, shape))]
    shared = sorted(k for k, n in first.items() if n == 1 and second[k] == 1)
    if len(shared) != 1:
        return None
    colour, shape = shared[0]
    noun = f"{colour} {shape}"
    answer = f'The "{noun}" is in the first image at <|Obj_0|> and in the second image at <|Obj_1|>.'
    return "Find the shape that appears in both images.", answer, [(0, shared[0]), (1, shared[0])]


class ShapesPairsDataset(DatasetReader):
    """Two-image questions over a split of generated shapes images."""

    name: ClassVar[str] = "shapes_pairs"
    tasks: ClassVar[tuple[str, ...]] = ("rec",)
    Config: ClassVar[type[PluginConfig]] = ShapesPairsDatasetConfig
    config: ShapesPairsDatasetConfig

    def _source(self) -> str:
        return f"{self.config.root} split {self.config.split} (pairs)"

    def _read(self) -> list[Sample]:
        cfg = self.config
        ensure_shapes(cfg.root, cfg.params(), regenerate=cfg.regenerate, workers=cfg.workers)
        root = Path(cfg.root)
        coco = json.loads((root / "annotations" / f"instances_{cfg.split}.json").read_text())
        by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in coco["images"]}
        for ann in coco["annotations"]:
            by_image[ann["image_id"]].append(ann)
        images = [im for im in coco["images"] if by_image[im["id"]]]
        if len(images) < 2:
            raise ValueError(f"shapes_pairs: split {cfg.split} of {root} has {len(images)} images with shapes; need 2")
        kinds = {im["id"]: _kinds(by_image[im["id"]]) for im in images}
        # "both" needs two images sharing a kind exactly once each: index them by kind to find such pairs.
        holders: dict[tuple[str, str], list[int]] = {}
        for im in images:
            for kind, n in kinds[im["id"]].items():
                if n == 1:
                    holders.setdefault(kind, []).append(im["id"])
        shared_kinds = sorted(k for k, ids in holders.items() if len(ids) >= 2)
        by_id = {im["id"]: im for im in images}
        samples = []
        for index in range(cfg.n_pairs):
            rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[cfg.split], index])
            question = cfg.questions[index % len(cfg.questions)]
            for _ in range(_TRIES):
                if question == "both" and shared_kinds:
                    ids = holders[shared_kinds[rng.integers(len(shared_kinds))]]
                    pick = rng.choice(len(ids), size=2, replace=False)
                    pair = [by_id[ids[int(pick[0])]], by_id[ids[int(pick[1])]]]
                else:
                    pick = rng.choice(len(images), size=2, replace=False)
                    pair = [images[int(pick[0])], images[int(pick[1])]]
                asked = pair_question(question, (kinds[pair[0]["id"]], kinds[pair[1]["id"]]), rng)
                if asked is not None:
                    samples.append(self._sample(index, question, pair, asked, by_image, root))
                    break
            else:
                self.skip(f"no_{question}_pair", f"pair {index}", f"no image pair in {_TRIES} tries asks {question!r}")
        return samples

    def _sample(self, index, question, pair, asked, by_image, root: Path) -> Sample:
        prompt, answer, referents = asked
        objects = []
        for image, (colour, shape) in referents:
            im = pair[image]
            ann = next(a for a in by_image[im["id"]] if a["colour"] == colour and SHAPES[a["category_id"] - 1] == shape)
            objects.append(
                ObjectAnn(
                    label=f"{colour} {shape}",
                    box=box_from_xywh(ann["bbox"], im["width"], im["height"]),
                    mask=segmentation_to_rle(ann["segmentation"], im["height"], im["width"]),
                    area=float(ann["area"]),
                    category_id=int(ann["category_id"]),
                    ann_id=int(ann["id"]),
                    image=image,
                )
            )
        paths = [str(root / "images" / im["file_name"]) for im in pair]
        sizes = [(int(im["height"]), int(im["width"])) for im in pair]
        return Sample(
            id=f"{self.name}/{self.config.split}/{index}",
            image=paths[0],
            images=paths,
            task="rec",
            prompt=prompt,
            answer=answer,
            objects=objects,
            image_size=sizes[0],
            image_sizes=sizes,
            meta={"question": question, "image_ids": [im["id"] for im in pair]},
        )

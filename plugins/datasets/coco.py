"""``coco``: COCO ``instances_*.json`` → open-vocabulary detection (OVD) samples (reference §6.3).

One sample per image. The prompt lists category names as a JSON list; the answer counts each
present category in prompt order and points at its objects in annotation order::

    Please carefully check the image and detect the following objects: ["dog", "person", ...].
    In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).

``mode: train`` shuffles the category list and, with probability ``drop_rate``, drops the first
``drop_fraction`` of the shuffled list (40 of COCO's 80), always keeping categories present in the
image. ``mode: val`` lists every category in id order. In both modes a category with more than
``max_per_class`` objects in the image leaves prompt and answer (the reference's 50).

Randomness (a choice the reference leaves unseeded, weakness 22): image ``i`` of epoch ``e`` draws
from ``numpy.random.default_rng([seed, e, image_id])``. The prompt of an image is therefore the
same for a given (seed, epoch) whatever the sampler order, worker count or number of ranks, and
changes from epoch to epoch once the trainer calls ``set_epoch``. Keying on the image id rather
than the list index keeps prompts stable when another record is skipped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from padt_core.data.reader import DatasetReader, ImageCheck
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.data.templates import ovd_answer, ovd_prompt
from padt_core.plugins import PluginConfig

from ._coco import BadRecord, coco_object, load_coco, stable_int

__all__ = ["CocoDataset", "CocoDatasetConfig"]


class CocoDatasetConfig(PluginConfig):
    """Recipe section ``{name: coco, ...}`` in ``data.train`` / ``data.val``."""

    name: Literal["coco"] = "coco"
    annotations: str = Field(description="path of a COCO instances json (e.g. instances_train2017.json)")
    image_dir: str = Field(description="folder the images' file_name is relative to")
    mode: Literal["train", "val"] = Field(
        "train", description="train: shuffled/dropped category prompts; val: all categories in id order"
    )
    drop_rate: float = Field(0.5, ge=0, le=1, description="probability of dropping part of the category list")
    drop_fraction: float = Field(0.5, ge=0, le=1, description="fraction of the shuffled list dropped (40 of 80)")
    max_per_class: int = Field(50, ge=1, description="categories with more objects leave prompt and answer")
    seed: int = Field(0, description="seed of the category shuffling (with the epoch and image id)")
    keep_empty: bool = Field(True, description="keep images without objects (answer: no objects present)")
    check_images: ImageCheck = Field("header", description="none | header (size, format) | decode (pixels)")


class CocoDataset(DatasetReader):
    """OVD samples from a COCO instances file; see the module docstring for the prompt rules."""

    name: ClassVar[str] = "coco"
    tasks: ClassVar[tuple[str, ...]] = ("ovd",)
    Config: ClassVar[type[PluginConfig]] = CocoDatasetConfig
    config: CocoDatasetConfig

    def _source(self) -> str:
        return self.config.annotations

    def _read(self) -> list[dict[str, Any]]:
        cfg = self.config
        coco = load_coco(cfg.annotations)
        image_dir = Path(cfg.image_dir)
        cats = sorted(coco.cats.values(), key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in cats]
        self.category_names = {int(c["id"]): str(c["name"]) for c in cats}
        records = []
        for image_id, img in coco.imgs.items():
            where = f"{cfg.annotations} image {image_id} ({img.get('file_name')})"
            height, width = int(img["height"]), int(img["width"])
            size = self.check_image(image_dir / img["file_name"], where, (height, width))
            if size is None:
                continue
            by_category: dict[int, list[ObjectAnn]] = defaultdict(list)
            for ann in coco.imgToAnns.get(image_id, []):
                category = int(ann.get("category_id", -1))
                if category not in self.category_names:
                    self.skip("unknown_category", where, f"annotation {ann.get('id')} has category {category}")
                    continue
                try:
                    by_category[category].append(coco_object(ann, height, width, self.category_names[category]))
                except BadRecord as bad:
                    self.skip(bad.reason, where, str(bad))
            if not by_category and not cfg.keep_empty:
                continue
            records.append(
                {
                    "image_id": image_id,
                    "image": str(image_dir / img["file_name"]),
                    "size": size,
                    "objects": dict(by_category),
                }
            )
        return records

    def _prompt_categories(self, record: dict[str, Any]) -> list[int]:
        """Category ids of the prompt, in prompt order (before the ``max_per_class`` filter)."""
        cfg = self.config
        if cfg.mode == "val":
            return list(self.category_ids)
        rng = np.random.default_rng([cfg.seed, self.epoch, stable_int(record["image_id"])])
        order = [self.category_ids[i] for i in rng.permutation(len(self.category_ids))]
        if rng.random() < cfg.drop_rate:
            dropped = set(order[: int(cfg.drop_fraction * len(order))]) - set(record["objects"])
            order = [c for c in order if c not in dropped]
        return order

    def _make(self, record: dict[str, Any], index: int) -> Sample:
        crowded = {c for c, objs in record["objects"].items() if len(objs) > self.config.max_per_class}
        prompt_ids = [c for c in self._prompt_categories(record) if c not in crowded]
        groups, objects = [], []
        for c in prompt_ids:
            objs = record["objects"].get(c, [])
            if objs:
                groups.append((self.category_names[c], len(objs)))
                objects += objs
        return Sample(
            id=f"{self.name}/{record['image_id']}",
            image=record["image"],
            task="ovd",
            prompt=ovd_prompt([self.category_names[c] for c in prompt_ids], self.templates),
            answer=ovd_answer(groups, self.templates),
            objects=objects,
            image_size=record["size"],
            meta={
                "image_id": record["image_id"],
                "source": self.config.annotations,
                "coco_annotation_file": self.config.annotations,
                "epoch": self.epoch,
            },
        )

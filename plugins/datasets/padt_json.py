"""``padt_json``: the published PaDT json/jsonl sample format (reference §6.1).

One record per sample (a json list, or one json object per line)::

    {"id": 139, "image": "000000000139.jpg", "task": "ovd" | "refering" | "ric",
     "conversations": [{"from": "human", "value": "<image>Please carefully check ..."}],
     "answer_template": "There is 1 \\"person\\" (<|Obj_0|>) in this image.",
     "objects": [{"bbox": [x1, y1, x2, y2] (normalised), "patches": [...], "rle": {...},
                  "label": "person", "iscrowd": 0, "area": 123.4,
                  "extra": {"keypoints": [...]}}]}     (optional: further targets by key, ObjectAnn.extra)

Several images in one conversation (``docs/multi-image.md``): ``"images": ["a.jpg", "b.jpg"]`` in place of
``"image"``, and each object's ``"image": j`` (default 0) says which one it is in (its ``bbox`` and
``rle`` are that image's). ``<|img|>`` in the prompt places each image (so does one ``<image>`` per
image); without slots they come first.

``<image>`` strings are removed from the prompt, as the reference's ``sft_train.py`` does. The
``patches`` stored in the file were computed on a ``round(h/28) × round(w/28)`` grid of the original
image (§6.2); they are kept in ``meta["patches"]`` for inspection, while training recomputes cells
on the processor's actual grid from the masks (or boxes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from padt_core.backbone import IMAGE_SLOT
from padt_core.data.reader import DatasetReader, ImageCheck, read_json
from padt_core.data.sample import ObjectAnn, Sample, rle_area
from padt_core.plugins import PluginConfig

__all__ = ["PaDTJsonDataset", "PaDTJsonDatasetConfig"]


class PaDTJsonDatasetConfig(PluginConfig):
    """Recipe section ``{name: padt_json, ...}``."""

    name: Literal["padt_json"] = "padt_json"
    path: str = Field(description="a .json (list of records) or .jsonl (one record per line) file")
    image_dir: str = Field(description="folder the records' `image` is relative to")
    refering_task: Literal["rec", "res"] = Field("rec", description="task given to 'refering' records")
    check_images: ImageCheck = Field("header", description="none | header (size, format) | decode (pixels)")


def _iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` pairs of a json list or a jsonl file; unparsable lines give ``(location, None)``."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"line {line_no}", json.loads(line)
                    except json.JSONDecodeError as err:
                        yield f"line {line_no}", err
        return
    data = read_json(path, "PaDT json file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a json list of records (or use a .jsonl file)")
    for i, record in enumerate(data):
        yield f"record {i}", record


class PaDTJsonDataset(DatasetReader):
    """Samples from PaDT's processed COCO / RefCOCO / RIC files."""

    name: ClassVar[str] = "padt_json"
    tasks: ClassVar[tuple[str, ...]] = ("rec", "res", "ovd", "ric")
    Config: ClassVar[type[PluginConfig]] = PaDTJsonDatasetConfig
    config: PaDTJsonDatasetConfig

    _TASKS: ClassVar[dict[str, str]] = {"ovd": "ovd", "ric": "ric", "rec": "rec", "res": "res"}

    def _source(self) -> str:
        return self.config.path

    def _read(self) -> list[Sample]:
        path = Path(self.config.path)
        if not path.is_file():
            raise FileNotFoundError(f"PaDT json file {path} does not exist")
        samples = []
        for location, record in _iter_records(path):
            where = f"{path} {location}" + (f" (id {record.get('id')})" if isinstance(record, dict) else "")
            if not isinstance(record, dict):
                self.skip("bad_record", where, f"not a json object: {record}")
                continue
            try:
                sample = self._sample(record, where)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                self.skip("bad_record", where, f"{type(err).__name__}: {err}")
                continue
            if sample is not None:
                samples.append(sample)
        return samples

    def _sample(self, record: dict[str, Any], where: str) -> Sample | None:
        task = record["task"]
        task = self.config.refering_task if task in ("refering", "referring") else self._TASKS.get(task)
        if task is None:
            raise ValueError(f"unknown task {record['task']!r}")
        prompt = next(t["value"] for t in record["conversations"] if t.get("from") == "human")
        names = record["images"] if "images" in record else [record["image"]]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"`images` must be a non-empty list of file names, got {names!r}")
        # One <image> per image of a multi-image record marks where each goes; otherwise they are dropped.
        slots = len(names) > 1 and prompt.count("<image>") == len(names)
        prompt = prompt.replace("<image>", IMAGE_SLOT if slots else "").strip()
        paths = [Path(self.config.image_dir) / name for name in names]
        raw_objects = record.get("objects") or []
        places = [int(o.get("image", 0)) for o in raw_objects]
        beyond = [k for k, j in enumerate(places) if not 0 <= j < len(paths)]
        if beyond:
            k = beyond[0]
            raise ValueError(f"object {k} is in image {places[k]} but the record has {len(paths)} image(s)")
        sizes = []
        for j, image in enumerate(paths):
            rle_sizes = {tuple(o["rle"]["size"]) for o, at in zip(raw_objects, places) if o.get("rle") and at == j}
            if len(rle_sizes) > 1:
                self.skip("rle_size", where, f"objects' RLEs disagree on the size of {image}: {sorted(rle_sizes)}")
                return None
            expected = next(iter(rle_sizes)) if rle_sizes else None
            size = self.check_image(image, where, expected)
            if size is None and (expected is not None or self.config.check_images != "none"):
                return None  # skipped (missing/corrupt image, or RLE size != image size)
            sizes.append(size)
        image, size = paths[0], sizes[0]
        objects = []
        for k, o in enumerate(raw_objects):
            mask = o.get("rle")
            if mask is not None and rle_area(mask) == 0:
                self.skip("empty_mask", where, f"object {k} ({o.get('label')!r}) has an empty mask")
                return None  # the answer template refers to every object: the record cannot be repaired
            objects.append(
                ObjectAnn(
                    label=str(o.get("label", "")),
                    box=tuple(o["bbox"]),
                    mask=mask,
                    iscrowd=bool(o.get("iscrowd", 0)),
                    area=None if o.get("area") is None else float(o["area"]),
                    extra=dict(o.get("extra") or {}),
                    image=places[k],
                )
            )
        several = "images" in record and len(paths) > 1
        return Sample(
            id=f"{self.name}/{record['id']}",
            image=str(image),
            images=[str(p) for p in paths] if several else [],
            image_sizes=sizes if several and all(s is not None for s in sizes) else None,
            task=task,
            prompt=prompt,
            answer=record["answer_template"],
            objects=objects,
            image_size=size,
            meta={
                "record_id": record["id"],
                "patches": [o.get("patches") for o in raw_objects],
                # The grid those patch ids live on (§6.2), when the image size is known.
                "patch_grid": None if size is None else (round(size[0] / 28), round(size[1] / 28)),
                "source": self.config.path,
            },
        )

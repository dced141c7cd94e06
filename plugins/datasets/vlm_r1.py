"""``vlm_r1``: VLM-R1's processed RefCOCO / RefCOCO+ / RefCOCOg split files → REC or RES samples.

The paper's RefCOCO figures are computed over these files (``rec_jsons_processed``, reference §9.2),
one json list per split, ``refcoco+`` spelled ``refcocop`` in the file names::

    rec_jsons_processed/refcoco_val.json  refcocop_testA.json  refcocog_test.json ...
    [{"image": "train2014/COCO_train2014_000000380440.jpg", "normal_caption": "man in the middle",
      "solution": [x1, y1, x2, y2] (pixels), "height": 427, "width": 640, "problem": ..., ...}, ...]

One sample per item, with padt's referring prompt and answer for ``normal_caption`` (the reference
infers with its own prompt; the file's ``problem`` text asks for coordinates and is not used). The
image id is the number in the image file name, as the reference reads it. ``splits`` defaults to
the eight evaluation splits; ``padt eval`` scores each one (``meta["split"]``) and averages them.

Ground truth: the item's ``solution`` box. The reference instead scores every item against its own
processed split file (``PaDT-MLLM/RefCOCO/<split>.json``, one record per line, keyed by image id and
sentence), and only those files have masks: ``ground_truth`` names their folder, and each item then
takes the box and mask of the record with its key. RES needs it. Items whose key is in no record are
skipped and counted (``no_ground_truth``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from padt_core.data.reader import DatasetReader, ImageCheck, read_json
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.data.templates import rec_answer, rec_prompt
from padt_core.plugins import PluginConfig

__all__ = ["EVAL_SPLITS", "VlmR1Dataset", "VlmR1DatasetConfig", "image_id_of", "split_file_name"]

#: The eight splits of the paper's RefCOCO tables, in its column order.
EVAL_SPLITS: tuple[str, ...] = (
    "refcoco_val",
    "refcoco_testA",
    "refcoco_testB",
    "refcoco+_val",
    "refcoco+_testA",
    "refcoco+_testB",
    "refcocog_val",
    "refcocog_test",
)


class VlmR1DatasetConfig(PluginConfig):
    """Recipe / ``--data`` section ``{name: vlm_r1, ...}``."""

    name: Literal["vlm_r1"] = "vlm_r1"
    root: str = Field(description="folder of the split files (rec_jsons_processed)")
    image_dir: str = Field(description="folder the items' `image` paths are relative to")
    splits: list[str] = Field(
        default_factory=lambda: list(EVAL_SPLITS),
        min_length=1,
        description="split names (refcoco+_val or refcocop_val); default: the eight evaluation splits",
    )
    task: Literal["rec", "res"] = "rec"
    ground_truth: str | None = Field(
        None, description="folder of the reference's processed split files (<split>.json) to take box and mask from"
    )
    check_images: ImageCheck = Field("header", description="none | header (size, format) | decode (pixels)")

    @model_validator(mode="after")
    def _res_needs_masks(self) -> VlmR1DatasetConfig:
        if self.task == "res" and self.ground_truth is None:
            raise ValueError(
                "task res needs ground_truth: VLM-R1's split files carry boxes only; the masks come from the "
                "reference's processed split files (PaDT-MLLM/RefCOCO <split>.json)"
            )
        return self


def split_file_name(split: str) -> str:
    """The VLM-R1 file of a split (``refcoco+`` is spelled ``refcocop`` there).

    Example:
        >>> split_file_name("refcoco+_testA")
        'refcocop_testA.json'
    """
    return split.replace("refcoco+", "refcocop") + ".json"


def _canonical(split: str) -> str:
    """The split as the paper names it (``refcocop_val`` → ``refcoco+_val``)."""
    return re.sub(r"^refcocop(?=_)", "refcoco+", split)


def image_id_of(image: str) -> int:
    """The COCO image id in a file name, read as the reference does (last ``_`` field, before the dot).

    Example:
        >>> image_id_of("train2014/COCO_train2014_000000380440.jpg")
        380440
    """
    return int(Path(image).name.split("_")[-1].split(".")[0])


def _records(path: Path) -> list[Any]:
    """A json list, or one json object per line (the reference's processed ``.json`` files are jsonl)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return read_json(path, "processed split file")
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_no}: not a json object ({err.msg}, column {err.colno})") from None
    return records


def _pixel_box(solution: Any) -> tuple[float, float, float, float] | None:
    try:
        box = tuple(float(v) for v in solution)
    except (TypeError, ValueError):
        return None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box  # type: ignore[return-value]


class VlmR1Dataset(DatasetReader):
    """One REC/RES sample per item of each VLM-R1 split file."""

    name: ClassVar[str] = "vlm_r1"
    tasks: ClassVar[tuple[str, ...]] = ("rec", "res")
    Config: ClassVar[type[PluginConfig]] = VlmR1DatasetConfig
    config: VlmR1DatasetConfig

    def _source(self) -> str:
        return f"{self.config.root} splits {', '.join(self.config.splits)}"

    def _read(self) -> list[Sample]:
        samples: list[Sample] = []
        for split in self.config.splits:
            samples += self._read_split(_canonical(split))
        return samples

    def _ground_truth(self, split: str) -> dict[tuple[int, str], dict] | None:
        """``(image id, sentence) → object`` of the reference's processed split file (last one wins)."""
        if self.config.ground_truth is None:
            return None
        path = Path(self.config.ground_truth) / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"vlm_r1: processed split file {path} does not exist (ground_truth folder)")
        truth = {}
        for k, record in enumerate(_records(path)):
            try:
                obj = record["objects"][0]
                truth[(int(record["id"]), str(obj["label"]))] = obj
            except (KeyError, IndexError, TypeError, ValueError) as err:
                raise ValueError(f"{path} record {k}: no id / objects[0].label ({type(err).__name__}: {err})") from None
        return truth

    def _read_split(self, split: str) -> list[Sample]:
        cfg = self.config
        path = Path(cfg.root) / split_file_name(split)
        if not path.is_file():
            raise FileNotFoundError(
                f"vlm_r1: split file {path} does not exist (expected {split_file_name(split)} in {cfg.root}; "
                f"evaluation splits: {', '.join(EVAL_SPLITS)})"
            )
        items = read_json(path, "VLM-R1 split file")
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a json list of items, got {type(items).__name__}")
        truth = self._ground_truth(split)
        samples = []
        for index, item in enumerate(items):
            where = f"{path} item {index}"
            sample = self._sample(item, index, split, where, truth, str(path))
            if sample is not None:
                samples.append(sample)
        return samples

    def _sample(self, item: Any, index: int, split: str, where: str, truth: dict | None, source: str) -> Sample | None:
        if not isinstance(item, dict):
            self.skip("bad_record", where, f"not a json object: {item!r:.60}")
            return None
        sentence = str(item.get("normal_caption") or "").strip()
        if not sentence:
            self.skip("empty_sentence", where, "no `normal_caption` text")
            return None
        try:
            image_id = image_id_of(str(item["image"]))
        except (KeyError, ValueError):
            self.skip("bad_image", where, f"`image` {item.get('image')!r} names no COCO image id")
            return None
        image = Path(self.config.image_dir) / str(item["image"])
        expected = (item["height"], item["width"]) if "height" in item and "width" in item else None
        size = self.check_image(image, where, expected)
        if size is None:
            if expected is None and self.config.check_images == "none":
                self.skip("no_size", where, "no height/width in the item and check_images: none")
            return None
        if truth is not None:
            gt = truth.get((image_id, sentence))
            if gt is None:
                self.skip("no_ground_truth", where, f"no processed record of image {image_id} with {sentence!r}")
                return None
            obj = ObjectAnn(label=sentence, box=tuple(float(v) for v in gt["bbox"]), mask=gt.get("rle"))
        else:
            box = _pixel_box(item.get("solution"))
            if box is None:
                self.skip("bad_box", where, f"`solution` {item.get('solution')!r} is no [x1, y1, x2, y2] box")
                return None
            h, w = size
            x1, y1, x2, y2 = box
            obj = ObjectAnn(
                label=sentence, box=(max(x1 / w, 0.0), max(y1 / h, 0.0), min(x2 / w, 1.0), min(y2 / h, 1.0))
            )
        if self.config.task == "res" and obj.mask is None:
            self.skip("no_mask", where, "RES needs a mask and the processed record has none")
            return None
        return Sample(
            id=f"{self.name}/{split}/{index}",
            image=str(image),
            task=self.config.task,
            prompt=rec_prompt(sentence, self.templates),
            answer=rec_answer(sentence, self.templates),
            objects=[obj],
            image_size=size,
            meta={"image_id": image_id, "split": split, "index": index, "source": source},
        )

"""``refcoco``: RefCOCO / RefCOCO+ / RefCOCOg (REFER layout) → REC or RES samples (reference §6.4).

The REFER layout of one dataset folder (``data/refcoco``, ``data/refcocog``, ...)::

    instances.json      COCO images/annotations/categories (the COCO train2014 subset used)
    refs(unc).p         pickled list of refs: ref_id, ann_id, image_id, split, category_id,
                        sentences [{sent, tokens, raw, sent_id}], ...

``split_by`` picks the refs file (``unc`` for RefCOCO/RefCOCO+, ``umd`` for RefCOCOg). One sample
per *sentence*; the object is the ref's annotation (multi-part polygons OR-ed into one mask)::

    Please carefully check the image and detect the object this sentence describes: "man on left".
    The "man on left" refers to <|Obj_0|> in this image.

``task: res`` gives the same text with task ``res`` and requires a mask.

The refs pickle is read with an unpickler that only builds plain containers (lists, dicts,
strings, numbers), so a tampered file cannot run code. Python-2 pickles (the published ones) are
decoded as latin-1, which is exact for their ASCII sentences.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from padt_core.data.reader import DatasetReader, ImageCheck
from padt_core.data.sample import Sample
from padt_core.data.templates import rec_answer, rec_prompt
from padt_core.plugins import PluginConfig

from ._coco import BadRecord, coco_object, load_coco

__all__ = ["RefCocoDataset", "RefCocoDatasetConfig", "load_refs"]


class RefCocoDatasetConfig(PluginConfig):
    """Recipe section ``{name: refcoco, ...}``."""

    name: Literal["refcoco"] = "refcoco"
    root: str = Field(description="REFER dataset folder holding instances.json and refs(<split_by>).p")
    image_dir: str = Field(description="folder of the COCO images (train2014 for RefCOCO*)")
    split: str = Field("train", description="train, val, testA, testB (unc) or train, val, test (umd)")
    split_by: str = Field("unc", description="refs file refs(<split_by>).p: unc, umd, google")
    task: Literal["rec", "res"] = "rec"
    instances: str = Field("instances.json", description="annotation file, relative to root")
    refs: str | None = Field(None, description="refs pickle relative to root; default refs(<split_by>).p")
    check_images: ImageCheck = Field("header", description="none | header (size, format) | decode (pixels)")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles built-in containers only; any class reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refs pickle refers to {module}.{name}; only plain data is allowed")


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """The list of refs of a REFER ``refs(<split_by>).p`` pickle (plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"REFER refs file {path} does not exist")
    with path.open("rb") as f:
        try:
            refs = _PlainUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
            raise ValueError(
                f"REFER refs file {path} is not a readable refs pickle: {err or type(err).__name__}"
            ) from None
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


class RefCocoDataset(DatasetReader):
    """One REC/RES sample per referring sentence of the chosen split."""

    name: ClassVar[str] = "refcoco"
    tasks: ClassVar[tuple[str, ...]] = ("rec", "res")
    Config: ClassVar[type[PluginConfig]] = RefCocoDatasetConfig
    config: RefCocoDatasetConfig

    @property
    def refs_path(self) -> Path:
        return Path(self.config.root) / (self.config.refs or f"refs({self.config.split_by}).p")

    def _source(self) -> str:
        return f"{self.refs_path} split {self.config.split}"

    def _read(self) -> list[Sample]:
        cfg = self.config
        refs_file = self.refs_path
        refs = [r for r in load_refs(refs_file) if r.get("split") == cfg.split]
        coco = load_coco(Path(cfg.root) / cfg.instances)
        image_dir = Path(cfg.image_dir)
        samples: list[Sample] = []
        for ref in refs:
            where = f"{refs_file} ref {ref.get('ref_id')} (ann {ref.get('ann_id')}, image {ref.get('image_id')})"
            ann = coco.anns.get(ref.get("ann_id"))
            img = coco.imgs.get(ref.get("image_id"))
            if ann is None or img is None:
                missing = "annotation" if ann is None else "image"
                self.skip(f"missing_{missing}", where, f"its {missing} is not in {cfg.instances}")
                continue
            if ann.get("image_id") != ref.get("image_id"):
                self.skip("foreign_ann", where, f"annotation belongs to image {ann.get('image_id')}")
                continue
            height, width = int(img["height"]), int(img["width"])
            path = image_dir / img["file_name"]
            size = self.check_image(path, where, (height, width))
            if size is None:
                continue
            try:
                obj = coco_object(ann, height, width, label="")
            except BadRecord as bad:
                self.skip(bad.reason, where, str(bad))
                continue
            if cfg.task == "res" and obj.mask is None:
                self.skip("no_mask", where, "RES needs a mask and the annotation has none")
                continue
            for k, sentence in enumerate(ref.get("sentences") or []):
                text = str(sentence.get("sent", "")).strip() if isinstance(sentence, dict) else ""
                if not text:
                    self.skip("empty_sentence", f"{where} sentence {k}", "no `sent` text")
                    continue
                sent_id = sentence.get("sent_id", k)
                samples.append(
                    Sample(
                        id=f"{self.name}/{cfg.task}/{ref.get('ref_id')}/{sent_id}",
                        image=str(path),
                        task=cfg.task,
                        prompt=rec_prompt(text, self.templates),
                        answer=rec_answer(text, self.templates),
                        objects=[dataclasses.replace(obj, label=text)],
                        image_size=size,
                        meta={
                            "image_id": ref.get("image_id"),
                            "ref_id": ref.get("ref_id"),
                            "sent_id": sent_id,
                            "source": str(refs_file),
                        },
                    )
                )
        return samples

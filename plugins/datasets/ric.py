"""``ric``: referring image captioning from a COCO json whose images carry captions (reference §6.5).

Each image record has ``captions``: strings in which objects are marked inline with
``<box_id: ANN_ID/>``, usually in parentheses after the mention and comma-separated when several::

    a red circle (<box_id: 12/>) to the left of two stars (<box_id: 13/>, <box_id: 14/>).

One sample per caption. Every marker whose annotation belongs to the image (and has a usable mask
or box) becomes ``<|Obj_k|>``; other markers are deleted together with their comma or, when their
group empties, with its parentheses. Captions not ending in ``.`` or ``"`` are skipped, as the
reference does. The prompt is ``Please describe this image.``; object labels are ``""``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from padt_core.data.reader import DatasetReader, ImageCheck
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.data.templates import ric_answer, ric_prompt
from padt_core.plugins import PluginConfig

from ._coco import BadRecord, coco_object, load_coco

__all__ = ["RicDataset", "RicDatasetConfig"]


class RicDatasetConfig(PluginConfig):
    """Recipe section ``{name: ric, ...}``."""

    name: Literal["ric"] = "ric"
    annotations: str = Field(description="COCO-style json whose image records carry `captions`")
    image_dir: str = Field(description="folder the images' file_name is relative to")
    check_images: ImageCheck = Field("header", description="none | header (size, format) | decode (pixels)")


def _caption_text(caption: Any) -> str | None:
    """A caption entry as text: a string, or a dict with ``caption``/``text``."""
    if isinstance(caption, str):
        return caption
    if isinstance(caption, dict):
        value = caption.get("caption", caption.get("text"))
        return value if isinstance(value, str) else None
    return None


class _ImageObjects:
    """The caption-marker resolver of one image: is annotation ``N`` a usable object of this image?

    Objects are built once per annotation and shared by the image's captions; a marker that cannot
    be used is reported (counted under ``dropped_marker``) the first time it is met.
    """

    def __init__(self, reader: DatasetReader, coco: Any, image_id: Any, size: tuple[int, int], where: str):
        self.reader, self.coco, self.image_id, self.size, self.where = reader, coco, image_id, size, where
        self.objects: dict[int, ObjectAnn | None] = {}

    def __call__(self, ann_id: int) -> bool:
        if ann_id not in self.objects:
            self.objects[ann_id] = self._build(ann_id)
        return self.objects[ann_id] is not None

    def _build(self, ann_id: int) -> ObjectAnn | None:
        ann = self.coco.anns.get(ann_id)
        if ann is None or ann.get("image_id") != self.image_id:
            state = "missing" if ann is None else f"on image {ann.get('image_id')}"
            self.reader.skip("dropped_marker", self.where, f"caption marker of annotation {ann_id} ({state}) removed")
            return None
        try:
            return coco_object(ann, *self.size, label="")
        except BadRecord as bad:
            self.reader.skip("dropped_marker", self.where, f"caption marker removed: {bad}")
            return None


class RicDataset(DatasetReader):
    """One RIC sample per caption with ``<|Obj_k|>`` placeholders in place of box markers."""

    name: ClassVar[str] = "ric"
    tasks: ClassVar[tuple[str, ...]] = ("ric",)
    Config: ClassVar[type[PluginConfig]] = RicDatasetConfig
    config: RicDatasetConfig

    def _source(self) -> str:
        return self.config.annotations

    def _read(self) -> list[Sample]:
        cfg = self.config
        coco = load_coco(cfg.annotations)
        image_dir = Path(cfg.image_dir)
        samples: list[Sample] = []
        for image_id, img in coco.imgs.items():
            captions = img.get("captions") or []
            if not captions:
                continue
            where = f"{cfg.annotations} image {image_id} ({img.get('file_name')})"
            height, width = int(img["height"]), int(img["width"])
            path = image_dir / img["file_name"]
            size = self.check_image(path, where, (height, width))
            if size is None:
                continue
            usable = _ImageObjects(self, coco, image_id, (height, width), where)
            for k, caption in enumerate(captions):
                text = _caption_text(caption)
                if text is None or not text.strip().endswith((".", '"')):
                    self.skip("caption_end", f"{where} caption {k}", f"caption does not end in '.' or '\"': {text!r}")
                    continue
                answer, ann_ids = ric_answer(text.strip(), usable, self.templates)
                samples.append(
                    Sample(
                        id=f"{self.name}/{image_id}/{k}",
                        image=str(path),
                        task="ric",
                        prompt=ric_prompt(self.templates),
                        answer=answer,
                        # One object per placeholder (a repeated annotation is copied, not shared).
                        objects=[dataclasses.replace(usable.objects[a]) for a in ann_ids],
                        image_size=size,
                        meta={"image_id": image_id, "caption": k, "source": cfg.annotations},
                    )
                )
        return samples

"""``shapes``: synthetic coloured shapes, generated on first use and read back like real data.

The first time a ``shapes`` section is used, :func:`padt_plugins.datasets.shapes.generate.ensure_shapes` writes
the dataset into ``root`` (COCO instances, RefCOCO-style refs, RIC captions, PNG images; see that
module). Samples then come from the real readers — ``coco`` for ``ovd``, ``refcoco`` for
``rec``/``res``, ``ric`` for ``ric`` — so the synthetic data exercises exactly the code paths of
COCO/RefCOCO training. A ``root`` made with other parameters is an error (or is regenerated with
``regenerate: true``), never silently reused.

Example recipe section (the quick demo)::

    data:
      train:
        - {name: shapes, root: data/shapes, split: train, tasks: [rec], difficulty: easy}
      val:
        - {name: shapes, root: data/shapes, split: val, tasks: [rec], difficulty: easy}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, model_validator

from padt_core.data.reader import DatasetReader, ImageCheck
from padt_core.data.sample import Sample
from padt_core.plugins import PluginConfig

from ..coco import CocoDataset, CocoDatasetConfig
from ..refcoco import RefCocoDataset, RefCocoDatasetConfig
from ..ric import RicDataset, RicDatasetConfig
from .generate import ShapesParams, ensure_shapes

__all__ = ["ShapesDataset", "ShapesDatasetConfig", "ShapesImagesConfig"]


ShapesTask = Literal["rec", "res", "ovd", "ric"]  # the tasks the generator writes


class ShapesImagesConfig(PluginConfig):
    """The generated images' parameters and where they live: what every shapes reader's section holds.

    All generation parameters are recorded in the manifest; a root generated with others is refused
    unless ``regenerate``.
    """

    root: str = Field(description="dataset folder; generated there on first use")
    split: Literal["train", "val"] = "train"
    n_train: int = Field(2000, ge=0, description="images of the train split")
    n_val: int = Field(200, ge=0, description="images of the val split")
    seed: int = Field(0, description="generation seed (also seeds the OVD category shuffling)")
    image_size: int | tuple[int, int] = Field(224, description="side in px, or [height, width]")
    difficulty: Literal["easy", "full"] = Field(
        "full", description="easy: colour + shape only, no same colour+shape distractors (quick demo)"
    )
    min_objects: int = Field(1, ge=1, le=6)
    max_objects: int = Field(6, ge=1, le=6)
    object_scale: float = Field(
        1.0, ge=0.5, le=2.0, description="multiplies every object size (0.5-2; shapes at 224 px are 30-90 px at 1)"
    )
    regenerate: bool = Field(False, description="replace a root generated with other parameters")
    workers: int = Field(1, ge=0, description="processes used to generate (0 = all cores); output is the same")
    check_images: ImageCheck = Field("header", description="none | header (size, format) | decode (pixels)")

    @model_validator(mode="after")
    def _check_params(self) -> ShapesImagesConfig:
        self.params()  # raises ValueError with the offending values
        return self

    def params(self) -> ShapesParams:
        """The generation parameters (what the manifest must match)."""
        return ShapesParams(
            seed=self.seed,
            n_train=self.n_train,
            n_val=self.n_val,
            image_size=self.image_size,
            difficulty=self.difficulty,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            object_scale=self.object_scale,
        )


class ShapesDatasetConfig(ShapesImagesConfig):
    """Recipe section ``{name: shapes, ...}``: one generated image per sample, for the tasks listed."""

    name: Literal["shapes"] = "shapes"
    tasks: list[ShapesTask] = Field(default_factory=lambda: ["rec"], min_length=1, description="rec, res, ovd, ric")

    @model_validator(mode="after")
    def _check(self) -> ShapesDatasetConfig:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a task twice: {self.tasks}")
        return self


class ShapesDataset(DatasetReader):
    """The samples of the configured tasks for one split, in the order of ``tasks``."""

    name: ClassVar[str] = "shapes"
    tasks: ClassVar[tuple[str, ...]] = get_args(ShapesTask)
    Config: ClassVar[type[PluginConfig]] = ShapesDatasetConfig
    config: ShapesDatasetConfig

    def _source(self) -> str:
        return f"{self.config.root} split {self.config.split}"

    def _parts(self) -> list[DatasetReader]:
        """One real reader per task, on the generated files."""
        cfg = self.config
        ensure_shapes(cfg.root, cfg.params(), regenerate=cfg.regenerate, workers=cfg.workers)
        root = Path(cfg.root)
        images = str(root / "images")
        common: dict[str, Any] = {"image_dir": images, "check_images": cfg.check_images}
        parts: list[DatasetReader] = []
        for task in cfg.tasks:
            if task == "ovd":
                config = CocoDatasetConfig(
                    annotations=str(root / "annotations" / f"instances_{cfg.split}.json"),
                    mode="train" if cfg.split == "train" else "val",
                    seed=cfg.seed,
                    **common,
                )
                parts.append(CocoDataset(config, self.templates))
            elif task in ("rec", "res"):
                config = RefCocoDatasetConfig(
                    root=str(root / "refshapes"), split=cfg.split, split_by="unc", task=task, **common
                )
                parts.append(RefCocoDataset(config, self.templates))
            else:
                captions = root / "annotations" / f"captions_{cfg.split}.json"
                config = RicDatasetConfig(annotations=str(captions), **common)
                parts.append(RicDataset(config, self.templates))
        for part in parts:
            part.set_epoch(self.epoch)
        return parts

    def _read(self) -> list[tuple[DatasetReader, int]]:
        self.parts = self._parts()
        records = []
        for part in self.parts:
            records += [(part, i) for i in range(len(part))]
            self.skipped.update(part.skipped)
        return records

    def _make(self, record: tuple[DatasetReader, int], index: int) -> Sample:
        part, i = record
        return part[i]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for part in getattr(self, "parts", []):
            part.set_epoch(epoch)

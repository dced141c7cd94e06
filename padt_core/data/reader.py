"""The base class of dataset plugins: read once, skip bad records loudly, serve samples.

A dataset plugin turns an on-disk format into :class:`~padt_core.data.sample.Sample` objects. All
checks happen while reading (on first use), so training never meets a bad record mid-epoch: a
record that cannot be used (missing or corrupt image, mask of the wrong size, empty mask, dangling
annotation id, ...) is skipped with one :class:`DataWarning` naming the file and record, and counted
in ``skipped[reason]``. A dataset that loses *every* record raises instead, because that is a
configuration error (wrong folder), not a bad record.

Plugins are map-style datasets (``len``, ``[i]``) and may depend on the epoch (``set_epoch``, which
Hugging Face ``Trainer``/accelerate call on a dataset that has it).

Targets beyond a box and a mask go into each object's ``ObjectAnn.extra`` (``{"keypoints": ...}``,
``{"depth": 3.2}``): a reader of a format that has them fills them in ``_read``/``_make``, or a
plugin wraps another reader and adds them (as the example head package under ``examples/`` does); the heads that
list the key in ``target_keys`` learn from them, and nothing in between needs to know the key.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..plugins import PluginConfig, get_plugin
from .image import ImageError, check_image
from .sample import Sample
from .templates import TaskTemplates

__all__ = ["DataWarning", "DatasetReader", "ImageCheck", "build_dataset", "read_json"]

ImageCheck = Literal["none", "header", "decode"]


class DataWarning(UserWarning):
    """A dataset record was skipped. Filter with ``warnings.simplefilter("ignore", DataWarning)``."""


class DatasetReader(ABC):
    """Base of dataset plugins.

    Subclasses set ``name`` and ``Config`` and implement :meth:`_read`, which returns one *record*
    per sample; :meth:`_make` turns a record into a :class:`Sample` (identity by default; a reader
    whose samples vary by epoch, like COCO's shuffled category prompts, renders there).

    Args:
        config: the plugin's validated config (a recipe ``data.train[i]`` section).
        templates: prompt/answer wording (recipe ``data.templates``); the reference's by default.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]]
    #: The tasks this plugin's samples carry: what samples and ``data.task_weights`` may name
    #: (``padt_core/data/tasks.py``); a new task is declared here, by the reader that makes it.
    tasks: ClassVar[tuple[str, ...]] = ()
    #: Warnings shown per skip reason before the rest are only counted (a summary line follows).
    warn_limit: ClassVar[int] = 20

    def __init__(self, config: PluginConfig, templates: TaskTemplates | None = None):
        self.config = config
        self.templates = templates if templates is not None else TaskTemplates()
        self.skipped: Counter[str] = Counter()
        self.epoch = 0
        self._records: list[Any] | None = None
        self._image_probes: dict[str, tuple[tuple[int, int] | None, tuple[str, str] | None]] = {}

    # --- reading ------------------------------------------------------------------------------------
    @abstractmethod
    def _read(self) -> list[Any]:
        """Read the source and return one record per sample (calling :meth:`skip` for bad ones)."""

    def _make(self, record: Any, index: int) -> Sample:
        """The sample of ``record`` for the current epoch."""
        return record

    def _source(self) -> str:
        """What to name in messages when a dataset ends up empty."""
        return repr(self.config)

    @property
    def records(self) -> list[Any]:
        if self._records is None:
            records = self._read()
            total = sum(self.skipped.values())
            if total:
                reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
                warnings.warn(
                    f"{self.name}: skipped {total} record(s) of {self._source()} ({reasons}); "
                    f"kept {len(records)} sample(s)",
                    DataWarning,
                    stacklevel=3,
                )
            if not records and total:
                raise ValueError(
                    f"{self.name}: every record of {self._source()} was skipped ({dict(self.skipped)}); "
                    "check the paths in the dataset section"
                )
            self._records = records
        return self._records

    def skip(self, reason: str, where: str, detail: str) -> None:
        """Count a skipped record under ``reason`` and warn with ``where`` (file + record) and ``detail``."""
        self.skipped[reason] += 1
        if self.skipped[reason] <= self.warn_limit:
            suffix = " (further ones are only counted)" if self.skipped[reason] == self.warn_limit else ""
            warnings.warn(f"{self.name}: skipping {where}: {detail}{suffix}", DataWarning, stacklevel=3)

    def check_image(self, path: Path, where: str, expected: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """``(height, width)`` of an image file, or ``None`` (after :meth:`skip`) when it is unusable.

        ``check_images`` in the config picks the depth: ``none`` trusts the annotation (returns
        ``expected``), ``header`` opens the file header (missing/unrecognised files, wrong size),
        ``decode`` also decodes the pixels (truncated files). The probe is cached per path, since many
        samples share an image; every record of a bad image is still skipped and counted.
        """
        mode: ImageCheck = getattr(self.config, "check_images", "header")
        key = str(path)
        if key not in self._image_probes:
            self._image_probes[key] = _probe(path, mode)
        size, failure = self._image_probes[key]
        if failure is not None:
            self.skip(failure[0], where, failure[1])
            return None
        if size is None:  # not probed: trust the annotation
            return None if expected is None else (int(expected[0]), int(expected[1]))
        if expected is not None and size != (int(expected[0]), int(expected[1])):
            self.skip(
                "image_size",
                where,
                f"{path} is {size[0]}x{size[1]} (h x w) but its annotation says {expected[0]}x{expected[1]}",
            )
            return None
        return size

    # --- epochs -------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``[i]`` returns (only epoch-dependent readers change)."""
        self.epoch = int(epoch)

    # --- sequence protocol --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        records = self.records
        if not -len(records) <= index < len(records):
            raise IndexError(f"{self.name}: index {index} out of range for {len(records)} samples")
        index %= len(records)
        return self._make(records[index], index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def samples(self) -> list[Sample]:
        """All samples of the current epoch."""
        return list(self)


def _probe(path: Path, mode: ImageCheck) -> tuple[tuple[int, int] | None, tuple[str, str] | None]:
    """``((h, w) or None, (reason, detail) or None)`` for one image file, checked by the one image loader."""
    if mode == "none":
        return None, None
    try:
        return check_image(path, decode=mode == "decode"), None
    except ImageError as err:  # missing, a directory, unreadable, truncated, too large: err.reason says which
        return None, (err.reason, str(err))


def read_json(path: str | Path, what: str = "json file") -> Any:
    """The parsed content of a JSON file; a missing, undecodable or malformed file is one error naming
    the file and, for bad JSON, the line and column.

    Args:
        path: the file.
        what: what the file is, for the messages (``"COCO annotation file"``).

    Example:
        >>> read_json("annotations/instances_val.json", "COCO annotation file")["images"][0]["file_name"]
        '000001.png'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {err.start}): is it the right file?") from None


def build_dataset(config: PluginConfig, templates: TaskTemplates | None = None) -> DatasetReader:
    """Instantiate the dataset plugin named by a validated recipe section."""
    return get_plugin("datasets", config.name)(config, templates=templates)

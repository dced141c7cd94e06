"""Training checkpoints that are complete or invisible: publish, find the newest complete one, rotate.

The Trainer writes ``checkpoint-<step>`` file by file (weights, optimizer, scheduler, RNG states,
``trainer_state.json``); a run killed midway used to leave a half-written directory that ``--resume``
then chose and failed on. ``PaDTTrainer`` now writes each checkpoint into a hidden staging directory
(``.checkpoint-<step>.partial``) and hands it to :func:`publish_checkpoint`, which adds a manifest
(``padt_checkpoint.json``: every file and its size), ``fsync``-s the tree and renames it into place.

:func:`newest_complete` picks what ``--resume`` continues: the newest checkpoint whose manifest
matches its files. Checkpoints without a manifest (written by an older padt) count as complete when
the Trainer's last file (``trainer_state.json``), the weights and the recipe are there and non-empty.
Everything passed over is returned with the reason, for the resume message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_write_text, fsync_dir, fsync_tree, publish_directory

__all__ = [
    "MANIFEST",
    "checkpoint_dirs",
    "delete_checkpoint",
    "incomplete_reason",
    "newest_complete",
    "publish_checkpoint",
    "remove_staging",
    "rotate",
    "staging_dir",
]

MANIFEST = "padt_checkpoint.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_STAGING = re.compile(r"\.checkpoint-(\d+)\.partial")
_DELETING = re.compile(r"\.checkpoint-(\d+)\.deleted")
# What a manifest-less (older padt) checkpoint needs: the Trainer writes trainer_state.json last.
_LEGACY_REQUIRED = ("trainer_state.json", "model.safetensors", "recipe.yaml")


def _step(path: Path) -> int:
    return int(path.name.split("-")[-1].split(".")[0])


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-<step>`` directories of a run (complete or not), by step."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=_step)


def staging_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before it is published (hidden: no ``checkpoint-*`` glob sees it)."""
    return Path(run_dir) / f".checkpoint-{step}.partial"


def _manifest(directory: Path) -> dict[str, int]:
    files = {}
    for parent, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(parent) / name
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
    return dict(sorted(files.items()))


def incomplete_reason(directory: str | os.PathLike) -> str | None:
    """Why ``directory`` is not a complete checkpoint, or ``None`` when it is."""
    directory = Path(directory)
    marker = directory / MANIFEST
    if marker.is_file():
        try:
            files = json.loads(marker.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"its {MANIFEST} is unreadable"
        for rel, size in files.items():
            path = directory / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != size:
                return f"{rel} has {path.stat().st_size} bytes, {size} when it was saved"
        return None
    absent = [n for n in _LEGACY_REQUIRED if not (directory / n).is_file() or (directory / n).stat().st_size == 0]
    if absent:
        return f"no {MANIFEST} and {', '.join(absent)} missing or empty: its save was interrupted"
    return None


def newest_complete(run_dir: str | os.PathLike) -> tuple[Path | None, dict[str, str]]:
    """The newest complete checkpoint of ``run_dir`` (or ``None``) and ``{name: reason}`` of the newer ones skipped.

    Staging directories of interrupted saves are listed among the skipped (and are not resumable).

    Example:
        >>> newest_complete("runs/tiny")  # doctest: +SKIP
        (PosixPath('runs/tiny/checkpoint-5'), {'checkpoint-10': 'optimizer.pt is missing'})
    """
    root = Path(run_dir)
    skipped: dict[str, str] = {}
    if root.is_dir():
        for partial in sorted((p for p in root.iterdir() if _STAGING.fullmatch(p.name)), key=_step):
            skipped[partial.name] = "a save interrupted before it completed"
    for directory in reversed(checkpoint_dirs(root)):
        reason = incomplete_reason(directory)
        if reason is None:
            newer = {k: v for k, v in skipped.items() if _step(root / k) > _step(directory)}
            return directory, newer
        skipped[directory.name] = reason
    return None, skipped


def publish_checkpoint(staged: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Add the manifest to the finished checkpoint ``staged``, ``fsync`` it and rename it to ``target``.

    An existing ``target`` (an incomplete one from an older padt, or the same step saved again) is
    replaced in one swap.
    """
    staged, target = Path(staged), Path(target)
    atomic_write_text(staged / MANIFEST, json.dumps({"format": 1, "files": _manifest(staged)}, indent=1) + "\n")
    fsync_tree(staged)
    return publish_directory(staged, target)


def delete_checkpoint(directory: str | os.PathLike) -> None:
    """Delete a checkpoint so that no half-deleted one is ever seen: renamed out of sight first, then removed."""
    directory = Path(directory)
    hidden = directory.with_name(f".{directory.name}.deleted")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(directory, hidden)
    fsync_dir(directory.parent)
    shutil.rmtree(hidden, ignore_errors=True)


def remove_staging(run_dir: str | os.PathLike) -> None:
    """Delete what interrupted saves and deletions left in ``run_dir`` (call with no save in progress)."""
    root = Path(run_dir)
    if root.is_dir():
        for partial in root.iterdir():
            if _STAGING.fullmatch(partial.name) or _DELETING.fullmatch(partial.name):
                shutil.rmtree(partial, ignore_errors=True)


def rotate(run_dir: str | os.PathLike, save_total_limit: int | None, keep: Iterable[str | os.PathLike] = ()) -> None:
    """Keep at most ``save_total_limit`` complete checkpoints; never delete the newest complete one.

    Incomplete checkpoints older than the newest complete one can never be resumed and go too; ``keep``
    (e.g. the best checkpoint) is never deleted.
    """
    root = Path(run_dir)
    newest, _ = newest_complete(root)
    if newest is None:
        return
    protected = {newest.resolve(), *(Path(k).resolve() for k in keep)}
    complete = []
    for directory in checkpoint_dirs(root):
        if directory.resolve() in protected or incomplete_reason(directory) is None:
            complete.append(directory)
        elif _step(directory) < _step(newest):
            delete_checkpoint(directory)
    if save_total_limit is None or save_total_limit <= 0:
        return
    excess = len(complete) - max(save_total_limit, len(protected & {c.resolve() for c in complete}))
    for directory in complete:
        if excess <= 0:
            break
        if directory.resolve() not in protected:
            delete_checkpoint(directory)
            excess -= 1
    fsync_dir(root)

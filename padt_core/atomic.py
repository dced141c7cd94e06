"""Nothing half-written: files and directories appear complete or not at all; one writer per directory.

Every artefact padt writes (saved models, converted models, checkpoints, reports, predictions) goes
through these helpers. A file is written to a temporary name in the same directory, flushed to disk
(``fsync``) and renamed over the target: a reader (or a run killed mid-write) sees the old file or
the new one, never a mix. A directory is built in a hidden sibling (``.NAME.partial-PID-…``) and then
swapped in; the old directory stays intact until the new one is complete. Leftover partial
directories of dead processes are removed the next time the same target is written.

:class:`DirectoryLock` keeps a second process from writing into a directory another process is
writing (``padt train`` into one output dir). It is an ``flock`` on a lock file holding the owner's
PID: the kernel releases it when the owner dies, so a killed run never leaves the directory stuck.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DirectoryLock",
    "DirectoryLockedError",
    "atomic_directory",
    "atomic_file",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "fsync_tree",
    "publish_directory",
]

_PARTIAL = ".partial-"  # marks a directory being built: `.NAME.partial-PID-RANDOM`


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that takes a file name; renamed to ``path`` on success.

    Args:
        path: the file to write; its parent is created.

    Example:
        >>> with atomic_path("out/model.safetensors") as tmp:  # doctest: +SKIP
        ...     safetensors.torch.save_file(tensors, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed it without fsync
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name only
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """An open file whose content replaces ``path`` only when the block ends without an error.

    Args:
        path: the file to write.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: text encoding (ignored for ``"wb"``).

    Example:
        >>> with atomic_file("report.json") as f:  # doctest: +SKIP
        ...     json.dump(report, f)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
        f.flush()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``.

    Example:
        >>> atomic_write_text("out/recipe.yaml", "name: x\\n")  # doctest: +SKIP
    """
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------
# Directories
# ---------------------------------------------------------------------------------------------------


def fsync_tree(directory: str | os.PathLike) -> None:
    """``fsync`` every file and directory under ``directory`` (before it is renamed into place)."""
    root = Path(directory)
    for parent, _dirs, files in os.walk(root):
        for name in files:
            path = Path(parent) / name
            if path.is_symlink():
                continue
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(parent))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded into this process
    except OSError:
        return False
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_partials(target: Path) -> None:
    """Remove ``.NAME.partial-PID-*`` siblings of ``target`` left by processes that died while writing."""
    prefix = f".{target.name}{_PARTIAL}"
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def publish_directory(staged: str | os.PathLike, target: str | os.PathLike, marker: str | None = None) -> Path:
    """Move the complete directory ``staged`` to ``target``, replacing what is there without a broken moment.

    * ``target`` absent: one rename.
    * no ``marker``, or ``target`` holds only names that ``staged`` also has (an older copy of the same
      artefact): the two are swapped in one step (or, where the OS cannot swap, the old one is renamed
      aside first), then the old one is deleted.
    * ``target`` holds other entries too (e.g. a training run directory with checkpoints, where the
      final model is saved beside them): each entry of ``staged`` replaces its namesake in place. The
      ``marker`` file (what marks the artefact complete, e.g. ``padt.json``) is removed first and
      moved in last, so a reader sees either the whole new artefact or none.

    Args:
        staged: a complete directory on the same file system (a sibling of ``target``).
        target: where it should end up.
        marker: the file whose presence says "complete"; without one, ``target`` is always replaced whole.
    """
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.replace(staged, target)
        fsync_dir(target.parent)
        return target
    ours = {p.name for p in staged.iterdir()}
    if marker is None or {p.name for p in target.iterdir()} <= ours:
        if _exchange(staged, target):
            shutil.rmtree(staged)  # now holds the old content
        else:
            aside = target.with_name(f".{target.name}{_PARTIAL}{os.getpid()}-old")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
            os.replace(staged, target)
            shutil.rmtree(aside, ignore_errors=True)
        fsync_dir(target.parent)
        return target
    (target / marker).unlink(missing_ok=True)
    fsync_dir(target)
    for entry in sorted(staged.iterdir(), key=lambda p: p.name == marker):
        dest = target / entry.name
        if entry.is_dir() and not entry.is_symlink() and dest.is_dir():
            if not _exchange(entry, dest):
                aside = staged / f".{entry.name}.old"
                os.replace(dest, aside)
                os.replace(entry, dest)
        else:
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
    fsync_dir(target)
    shutil.rmtree(staged, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """A fresh hidden directory to fill; on success it is ``fsync``-ed and published as ``target``.

    On an error (or a kill) ``target`` keeps its old content and the partial directory is removed
    (after a kill: by the next write to the same target).

    Args:
        target: the directory to produce.
        marker: see :func:`publish_directory`.

    Example:
        >>> with atomic_directory("runs/x/model", marker="padt.json") as tmp:  # doctest: +SKIP
        ...     (tmp / "padt.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}{_PARTIAL}{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp's 0700 is for the temporary name only
        yield staged
        fsync_tree(staged)
        publish_directory(staged, target, marker=marker)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# One writer per directory
# ---------------------------------------------------------------------------------------------------


class DirectoryLockedError(FileExistsError):
    """Another live process holds the directory's lock; the message names it and its PID."""


class DirectoryLock:
    """An exclusive lock on ``directory`` for the lifetime of a ``with`` block.

    The lock file (``.padt.lock``) records the owner's PID and host. The lock itself is an ``flock``
    that the kernel drops when the owner exits or is killed, so a dead owner's lock file is simply
    taken over; where ``flock`` is unavailable, the recorded PID is checked instead.

    Args:
        directory: the directory to guard (created if missing).
        purpose: what the owner does, for the error message (e.g. ``"padt train"``).

    Example:
        >>> with DirectoryLock("runs/x", "padt train"):  # doctest: +SKIP
        ...     train()
    """

    NAME = ".padt.lock"

    def __init__(self, directory: str | os.PathLike, purpose: str = "padt") -> None:
        self.directory = Path(directory)
        self.purpose = purpose
        self.path = self.directory / self.NAME
        self._fd: int | None = None

    def _owner(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def _refuse(self) -> DirectoryLockedError:
        return DirectoryLockedError(
            f"{self.directory} is in use by another {self.purpose} ({self._owner()}); wait for it to finish, "
            f"stop it, or choose another output directory"
        )

    def acquire(self) -> DirectoryLock:
        """Take the lock; ``DirectoryLockedError`` if a live process holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not self._lock(fd):
                os.close(fd)
                raise self._refuse()
            # The previous owner unlinks the file on release: a lock taken on that unlinked file is no lock.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _lock(self, fd: int) -> bool:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): trust the recorded PID
            owner = self._owner().split()
            pid = int(owner[1]) if len(owner) >= 2 and owner[1].isdigit() else None
            return pid is None or pid == os.getpid() or not _pid_alive(pid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        """Give the lock up (the lock file goes too)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: a waiting process then creates a fresh file
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

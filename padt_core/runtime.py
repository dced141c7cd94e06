"""Process-wide CPU runtime settings: keep large tensor buffers on glibc's heap.

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap``
and returns it to the kernel on free. PyTorch on CPU allocates its large temporaries through ``malloc``,
so a decoder forward over many objects (tensors of 50-100 MB: attention scores of every object's
memory rows) pays for page faults and the kernel zeroing every page, on every call. Raising the mmap
and trim thresholds keeps freed buffers in the heap for the next op: the 100-object decoder forward at
the reference widths went from 16.7 to 12.0 s on the development machine (``docs/performance.md``);
small-tensor work (one object at a time, the tiny models) gains a few percent.

The price is resident memory: the process keeps up to ``threshold`` bytes of freed heap instead of
returning it. ``padt`` commands apply this at start-up (set ``PADT_MALLOC_TUNING=0`` to opt out);
library users call :func:`tune_cpu_allocator` themselves. Not glibc (macOS, musl, Windows): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

__all__ = ["ENV_VAR", "allocator_settings", "release_free_memory", "tune_cpu_allocator"]

ENV_VAR = "PADT_MALLOC_TUNING"
DEFAULT_THRESHOLD = 1 << 30  # bytes: allocations below stay on the heap; up to this much freed heap is kept

# mallopt parameter numbers (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: dict[str, Any] | None = None


@functools.cache  # find_library searches the system on every call
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def tune_cpu_allocator(threshold: int = DEFAULT_THRESHOLD, *, respect_env: bool = True) -> dict[str, Any] | None:
    """Set glibc's mmap and trim thresholds to ``threshold`` bytes for this process; idempotent.

    Returns the settings applied (also later from :func:`allocator_settings`), or ``None`` when nothing
    was changed: not glibc, or ``respect_env`` and the environment variable ``PADT_MALLOC_TUNING`` is ``0``.
    """
    global _applied
    if threshold < 1:
        raise ValueError(f"threshold must be a positive number of bytes, got {threshold}")
    if respect_env and os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _applied is not None and _applied["mmap_threshold"] == threshold:
        return _applied
    libc = _glibc()
    if libc is None:
        return None
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    if not ok:
        return None
    _applied = {
        "library": f"glibc {libc.gnu_get_libc_version().decode()}",
        "mmap_threshold": threshold,
        "trim_threshold": threshold,
    }
    return _applied


def allocator_settings() -> dict[str, Any] | None:
    """What :func:`tune_cpu_allocator` applied in this process (``None``: allocator defaults)."""
    return _applied


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``), e.g. before measuring peak RSS."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

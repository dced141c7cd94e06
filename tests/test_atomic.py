"""Atomic writes and the one-writer lock (``padt_core/atomic.py``), and ``padt train``'s use of the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from padt_core import atomic
from padt_core.atomic import (
    DirectoryLock,
    DirectoryLockedError,
    atomic_directory,
    atomic_file,
    atomic_write_text,
)
from padt_core.cli import main


def test_a_failed_file_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary left
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_a_directory_is_replaced_whole_and_the_old_one_kept_until_then(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "stale").write_text("only in the old one")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["a", "stale"] and (target / "a").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("3")
    assert os.listdir(target) == ["a"] and (target / "a").read_text() == "3"
    assert os.listdir(tmp_path) == ["model"]


def test_a_directory_with_other_entries_keeps_them_and_its_marker_goes_in_last(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "padt.json").write_text("old")
    with atomic_directory(run, marker="padt.json") as tmp:
        (tmp / "padt.json").write_text("new")
        (tmp / "backbone").mkdir()
        (tmp / "backbone" / "config.json").write_text("{}")
    assert sorted(os.listdir(run)) == ["backbone", "checkpoint-1", "padt.json"]
    assert (run / "padt.json").read_text() == "new"


def test_partial_directories_of_dead_writers_are_cleared(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".model.partial-{int(dead.stdout)}-abc"
    leftover.mkdir()
    mine = tmp_path / f".model.partial-{os.getpid()}-xyz"  # a live writer's: kept
    mine.mkdir()
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "a").write_text("1")
    assert sorted(os.listdir(tmp_path)) == [mine.name, "model"]


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from padt_core.atomic import DirectoryLock
    DirectoryLock(sys.argv[1], "padt train").acquire()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLockedError, match=rf"{run} is in use by another padt train \(PID {holder.pid} "):
            DirectoryLock(run, "padt train").acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert f"PID {holder.pid}" in (run / DirectoryLock.NAME).read_text()  # the dead owner's file is still there
    with DirectoryLock(run, "padt train") as lock:
        assert f"PID {os.getpid()}" in lock.path.read_text()
    assert not (run / DirectoryLock.NAME).exists()


def test_cli_train_into_a_directory_in_use_is_one_error_line(tmp_path, capsys):
    run = tmp_path / "run"
    with DirectoryLock(run, "padt train"):  # another open file: flock refuses it even in this process
        argv = ["train", "tiny_qwen_shapes", "train.max_steps=1", "--output-dir", str(run)]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"padt: error: {run} is in use by another padt train (PID {os.getpid()} on {os.uname().nodename}); "
        "wait for it to finish, stop it, or choose another output directory"
    ]
    assert os.listdir(run) == []  # refused before anything was written (the lock file went with its holder)

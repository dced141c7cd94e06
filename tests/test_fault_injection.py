"""Fault injection: a process killed (SIGKILL, its own PID) at any write of a save loses nothing.

Every write padt does is an *event* here: opening a file for writing (before; after, when it is
still empty), ``torch.save`` and safetensors' ``save_file`` (before; with the file created empty;
after), ``os.replace`` / ``os.rename``, the directory swap and ``shutil.rmtree``. A forked child
(its own PID; forking skips a fresh interpreter's imports) runs a training run, ``save_pretrained``
or ``padt convert`` and kills itself at the event a seed picks. Then:

* training: ``--resume`` completes and ends equal to the uninterrupted run (losses per step and every
  parameter to 1e-6), whether the kill hit checkpoint-2's files, its publication or the rotation
  that deletes checkpoint-1 (``save_total_limit=1``: the newest complete checkpoint must survive);
* ``save_pretrained`` / ``padt convert`` over an existing model: the directory holds the old model
  or the new one, complete (it loads), never a mix; a fresh target is complete or absent.
"""

from __future__ import annotations

import builtins
import io
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file
from test_convert import write_released
from test_train import RECIPE, losses_by_step, tiny

import padt_core
import padt_core.atomic as atomic
from padt_core.cli import main
from padt_core.model import PaDTModel
from padt_core.train.checkpoints import MANIFEST
from padt_core.train.run import train
from padt_core.train.trainer import PaDTTrainer

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child"),
]

SEEDS = (0, 1, 2, 3)
KILL_STEP = 2  # checkpoints at steps 1, 2, 3; the kill hits the save of checkpoint-2


def _kill_point(seed: int, events: int, seeds: int = len(SEEDS)) -> int:
    """A random event in the seed's share of the save: the seeds together cover its start, middle and end."""
    low, high = events * seed // seeds + 1, max(events * (seed + 1) // seeds, events * seed // seeds + 1)
    return random.Random(seed).randint(low, high)


def _name(value: Any) -> str:
    return Path(str(value)).name


def _install(setattr_: Callable[[Any, str, Any], None], armed: Callable[[], bool], kill_at: int | None) -> list[str]:
    """Patch every write to count as an event while ``armed()``; SIGKILL this process at event ``kill_at``."""
    events: list[str] = []
    real_open = builtins.open

    def hit(event: str) -> None:
        if armed():
            events.append(event)
            if kill_at is not None and len(events) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def open_(file, mode="r", *args, **kwargs):
        writing = any(c in mode for c in "wax+")
        if writing:
            hit(f"open {_name(file)}")
        handle = real_open(file, mode, *args, **kwargs)
        if writing:
            hit(f"opened {_name(file)} (empty)")
        return handle

    def file_writer(real: Callable, label: str, path_arg: int) -> Callable:
        def write(*args, **kwargs):
            path = args[path_arg] if len(args) > path_arg else None
            hit(f"{label} {_name(path)}")
            if isinstance(path, (str, os.PathLike)):
                real_open(path, "wb").close()
                hit(f"{label} {_name(path)} (empty)")
            out = real(*args, **kwargs)
            hit(f"{label} {_name(path)} done")
            return out

        return write

    def step(real: Callable, label: str) -> Callable:
        def run(*args, **kwargs):
            hit(f"{label} {_name(args[0])}")
            out = real(*args, **kwargs)
            hit(f"{label} {_name(args[0])} done")
            return out

        return run

    setattr_(builtins, "open", open_)
    setattr_(io, "open", open_)
    setattr_(torch, "save", file_writer(torch.save, "torch.save", 1))
    setattr_(safetensors.torch, "save_file", file_writer(safetensors.torch.save_file, "save_file", 1))
    for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree"), (atomic, "_exchange")):
        setattr_(module, name, step(getattr(module, name), name))
    return events


def _killed_child(kill_at: int, armed_when: Callable[[], bool], body: Callable[[], Any]) -> None:
    """Fork; the child patches the writes, runs ``body`` and is killed at event ``kill_at``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            _install(setattr, armed_when, kill_at)
            body()
            code = 4  # finished: the kill point was past the last event
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child status {status}"


# --- training: kill during a checkpoint save, then resume --------------------------------------------------


@pytest.fixture(scope="module")
def run_settings(tmp_path_factory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("shapes")
    return tiny(data, ["rec", "res"], 4, max_steps=3, save_steps=1, save_total_limit=1)


@pytest.fixture(scope="module")
def uninterrupted(run_settings, tmp_path_factory) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """The run without a kill, and the write events of its checkpoint-2 save (the kill points)."""
    out = tmp_path_factory.mktemp("full") / "run"
    saving = {"step": None}
    real = PaDTTrainer._save_checkpoint

    def save_checkpoint(self, model, trial):
        saving["step"] = self.state.global_step
        try:
            return real(self, model, trial)
        finally:
            saving["step"] = None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PaDTTrainer, "_save_checkpoint", save_checkpoint)
        events = _install(mp.setattr, lambda: saving["step"] == KILL_STEP, None)
        summary = train(RECIPE, run_settings, output_dir=out)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # save_total_limit=1
    assert any("optimizer.pt" in e for e in events) and any("rmtree" in e for e in events)
    return summary, load_file(out / "model.safetensors"), events


@pytest.mark.parametrize("seed", SEEDS)
def test_resume_after_a_kill_inside_a_checkpoint_save_equals_the_uninterrupted_run(
    seed, run_settings, uninterrupted, tmp_path
):
    full, full_weights, events = uninterrupted
    # seeds 0, 1: among the writes of checkpoint-2's files; 2, 3: its publication and the rotation after it
    published = next(i for i, e in enumerate(events, 1) if e == f"replace checkpoint-{KILL_STEP}")
    rng = random.Random(seed)
    kill_at = rng.randint(1, published - 1) if seed < 2 else rng.randint(published, len(events))
    out = tmp_path / "run"

    def body() -> None:
        real = PaDTTrainer._save_checkpoint

        def save_checkpoint(self, model, trial):
            saving["step"] = self.state.global_step
            try:
                return real(self, model, trial)
            finally:
                saving["step"] = None

        PaDTTrainer._save_checkpoint = save_checkpoint
        train(RECIPE, run_settings, output_dir=out)

    saving = {"step": None}
    _killed_child(kill_at, lambda: saving["step"] == KILL_STEP, body)

    # what the kill left: every visible checkpoint is complete; at least one survived the rotation
    visible = sorted(p.name for p in out.glob("checkpoint-*"))
    assert visible and set(visible) <= {"checkpoint-1", "checkpoint-2"}, (events[kill_at - 1], visible)
    for name in visible:
        assert (out / name / MANIFEST).is_file(), (events[kill_at - 1], name)

    resumed = train(RECIPE, run_settings, output_dir=out, resume=True)  # also takes over the dead child's lock
    assert resumed["global_step"] == 3
    assert resumed["resumed_from"] == str(out / visible[-1])
    expected, got = losses_by_step(full), losses_by_step(resumed)
    for step_ in range(int(visible[-1].split("-")[1]) + 1, 4):
        assert got[step_] == pytest.approx(expected[step_], rel=1e-6, abs=1e-6), (events[kill_at - 1], step_)
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == full_weights.keys()
    for key, value in full_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".checkpoint-")]  # staging cleaned up


def test_a_half_written_checkpoint_of_an_older_padt_is_skipped_and_named(run_settings, uninterrupted, tmp_path):
    """The issue's case: checkpoint-10 left with a 0-byte optimizer.pt and no trainer_state.json."""
    _, full_weights, _ = uninterrupted
    out = tmp_path / "run"
    train(RECIPE, {**run_settings, "train.max_steps": 2, "train.save_total_limit": None}, output_dir=out)
    broken = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", broken)
    for name in ("trainer_state.json", MANIFEST):
        (broken / name).unlink()
    (broken / "optimizer.pt").write_bytes(b"")
    resumed = train(RECIPE, run_settings, output_dir=out, resume=True)
    assert resumed["resumed_from"] == str(out / "checkpoint-2")
    assert "trainer_state.json" in resumed["skipped_checkpoints"]["checkpoint-3"]
    torch.testing.assert_close(load_file(out / "model.safetensors"), full_weights, rtol=0, atol=1e-6)


# --- save_pretrained and padt convert: the old output intact, or the new one complete ------------------------


def _count_events(action: Callable[[], Any]) -> list[str]:
    active = {"on": True}
    with pytest.MonkeyPatch.context() as mp:
        events = _install(mp.setattr, lambda: active["on"], None)
        action()
    return events


def test_a_killed_save_pretrained_leaves_the_old_model_or_the_new_one(tiny_models, tmp_path):
    model = tiny_models("tiny_qwen")
    old_bias = model.projection.norm.bias.detach().clone()
    out = tmp_path / "model"
    model.save_pretrained(out)
    fresh_events = _count_events(lambda: model.save_pretrained(tmp_path / "count"))
    replace_events = _count_events(lambda: model.save_pretrained(tmp_path / "count", overwrite=True))

    def save(target: Path) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model.projection.norm.bias.add_(1.0)  # the new model differs (in the child only)
            model.save_pretrained(target, overwrite=True)

        return run

    for seed in SEEDS:
        kill_at = _kill_point(seed, len(replace_events))
        _killed_child(kill_at, lambda: True, save(out))
        delta = padt_core.load(out).projection.norm.bias - old_bias  # loads: complete, whichever it is
        assert torch.all(delta == 0) or torch.allclose(delta, torch.ones_like(delta)), replace_events[kill_at - 1]

        kill_at = _kill_point(seed, len(fresh_events))
        fresh = tmp_path / f"fresh{seed}"
        _killed_child(kill_at, lambda: True, save(fresh))
        assert not fresh.exists() or padt_core.load(fresh) is not None, fresh_events[kill_at - 1]
    model.save_pretrained(out, overwrite=True)  # the next save of a target clears what dead writers left
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.partial-")]


def test_a_killed_padt_convert_leaves_the_old_output_or_the_new_one(tmp_path):
    src = tmp_path / "PaDT_Tiny"
    write_released(src)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "generation.max_new_tokens=32"]) == 0
    saving = {"on": False}

    def arm_when_saving(setattr_: Callable[[Any, str, Any], None]) -> None:
        """The kill points are the writes of the output, not the conversion before them."""
        real = PaDTModel.save_pretrained

        def save(self, *args, **kwargs):
            saving["on"] = True
            try:
                return real(self, *args, **kwargs)
            finally:
                saving["on"] = False

        setattr_(PaDTModel, "save_pretrained", save)

    def convert_to(target: Path) -> list[str]:
        return ["convert", str(src), str(target), "generation.max_new_tokens=64", "--overwrite"]

    main(convert_to(tmp_path / "count"))
    with pytest.MonkeyPatch.context() as mp:
        arm_when_saving(mp.setattr)
        events = _install(mp.setattr, lambda: saving["on"], None)
        assert main(convert_to(tmp_path / "count")) == 0  # over an existing output, as below

    def body() -> None:
        arm_when_saving(setattr)
        main(convert_to(out))

    for seed in SEEDS[:2]:
        kill_at = _kill_point(seed, len(events), seeds=2)
        _killed_child(kill_at, lambda: saving["on"], body)
        assert padt_core.load(out).recipe.generation.max_new_tokens in (32, 64), events[kill_at - 1]

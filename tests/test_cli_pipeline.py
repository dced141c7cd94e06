"""The command line end to end on a tiny run: ``padt data shapes`` → ``train`` → ``eval`` / ``predict``.

One module-scoped dataset (8 images of 112 px) and one 2-step training run are shared by the tests;
everything runs in-process through :func:`padt_core.cli.main`, except the ``torchrun`` check.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from padt_plugins.datasets.shapes import MANIFEST

import padt_core
from padt_core.cli import main
from padt_core.data.templates import rec_prompt
from padt_core.plugins import get_plugin

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "tiny_qwen_shapes.yaml")
SHAPES = ["--n-train", "6", "--n-val", "2", "--seed", "0", "--image-size", "112"]
TINY_RUN = ["train.max_steps=2", "train.batch_size=2", "train.save_steps=1", "train.logging_steps=1"]


def cli(*argv: str) -> tuple[int, str, str]:
    """``padt ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def data_overrides(root: Path) -> list[str]:
    """Point both data sections of the recipe at the tiny shapes set ``SHAPES`` describes."""
    return [
        f"data.{split}.0.{key}={value}"
        for split in ("train", "val")
        for key, value in (("root", root), ("n_train", 6), ("n_val", 2), ("image_size", 112))
    ]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, dict]:
    """``padt data shapes``: the dataset root and the printed summary."""
    root = tmp_path_factory.mktemp("pipeline") / "shapes"
    code, out, err = cli("data", "shapes", root, *SHAPES, "--workers", "1")
    assert code == 0, err
    return root, json.loads(out)


@pytest.fixture(scope="module")
def trained(shapes) -> tuple[Path, dict]:
    """``padt train`` on the shapes set (2 steps): the run directory and the printed summary."""
    root, _ = shapes
    run_dir = root.parent / "run"
    code, out, err = cli("train", RECIPE, *data_overrides(root), *TINY_RUN, "--output-dir", run_dir)
    assert code == 0, err
    return run_dir, json.loads(out)  # stdout is the JSON summary alone (the Trainer logs to stderr)


# --- padt data shapes -------------------------------------------------------------------------------


def test_data_shapes_writes_the_dataset_and_prints_a_summary(shapes):
    root, summary = shapes
    assert summary["generated"] is True
    assert summary["root"] == str(root)
    assert summary["params"]["image_size"] == [112, 112]
    assert (summary["counts"]["train"]["images"], summary["counts"]["val"]["images"]) == (6, 2)
    assert MANIFEST in summary["files"]
    assert all((root / name).is_file() for name in summary["files"])
    assert len(list((root / "images").glob("*.png"))) == 8


def test_data_shapes_is_idempotent_and_refuses_other_parameters(tmp_path):
    root = tmp_path / "shapes"
    code, out, err = cli("data", "shapes", root, *SHAPES)
    assert code == 0, err
    manifest = (root / MANIFEST).read_text()
    code, again, err = cli("data", "shapes", root, *SHAPES)
    assert code == 0, err
    assert json.loads(again)["generated"] is False
    assert json.loads(again)["counts"] == json.loads(out)["counts"]

    other = [*SHAPES[:4], "--seed", "1", *SHAPES[6:]]
    code, out, err = cli("data", "shapes", root, *other)
    assert (code, out) == (2, "")
    assert "seed=0 (asked 1)" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert (root / MANIFEST).read_text() == manifest

    code, out, err = cli("data", "shapes", root, *other, "--overwrite")
    assert code == 0, err
    assert json.loads(out)["generated"] is True
    assert json.loads((root / MANIFEST).read_text())["params"]["seed"] == 1


def test_data_shapes_never_writes_into_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli("data", "shapes", tmp_path, *SHAPES, "--overwrite")
    assert code == 2
    assert "not a shapes dataset" in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- padt train -------------------------------------------------------------------------------------


def test_train_writes_checkpoints_and_a_loadable_model(trained):
    run_dir, summary = trained
    assert summary["output_dir"] == str(run_dir)
    assert summary["global_step"] == 2
    assert summary["checkpoints"] == ["checkpoint-1", "checkpoint-2"]
    assert "log_history" not in summary
    assert summary["logged_steps"] == 2
    assert {"loss", "loss_token"} <= set(summary["losses"])
    assert (summary["losses"]["loss"]["first_step"], summary["losses"]["loss"]["last_step"]) == (1, 2)
    assert (run_dir / "checkpoint-2" / "trainer_state.json").is_file()
    model = padt_core.load(run_dir)
    assert model.recipe.name == "tiny_qwen_shapes"
    assert model.decoder is not None


def test_train_refuses_an_existing_run(trained, shapes):
    run_dir, _ = trained
    before = sorted(p.name for p in run_dir.iterdir())
    code, out, err = cli("train", RECIPE, *data_overrides(shapes[0]), *TINY_RUN, "--output-dir", run_dir)
    assert (code, out) == (2, "")
    assert err.startswith("padt: error: ") and "--overwrite" in err and "--resume" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_train_resume_continues_the_latest_checkpoint(trained, shapes, tmp_path):
    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    more = [*data_overrides(shapes[0]), *TINY_RUN, "train.max_steps=3"]  # the later max_steps wins
    summary_file = tmp_path / "summary.json"
    code, out, err = cli("train", RECIPE, *more, "--output-dir", run_dir, "--resume", "--summary", summary_file)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["global_step"] == 3
    assert summary["checkpoints"] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    history = json.loads(summary_file.read_text())["log_history"]  # the checkpoint's history continued
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3]


def test_train_overwrite_and_resume_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", RECIPE, "--overwrite", "--resume"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --- padt eval --------------------------------------------------------------------------------------


def _headline(task: str) -> set[str]:
    return set(get_plugin("metrics", task).headline)


def test_eval_writes_a_report_for_the_tasks_asked(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "report.json"
    argv = ["eval", run_dir, "--task", "ovd", "--task", "ric", "--max-samples", "4", "--max-new-tokens", "8"]
    code, stdout, err = cli(*argv, "--out", out)
    assert code == 0, err
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert set(report) == _headline("ovd") | _headline("ric") | {"counts", "eval", "skipped"}
    assert report["skipped"] == {}  # records and images skipped, by reason: none in generated shapes
    assert set(report["counts"]) == {"ovd", "ric"}
    assert report["eval"]["samples"] == {"ovd": 2, "ric": 2}
    assert report["eval"]["generation"] == {"max_new_tokens": 8}
    assert "ovd_map" in stdout and str(out) in stdout

    code, _, err = cli(*argv, "--out", out)  # an existing report is kept
    assert code == 2
    assert str(out) in err and "--overwrite" in err


def test_eval_reads_a_dataset_yaml_and_defaults_to_the_models_val_data(trained, shapes, tmp_path):
    run_dir, _ = trained
    section = {"name": "shapes", "root": str(shapes[0]), "split": "val", "tasks": ["rec", "res"]}
    section.update(n_train=6, n_val=2, image_size=112)
    data = tmp_path / "val.yaml"
    data.write_text(json.dumps(section))  # JSON is YAML
    code, _, err = cli("eval", run_dir, "--data", data, "--max-new-tokens", "4", "--out", tmp_path / "a.json")
    assert code == 0, err
    report = json.loads((tmp_path / "a.json").read_text())
    assert set(report["counts"]) == {"rec", "res"}
    assert set(report) >= _headline("rec") | _headline("res")

    # No --data: the data.val of the recipe saved with the model (rec, res, ovd, ric); --max-samples caps each task.
    argv = ["eval", run_dir, "--max-samples", "2", "--max-new-tokens", "4", "--out", tmp_path / "b.json"]
    code, _, err = cli(*argv, "--predictions", tmp_path / "b.jsonl")
    assert code == 0, err
    samples = json.loads((tmp_path / "b.json").read_text())["eval"]["samples"]
    assert set(samples) == {"rec", "res", "ovd", "ric"} and max(samples.values()) <= 2
    lines = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(lines) == sum(samples.values()) and {r["task"] for r in lines} == set(samples)
    assert all({"id", "task", "image", "prompt", "text", "objects"} <= set(r) for r in lines)
    for obj in (o for r in lines for o in r["objects"]):  # every head's output key, masks as RLE
        assert list(obj)[:5] == ["label", "vrt", "box", "score", "mask"]
        assert obj["mask"] is None or isinstance(obj["mask"]["counts"], str)


# --- padt predict -----------------------------------------------------------------------------------


def test_predict_out_writes_json_and_png_and_refuses_to_overwrite(trained, shapes, tmp_path):
    run_dir, _ = trained
    image = shapes[0] / "images" / "val_000000.png"
    out = tmp_path / "pred"
    argv = ["predict", run_dir, "--image", image, "--task", "rec", "--prompt", "the red square"]
    code, stdout, err = cli(*argv, "--max-new-tokens", "6", "--out", out)
    assert code == 0, err
    assert json.loads(stdout)[0]["json"] == str(out / "val_000000.json")
    record = json.loads((out / "val_000000.json").read_text())
    assert record["prompt"] == rec_prompt("the red square", padt_core.load(run_dir).recipe.data.templates)
    assert (record["width"], record["height"], record["vrt_grid"]) == (112, 112, [4, 4])
    assert {"text", "objects", "skipped", "truncated"} <= set(record)
    assert (out / "val_000000.png").stat().st_size > 0

    code, _, err = cli(*argv, "--out", out)
    assert code == 2
    assert str(out / "val_000000.json") in err


# --- torchrun ---------------------------------------------------------------------------------------


def test_train_runs_under_torchrun_with_two_processes(shapes, tmp_path):
    """``torchrun --nproc_per_node 2 -m padt_core.cli train …``: one summary (rank 0), world size 2."""
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "padt_core.cli", "train", RECIPE, *data_overrides(shapes[0]), *TINY_RUN[:1]]
    command += ["train.batch_size=1", "train.save_steps=2", "--output-dir", str(run_dir)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # exactly one JSON document: only rank 0 prints
    assert summary["global_step"] == 2
    args = torch.load(run_dir / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.world_size == 2
    assert padt_core.load(run_dir).recipe.name == "tiny_qwen_shapes"

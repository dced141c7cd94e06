"""The ``padt`` command line: subcommands, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from helpers import noise_image

from padt_core.cli import COMMANDS, main
from padt_core.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "tiny_qwen.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_recipe(tmp_path: Path, name: str, body: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"extends": "tiny_qwen", **body}))
    return path


# --- plugins ----------------------------------------------------------------------------------------


def test_plugins_json_lists_the_qwen_backbone(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    assert "qwen2_5_vl" in json.loads(out)["backbones"]


def test_plugins_table_names_kind_and_provider(capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    line = next(row for row in out.splitlines() if "qwen2_5_vl" in row)
    assert line.split()[0] == "backbones"


def test_console_entry_point_runs_as_a_module():
    """``python -m padt_core.cli`` (and ``python -m padt_core``) is the ``padt`` script."""
    proc = subprocess.run(
        [sys.executable, "-m", "padt_core.cli", "plugins", "--json"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "qwen2_5_vl" in json.loads(proc.stdout)["backbones"]
    proc = subprocess.run([sys.executable, "-m", "padt_core", "--version"], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout.split()[0]) == (0, "padt")


# --- recipe validate / schema -----------------------------------------------------------------------


def test_validate_tiny_recipe(capsys):
    code, out, err = run(capsys, "recipe", "validate", TINY)
    assert (code, out.strip(), err) == (0, "OK tiny_qwen", "")


def test_validate_print_shows_the_resolved_recipe_with_overrides(capsys):
    code, out, _ = run(capsys, "recipe", "validate", "tiny_qwen", "vrt.rank=8", "--print")
    assert code == 0
    first, _, rest = out.partition("\n")
    assert first == "OK tiny_qwen"
    assert yaml.safe_load(rest)["vrt"]["rank"] == 8


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"vrt": {"rnak": 3}}, "rnak"),
        ({"backbone": {"config": {"text_config": {"hiden_size": 3}}}}, "hiden_size"),
    ],
    ids=["vrt-typo", "nested-backbone-typo"],
)
def test_validate_typo_exits_2_naming_file_and_key(capsys, tmp_path, body, key):
    path = write_recipe(tmp_path, "typo.yaml", body)
    code, out, err = run(capsys, "recipe", "validate", str(path))
    assert code == 2
    assert out == ""
    assert str(path) in err
    assert key in err
    assert err.startswith("padt: error: ")
    assert "Traceback" not in err


def test_validate_missing_file_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "recipe", "validate", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "nope.yaml" in err


def test_bad_override_syntax_exits_2(capsys):
    code, _, err = run(capsys, "recipe", "validate", TINY, "vrt.rank")
    assert code == 2
    assert "key.sub=value" in err


def test_traceback_flag_reraises(tmp_path):
    path = write_recipe(tmp_path, "typo.yaml", {"vrt": {"rnak": 3}})
    with pytest.raises(RecipeError, match="rnak"):
        main(["recipe", "validate", str(path), "--traceback"])
    with pytest.raises(RecipeError, match="rnak"):
        main(["--traceback", "recipe", "validate", str(path)])


def test_schema_is_json_with_backbone(capsys):
    code, out, _ = run(capsys, "recipe", "schema")
    assert code == 0
    schema = json.loads(out)
    assert "backbone" in schema["properties"]


# --- bench decoder ----------------------------------------------------------------------------------


def test_bench_decoder_passes_its_options(capsys, monkeypatch):
    calls: list[dict] = []
    fake = types.ModuleType("padt_bench.decoder")
    fake.bench_decoder = lambda **kwargs: calls.append(kwargs) or {"ok": True}
    monkeypatch.setitem(sys.modules, "padt_bench.decoder", fake)
    code, out, _ = run(capsys, "bench", "decoder", "--dtype", "bfloat16")
    assert code == 0
    assert json.loads(out) == {"ok": True}
    defaults = {"threads": 1, "clock": "auto", "repeats": 3, "memory": "factored", "object_counts": (1, 10, 100)}
    defaults["one_by_one"] = True
    assert calls == [{"device": "cpu", "dtype": "bfloat16", **defaults}]
    args = ("--threads", "2", "--clock", "wall", "--repeats", "1", "--memory", "auto", "--objects", "5", "50")
    code, _, _ = run(capsys, "bench", "decoder", *args, "--no-one-by-one")
    assert code == 0
    chosen = {"threads": 2, "clock": "wall", "repeats": 1, "memory": "auto", "object_counts": (5, 50)}
    chosen["one_by_one"] = False
    assert calls[1] == {"device": "cpu", **chosen}


def test_bench_decoder_missing_module_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "padt_bench.decoder", None)  # import now fails as if absent
    code, _, err = run(capsys, "bench", "decoder")
    assert code == 2
    assert "decoder benchmark is not available" in err


# --- predict / demo ---------------------------------------------------------------------------------


def test_predict_with_a_recipe_prints_json(capsys, tmp_path):
    image = tmp_path / "noise.png"
    noise_image(60, 90).save(image)
    code, out, _ = run(
        capsys, "predict", "tiny_qwen", "--image", str(image), "--prompt", "Find it.", "--max-new-tokens", "3"
    )
    assert code == 0
    [result] = json.loads(out)
    assert result["image"] == str(image)
    assert set(result) >= {"text", "objects", "skipped", "truncated"}


def test_predict_from_a_saved_model_directory(capsys, tmp_path, tiny_model):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    images = []
    for i in range(2):
        images += ["--image", str(tmp_path / f"{i}.png")]
        noise_image(56, 56, seed=i).save(tmp_path / f"{i}.png")
    code, out, _ = run(capsys, "predict", str(model_dir), *images, "--prompt", "Find it.", "--max-new-tokens", "4")
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == images[1::2]
    expected = tiny_model.predict([tmp_path / "0.png", tmp_path / "1.png"], "Find it.", max_new_tokens=4)
    assert [r["text"] for r in results] == [p.text for p in expected]


def test_predict_missing_image_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "predict", "tiny_qwen", "--image", str(tmp_path / "no.png"), "--prompt", "x")
    assert code == 2
    assert "no.png" in err


def test_predict_directory_without_padt_json_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "predict", str(tmp_path), "--image", __file__, "--prompt", "x")
    assert code == 2
    assert "padt.json" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--prompt"),
        (["--task", "rec"], "referring sentence"),
        (["--task", "ovd"], "--labels"),
        (["--task", "ovd", "--labels", " , "], "--labels"),
        (["--task", "ric", "--prompt", "x"], "drop --prompt"),
        (["--prompt", "x", "--labels", "a,b"], "--task ovd"),
    ],
    ids=["nothing", "rec-without-sentence", "ovd-without-labels", "ovd-empty-labels", "ric-with-prompt", "labels"],
)
def test_predict_prompt_flags_are_checked_before_the_model_loads(capsys, monkeypatch, argv, message):
    monkeypatch.setattr("padt_core.build", lambda *a, **k: pytest.fail("the model was built"))
    code, out, err = run(capsys, "predict", "tiny_qwen", "--image", __file__, *argv)
    assert (code, out) == (2, "")
    assert message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--task", "rec", "--prompt", "the red square"], ("rec", "the red square")),
        (["--task", "ovd", "--labels", "circle, red square"], ("ovd", ["circle", "red square"])),
        (["--task", "ric"], ("ric", None)),
        (["--prompt", "Verbatim."], (None, "Verbatim.")),
    ],
    ids=["rec", "ovd", "ric", "verbatim"],
)
def test_predict_task_uses_the_models_templates(capsys, monkeypatch, tmp_path, argv, expected):
    from padt_core.data.templates import ovd_prompt, rec_prompt, ric_prompt
    from padt_core.model import PaDTModel, Prediction

    image = tmp_path / "a.png"
    noise_image(56, 56).save(image)
    prompts: list[str] = []
    monkeypatch.setattr(
        PaDTModel, "predict", lambda self, images, prompt, **kw: prompts.append(prompt) or [Prediction("")]
    )
    code, _, err = run(capsys, "predict", "tiny_qwen", "--image", str(image), *argv)
    assert code == 0, err
    task, arg = expected
    want = {"rec": lambda: rec_prompt(arg), "ovd": lambda: ovd_prompt(arg), "ric": ric_prompt, None: lambda: arg}[
        task
    ]()
    assert prompts == [want]


def _fake_prediction(height: int, width: int):
    """A prediction with one complete object (box, score, mask) — what a trained model returns."""
    import numpy as np
    import torch

    from padt_core.model import PredictedObject, Prediction

    mask = np.zeros((height, width), dtype=bool)
    mask[10:30, 20:50] = True
    # Outputs of heads beyond the familiar three travel by key (a point, an array, a 0-d tensor).
    extra = {"centroid": [35.0, 20.0], "keypoints": np.array([[21.0, 11.0, 2.0]]), "depth": torch.tensor(3.5)}
    obj = PredictedObject(
        label="red square", vrt=[0, 1], box=[20.0, 10.0, 50.0, 30.0], score=0.75, mask=mask, outputs=extra
    )
    return Prediction(text='"red square"<|VRT_0|><|VRT_1|>', objects=[obj]), mask


def test_predict_out_writes_json_with_rle_masks_and_a_drawing(capsys, monkeypatch, tmp_path):
    from PIL import Image

    from padt_core.data.sample import rle_decode
    from padt_core.model import PaDTModel

    image = tmp_path / "scene.png"
    noise_image(60, 90).save(image)
    prediction, mask = _fake_prediction(60, 90)
    monkeypatch.setattr(PaDTModel, "predict", lambda self, images, prompt, **kw: [prediction])
    out = tmp_path / "out"
    argv = ["predict", "tiny_qwen", "--image", str(image), "--prompt", "Find it.", "--out", str(out)]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    [written] = json.loads(stdout)
    assert written == {
        "image": str(image),
        "json": str(out / "scene.json"),
        "png": str(out / "scene.png"),
        "objects": 1,
    }
    record = json.loads((out / "scene.json").read_text())
    assert (record["width"], record["height"], record["prompt"]) == (90, 60, "Find it.")
    assert len(record["vrt_grid"]) == 2
    assert record["text"] == prediction.text
    [obj] = record["objects"]
    assert (obj["label"], obj["vrt"], obj["box"], obj["score"]) == (
        "red square",
        [0, 1],
        [20.0, 10.0, 50.0, 30.0],
        0.75,
    )
    # the familiar keys first, as before, then every other head output by key
    assert list(obj) == ["label", "vrt", "box", "score", "mask", "centroid", "keypoints", "depth"]
    assert (obj["centroid"], obj["keypoints"], obj["depth"]) == ([35.0, 20.0], [[21.0, 11.0, 2.0]], 3.5)
    assert isinstance(obj["mask"]["counts"], str)
    assert obj["mask"]["size"] == [60, 90]
    assert (rle_decode(obj["mask"]) == mask).all()
    with Image.open(out / "scene.png") as drawn:
        assert drawn.size == (90, 60)

    code, _, err = run(capsys, *argv)  # refuses to overwrite, naming the file
    assert code == 2
    assert str(out / "scene.json") in err
    code, _, err = run(capsys, *argv, "--overwrite")
    assert code == 0, err


def test_predict_out_refuses_images_with_the_same_stem(capsys, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        noise_image(56, 56).save(tmp_path / sub / "x.png")
    images = ["--image", str(tmp_path / "a" / "x.png"), "--image", str(tmp_path / "b" / "x.png")]
    code, _, err = run(capsys, "predict", "tiny_qwen", *images, "--prompt", "x", "--out", str(tmp_path / "o"))
    assert code == 2
    assert "x" in err and "same file name" in err


def test_eval_missing_data_file_exits_2(capsys, tmp_path):
    out = tmp_path / "report.json"
    code, _, err = run(capsys, "eval", "tiny_qwen", "--data", str(tmp_path / "nope.yaml"), "--out", str(out))
    assert code == 2
    assert "nope.yaml" in err
    assert not out.exists()


def test_eval_refuses_an_existing_report(capsys, tmp_path):
    out = tmp_path / "report.json"
    out.write_text("{}")
    code, _, err = run(capsys, "eval", "tiny_qwen", "--out", str(out))
    assert code == 2
    assert "--overwrite" in err and str(out) in err
    assert out.read_text() == "{}"


def test_demo_smoke_runs_end_to_end(capsys):
    code, out, _ = run(capsys, "demo", "--smoke", "--max-new-tokens", "4")
    assert code == 0
    assert "completion" in out


def test_demo_calls_run_demo_and_prints_table_and_paths(capsys, monkeypatch, tmp_path):
    import padt_core.demo

    calls: list[tuple] = []

    def fake_run_demo(out_dir, budget="default", overwrite=False, seed=0, overrides=None, recipe_name=None):
        calls.append((Path(out_dir), budget, overwrite, seed, overrides, recipe_name))
        return {"rec_acc50": 0.5, "ovd_map": 0.25, "budget": {"name": budget, "steps": 3}, "counts": {}}

    monkeypatch.setattr(padt_core.demo, "run_demo", fake_run_demo)
    argv = ["demo", "--out", str(tmp_path), "--quick", "--seed", "3", "--overwrite", "train.lr=0.1"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert calls == [(tmp_path, "quick", True, 3, ["train.lr=0.1"], "tiny_shapes_pretrained")]
    assert "rec_acc50" in out and "0.5000" in out
    assert str(tmp_path / "report.json") in out
    assert str(tmp_path / "gallery.png") in out
    code, _, _ = run(capsys, "demo", "--long")
    assert code == 0
    assert calls[-1] == (Path("runs/demo"), "long", False, 0, None, "tiny_shapes_pretrained")
    code, _, _ = run(capsys, "demo", "--recipe", "tiny_qwen_shapes")  # the from-scratch demo
    assert code == 0
    assert calls[-1] == (Path("runs/demo"), "default", False, 0, None, "tiny_qwen_shapes")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--smoke", "--quick"], "--quick"), (["--smoke", "--out", "x"], "--out"), (["--prompt", "x"], "--prompt")],
    ids=["smoke-quick", "smoke-out", "prompt-without-smoke"],
)
def test_demo_rejects_options_of_the_other_mode(capsys, monkeypatch, argv, flag):
    import padt_core.demo

    monkeypatch.setattr(padt_core.demo, "run_demo", lambda *a, **k: pytest.fail("run_demo called"))
    code, _, err = run(capsys, "demo", *argv)
    assert code == 2
    assert flag in err and "--smoke" in err


def test_demo_quick_and_long_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--long"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert f"padt {name}" in capsys.readouterr().out
    for nested in (["data", "shapes"], ["recipe", "validate"], ["bench", "generate"]):
        with pytest.raises(SystemExit) as exc:
            main([*nested, "--help"])
        assert exc.value.code == 0
        assert f"padt {' '.join(nested)}" in capsys.readouterr().out


def test_demo_data_section_reaches_the_recipe(tmp_path):
    from padt_core.demo import demo_data
    from padt_core.recipe import load_recipe

    (easy,) = load_recipe(
        "tiny_shapes_pretrained", [f"data.train=[{demo_data(tmp_path, 'default', 3, 'easy')}]"]
    ).data.train
    assert (easy.n_train, easy.n_val, easy.seed, easy.difficulty, easy.regenerate, easy.workers) == (
        2000,
        100,
        3,
        "easy",
        True,
        0,
    )
    assert easy.root == str(tmp_path / "data" / "shapes-easy-2000-100-3")
    (full,) = load_recipe(
        "tiny_shapes_pretrained", [f"data.train=[{demo_data(tmp_path, 'long', 0, 'full')}]"]
    ).data.train
    assert (full.difficulty, full.object_scale, full.max_objects, full.n_train) == ("full", 1.0, 6, 4000)

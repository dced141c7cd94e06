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


def test_bench_decoder_passes_device_and_dtype(capsys, monkeypatch):
    calls: list[dict] = []
    fake = types.ModuleType("padt_core.bench.decoder")
    fake.bench_decoder = lambda **kwargs: calls.append(kwargs) or {"ok": True}
    monkeypatch.setitem(sys.modules, "padt_core.bench.decoder", fake)
    code, out, _ = run(capsys, "bench", "decoder", "--dtype", "bfloat16")
    assert code == 0
    assert json.loads(out) == {"ok": True}
    assert calls == [{"device": "cpu", "dtype": "bfloat16"}]


def test_bench_decoder_missing_module_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "padt_core.bench.decoder", None)  # import now fails as if absent
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


def test_demo_runs_end_to_end(capsys):
    code, out, _ = run(capsys, "demo", "--max-new-tokens", "4")
    assert code == 0
    assert "completion" in out


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert f"padt {name}" in capsys.readouterr().out

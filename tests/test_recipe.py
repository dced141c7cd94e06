"""Recipes: YAML loading, extends, dotted overrides, plugin-section validation and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import padt_core
from padt_core.recipe import RecipeError, load_recipe, recipe_schema

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_path_and_bundled_name_give_the_same_recipe(tmp_path, monkeypatch):
    by_path = load_recipe(ROOT / "recipes" / "tiny_qwen.yaml")
    monkeypatch.chdir(tmp_path)  # bundled names work from any directory
    by_name = load_recipe("tiny_qwen")
    assert by_path == by_name
    assert by_name.backbone.name == "qwen2_5_vl"
    assert by_name.backbone.config["text_config"]["hidden_size"] == 128


def test_build_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = padt_core.build(recipe="tiny_qwen")
    assert isinstance(model, padt_core.PaDTModel)
    assert model.backbone.vocab_rows == 832


def test_extends_merges_and_overrides_apply_last(tmp_path):
    child = write(
        tmp_path / "child.yaml",
        {"extends": str(ROOT / "recipes" / "tiny_qwen.yaml"), "name": "child", "vrt": {"rank": 4}},
    )
    recipe = load_recipe(child, ["train.lr=1e-5", "backbone.config.text_config.num_hidden_layers=3"])
    assert recipe.name == "child"
    assert recipe.vrt.rank == 4 and recipe.vrt.projection is True  # merged, not replaced
    assert recipe.train.lr == 1e-5
    assert recipe.backbone.config["text_config"]["num_hidden_layers"] == 3
    assert recipe.backbone.config["text_config"]["hidden_size"] == 128
    assert load_recipe("tiny_qwen", {"generation.max_new_tokens": 7}).generation.max_new_tokens == 7


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"vrt": {"rnak": 3}}, "vrt.rnak"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"backbone": {"name": "qwen2_5_vl", "dtpye": "float32"}}, "dtpye"),
        (
            {"backbone": {"name": "qwen2_5_vl", "config": {"text_config": {"hiden_size": 3}}}},
            "config.text_config.hiden_size",
        ),
    ],
)
def test_typo_in_nested_key_names_file_and_key(tmp_path, section, key):
    bad = write(tmp_path / "bad.yaml", {"extends": "tiny_qwen", **section})
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(bad) in str(err.value)
    assert key in str(err.value)


def test_unknown_plugin_lists_registered(tmp_path):
    bad = write(tmp_path / "bad.yaml", {"extends": "tiny_qwen", "backbone": {"name": "qwen3"}})
    with pytest.raises(RecipeError, match=r"Unknown backbone 'qwen3'.*qwen2_5_vl"):
        load_recipe(bad)


def test_extends_cycle_and_missing_recipe(tmp_path):
    write(tmp_path / "a.yaml", {"extends": "b.yaml", "name": "a"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml", "name": "b"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match="neither a file nor a bundled recipe.*tiny_qwen"):
        load_recipe(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe("tiny_qwen", ["train.lr"])


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe("tiny_qwen", ["vrt.rank=8"])
    again = load_recipe(write(tmp_path / "r.yaml", yaml.safe_load(recipe.to_yaml())))
    assert again == recipe


def test_schema_lists_plugin_options():
    schema = recipe_schema()
    backbone = schema["properties"]["backbone"]["oneOf"]
    assert any("pretrained" in s["properties"] for s in backbone)

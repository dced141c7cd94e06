"""``generation.engine`` / ``generation.engine_args``: the recipe names the engine, the call or CLI overrides it.

A fake ``padt.engines`` entry point stands in for vLLM (no vLLM in the main environment): it records the
arguments it was built with and answers every prompt with one fixed ``Prediction``.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any, ClassVar

import pytest
from helpers import noise_image

from padt_core.cli import main
from padt_core.model import PaDTModel, Prediction
from padt_core.recipe import RecipeError, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeEngine:
    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, model: PaDTModel, **engine_args: Any) -> None:
        FakeEngine.built.append(engine_args)
        self.args = engine_args

    def predict(self, images, prompts, batch_size=8, progress=None, **generation):
        return [Prediction(text=f"fake {self.args} {generation}", objects=[]) for _ in images]


class FakeEntryPoint:
    name = "fake"

    def load(self):
        return FakeEngine


@pytest.fixture
def fake_engine(monkeypatch):
    """``fake`` is an installed engine (the ``padt.engines`` group lists only it)."""
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        return [FakeEntryPoint()] if kwargs.get("group") == "padt.engines" else real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    FakeEngine.built = []
    return FakeEngine


def tiny(**generation: Any) -> PaDTModel:
    overrides = {"generation.max_new_tokens": 2, **{f"generation.{k}": v for k, v in generation.items()}}
    return PaDTModel.from_recipe(load_recipe("tiny_qwen", overrides)).eval()


def test_recipe_fields_are_validated():
    assert load_recipe("tiny_qwen").generation.engine == "hf"
    assert load_recipe("tiny_qwen").generation.engine_args == {}
    with pytest.raises(RecipeError, match=r"generation\.engine: Input should be a valid string \(got 3\)"):
        load_recipe("tiny_qwen", {"generation.engine": 3})
    with pytest.raises(RecipeError, match=r"generation\.engine_args: Input should be a valid dictionary"):
        load_recipe("tiny_qwen", {"generation.engine_args": ["dtype=bfloat16"]})
    with pytest.raises(RecipeError, match=r"engine_args \['dtype'\] configure another engine than hf"):
        load_recipe("tiny_qwen", {"generation.engine_args": {"dtype": "bfloat16"}})
    spec = load_recipe("tiny_qwen", {"generation.engine": "vllm", "generation.engine_args": {"dtype": "bfloat16"}})
    assert spec.generation.engine_args == {"dtype": "bfloat16"}


def test_predict_uses_the_recipes_engine_and_the_call_overrides_it(fake_engine):
    model = tiny(engine="fake", engine_args={"tensor_parallel_size": 2, "dtype": "bfloat16"})
    image = noise_image(56, 56)
    assert model.generation_config().to_dict().get("engine") is None  # not a Hugging Face generation field
    pred = model.predict(image, "Where?")[0]
    assert fake_engine.built == [{"tensor_parallel_size": 2, "dtype": "bfloat16"}]
    assert pred.text.startswith("fake ")
    # the call's engine_args update the recipe's key by key (a new engine is built for new arguments)
    model.predict(image, "Where?", engine_args={"dtype": "float32"})
    assert fake_engine.built[-1] == {"tensor_parallel_size": 2, "dtype": "float32"}
    # engine="hf" generates with Hugging Face generate; the recipe's fake arguments do not apply to it
    built = len(fake_engine.built)
    pred = model.predict(image, "Where?", engine="hf")[0]
    assert len(fake_engine.built) == built and not pred.text.startswith("fake")
    with pytest.raises(ValueError, match=r"engine_args \['dtype'\] configure another engine than hf"):
        model.predict(image, "Where?", engine="hf", engine_args={"dtype": "float32"})
    # an engine object is used as it is
    assert model.predict(image, "Where?", engine=FakeEngine(model, x=1))[0].text.startswith("fake {'x': 1}")


def test_engine_choice_and_unknown_engines(fake_engine):
    hf = tiny()
    assert hf.engine_choice() == ("hf", {})
    assert hf.engine_choice("fake", {"a": 1}) == ("fake", {"a": 1})
    model = tiny(engine="nope", engine_args={"a": 1})
    assert model.engine_choice() == ("nope", {"a": 1})
    assert model.engine_choice("fake") == ("fake", {})  # the recipe's arguments are for its own engine
    with pytest.raises(
        ValueError, match=r"unknown engine 'nope' \(generation\.engine of the recipe\); installed: hf, fake"
    ):
        model.predict(noise_image(56, 56), "Where?")
    with pytest.raises(ValueError, match=r"unknown engine 'other'; installed: hf, fake"):
        hf.predict(noise_image(56, 56), "Where?", engine="other")


def test_padt_predict_engine_flags_over_the_recipe(fake_engine, tmp_path, capsys):
    image = tmp_path / "a.png"
    noise_image(56, 56).save(image)
    base = ["predict", "tiny_qwen", "--image", str(image), "--prompt", "Where?", "--max-new-tokens", "2"]
    recipe_engine = ["generation.engine=fake", "generation.engine_args={dtype: bfloat16}"]
    assert main([*base[:2], *recipe_engine, *base[2:]]) == 0
    assert json.loads(capsys.readouterr().out)[0]["text"].startswith("fake {'dtype': 'bfloat16'}")
    assert main([*base[:2], *recipe_engine, *base[2:], "--engine-arg", "max_num_seqs=4"]) == 0
    assert fake_engine.built[-1] == {"dtype": "bfloat16", "max_num_seqs": 4}
    capsys.readouterr()
    assert main([*base[:2], *recipe_engine, *base[2:], "--engine", "hf"]) == 0
    assert not json.loads(capsys.readouterr().out)[0]["text"].startswith("fake")
    assert main([*base, "--engine", "fake", "--engine-arg", "a=1"]) == 0
    assert fake_engine.built[-1] == {"a": 1}
    capsys.readouterr()
    assert main([*base, "--engine-arg", "a=1"]) != 0  # tiny_qwen's engine is hf: nothing to configure
    assert "--engine-arg configures another engine than hf; add --engine vllm" in capsys.readouterr().err

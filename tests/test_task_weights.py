"""Task re-balancing of the training set (recipe ``data.task_weights``)."""

from collections import Counter
from types import SimpleNamespace
from typing import Literal

import pytest

from padt_core.recipe import RecipeError, load_recipe
from padt_core.train.dataset import SampleDataset


def _sources():
    rec = [SimpleNamespace(task="rec", id=f"rec{i}") for i in range(10)]
    ovd = [SimpleNamespace(task="ovd", id=f"ovd{i}") for i in range(4)]
    return [rec, ovd]


def _epoch(ds):
    return [ds[i]["sample"].id for i in range(len(ds))]


def test_unweighted_is_the_concatenation():
    ds = SampleDataset(_sources(), seed=0, task_weights={"ovd": 1.0})
    assert _epoch(ds) == [f"rec{i}" for i in range(10)] + [f"ovd{i}" for i in range(4)]


def test_whole_and_fractional_weights():
    ds = SampleDataset(_sources(), seed=3, task_weights={"ovd": 2.5, "rec": 0.3})
    assert len(ds) == 3 + 10 and ds.task_counts() == {"rec": 3, "ovd": 10}
    first = Counter(_epoch(ds))
    assert all(first[f"ovd{i}"] in (2, 3) for i in range(4)) and sum(first[f"ovd{i}"] for i in range(4)) == 10
    assert sum(first[f"rec{i}"] for i in range(10)) == 3 and max(first[f"rec{i}"] for i in range(10)) == 1
    # repeats of one sample get different VRT-target seeds
    seeds = [tuple(ds[i]["seed"]) for i in range(len(ds))]
    assert len(set(seeds)) == len(seeds)
    # a new epoch draws a new fractional share, same length; the same seed and epoch draw the same
    picks = {frozenset(k for k in _epoch(ds) if k.startswith("rec"))}
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        assert len(ds) == 13
        picks.add(frozenset(k for k in _epoch(ds) if k.startswith("rec")))
    assert len(picks) > 1
    again = SampleDataset(_sources(), seed=3, task_weights={"ovd": 2.5, "rec": 0.3})
    again.set_epoch(5)
    assert _epoch(again) == _epoch(ds)


def test_zero_drops_a_task_and_errors_name_the_problem():
    ds = SampleDataset(_sources(), task_weights={"rec": 0})
    assert ds.task_counts() == {"ovd": 4} and len(ds) == 4
    with pytest.raises(ValueError, match=r"task_weights name tasks \['ric'\] that the training data does not have"):
        SampleDataset(_sources(), task_weights={"ric": 2})
    with pytest.raises(ValueError, match="finite and >= 0"):
        SampleDataset(_sources(), task_weights={"ovd": -1})


def test_recipe_validates_task_weights():
    assert load_recipe("tiny_qwen_shapes", ["data.task_weights.ovd=3"]).data.task_weights == {"ovd": 3.0}
    with pytest.raises(
        RecipeError,
        match=r"data.task_weights: task names: unknown task 'detect'; the registered "
        r"dataset plugins declare: ovd, rec, res, ric",
    ):
        load_recipe("tiny_qwen_shapes", ["data.task_weights.detect=3"])
    with pytest.raises(RecipeError, match="finite numbers >= 0"):
        load_recipe("tiny_qwen_shapes", ["data.task_weights.ovd=-2"])


def test_a_dataset_plugin_declares_a_new_task():
    """Tasks come from the dataset plugins: registering one that declares ``count`` makes it valid."""
    from padt_core.data.reader import DatasetReader
    from padt_core.data.sample import Sample
    from padt_core.data.tasks import UnknownTaskError, registered_tasks
    from padt_core.plugins import PluginConfig, hookimpl, register_plugin, unregister_plugin

    def sample() -> Sample:
        return Sample(id="c/0", image="x.png", task="count", prompt="How many?", answer="3", objects=[])

    with pytest.raises(UnknownTaskError, match=r"sample c/0: unknown task 'count'; .* declare: ovd, rec, res, ric"):
        sample()

    class CountingConfig(PluginConfig):
        name: Literal["counting"] = "counting"

    class Counting(DatasetReader):
        name = "counting"
        Config = CountingConfig
        tasks = ("count",)

        def _read(self):
            return []

    class Plugin:
        @hookimpl
        def padt_datasets(self):
            return [Counting]

    plugin = Plugin()
    register_plugin(plugin, name="counting-plugin")
    try:
        assert registered_tasks()["count"] == ["counting"]
        assert {"padt_json", "refcoco", "shapes"} <= set(registered_tasks()["rec"])  # (+ installed examples')
        assert sample().task == "count"
        recipe = load_recipe("tiny_qwen_shapes", ["data.task_weights.count=2"])
        assert recipe.data.task_weights == {"count": 2.0}
    finally:
        unregister_plugin(plugin)
    assert "count" not in registered_tasks()

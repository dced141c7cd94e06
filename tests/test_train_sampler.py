"""``train.sampling: length`` (padt_core/train/sampler.py): batches of similar length, reproducible per epoch."""

from types import SimpleNamespace

import numpy as np
import pytest

from padt_core.recipe import RecipeError, load_recipe
from padt_core.train.dataset import SampleDataset
from padt_core.train.sampler import EpochLengthSampler, sample_length
from padt_core.train.trainer import PaDTTrainer


def _sample(i: int, task: str, objects: int):
    answer = "There are " + ", ".join(f"<|Obj_{k}|>" for k in range(objects)) + "."
    return SimpleNamespace(
        id=f"{task}{i}", task=task, prompt="p" * (40 if task == "rec" else 90), answer=answer, images=[]
    )


def _dataset(seed: int = 0) -> SampleDataset:
    rec = [_sample(i, "rec", 1) for i in range(300)]
    ovd = [_sample(i, "ovd", 1 + i % 4) for i in range(100)]
    return SampleDataset([rec, ovd], seed=seed)


def _padded_tokens(order, lengths, batch):
    return sum(
        max(lengths[i] for i in order[k : k + batch]) * len(order[k : k + batch]) for k in range(0, len(order), batch)
    )


def test_length_estimate_counts_text_and_each_vrt_run():
    one, four = _sample(0, "ovd", 1), _sample(1, "ovd", 4)
    assert sample_length(four) - sample_length(one) == len(four.answer) - len(one.answer) + 3 * 20


def test_every_sample_once_less_padding_than_random_and_reproducible():
    ds = _dataset()
    sampler = EpochLengthSampler(ds, batch_size=16, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds))) and len(sampler) == len(ds)
    lengths = [sample_length(ds[i]["sample"]) for i in range(len(ds))]
    shuffled = list(np.random.default_rng(0).permutation(len(ds)))
    assert _padded_tokens(order, lengths, 16) < 0.8 * _padded_tokens(shuffled, lengths, 16)
    assert list(EpochLengthSampler(_dataset(), batch_size=16, seed=7)) == order  # same seed, same epoch
    assert list(EpochLengthSampler(ds, batch_size=16, seed=8)) != order
    ds.set_epoch(1)  # what the Trainer's epoch callback does before each epoch
    assert list(sampler) != order and sorted(sampler) == list(range(len(ds)))


def test_trainer_takes_the_recipe_sampling(tmp_path):
    recipe = load_recipe("tiny_qwen", ["train.sampling=length"])
    assert recipe.train.sampling == "length"
    with pytest.raises(RecipeError, match="sampling"):
        load_recipe("tiny_qwen", ["train.sampling=sorted"])
    from padt_core.train.trainer import training_arguments

    ds = _dataset()
    args = training_arguments(recipe.train, str(tmp_path))
    trainer = PaDTTrainer.__new__(PaDTTrainer)  # the sampler choice only needs args and the dataset
    trainer.args, trainer.train_dataset, trainer._sampling = args, ds, "length"
    assert isinstance(trainer._get_train_sampler(), EpochLengthSampler)
    trainer._sampling = "random"
    assert not isinstance(trainer._get_train_sampler(), EpochLengthSampler)

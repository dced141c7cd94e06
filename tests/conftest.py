"""Shared fixtures: the tiny random models (Qwen2.5-VL, LLaVA-style, Qwen3-VL, Qwen3.5), built once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import sharpen

import padt_core

# Every backbone's tiny recipe: the core checks (tests/test_model.py) run on each of them.
TINY_RECIPES = ("tiny_qwen", "tiny_llava", "tiny_qwen3_vl", "tiny_qwen3_5")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: thread hand-offs cost more than they save (and thrash on a shared 2-core machine).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models() -> Callable[[str], padt_core.PaDTModel]:
    """``tiny_models(name)``: the sharpened tiny model of a recipe, built on first use."""
    cache: dict[str, padt_core.PaDTModel] = {}

    def get(name: str) -> padt_core.PaDTModel:
        if name not in cache:
            torch.manual_seed(0)
            model = padt_core.build(recipe=name).eval()
            sharpen(model)
            cache[name] = model
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> padt_core.PaDTModel:
    """The tiny Qwen2.5-VL (backbone-specific tests use it by name)."""
    return tiny_models("tiny_qwen")

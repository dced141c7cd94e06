"""The third-party head example (examples/padt-centroid-head): registered, selected by a recipe, trained, predicted.

CI installs it first (``pip install -e examples/padt-centroid-head --no-deps``); then the entry-point
test runs. Without the installation the head is registered from its source folder so the rest of the
file still checks the plugin API.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import padt_plugins.decoders as decoders
import pytest
import torch

from padt_core.decoder import DecoderInputs, ObjectTargets, PaDTDecoder
from padt_core.features import VisualFeatures
from padt_core.plugins import get_registry, list_plugins, register_plugin
from padt_core.recipe import load_recipe

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "padt-centroid-head"
D = 16


def _installed() -> bool:
    try:
        importlib.metadata.distribution("padt-centroid-head")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def _plugins() -> None:
    if "padt" not in list_plugins("trunks")["trunks"]:
        register_plugin(decoders)
    if "centroid" not in list_plugins("heads")["heads"]:
        sys.path.insert(0, str(EXAMPLE / "src"))
        import padt_centroid_head

        register_plugin(padt_centroid_head)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(not _installed(), reason="CI runs: pip install -e examples/padt-centroid-head --no-deps")
def test_registered_through_its_entry_point():
    assert {"box", "score", "mask", "centroid"} <= set(list_plugins()["heads"])
    assert "padt-centroid-head" in get_registry("heads").sources["centroid"]


def test_selected_from_a_recipe_with_its_own_options():
    recipe = load_recipe(
        {
            "extends": "tiny_qwen",
            "name": "with-centroid",
            "decoder": {
                "trunk": {"name": "padt", "hidden_size": 32, "num_heads": 4},
                "heads": ["box", {"name": "centroid", "weight": 2}],
            },
        }
    )
    assert [h.name for h in recipe.decoder.heads] == ["box", "centroid"]
    assert recipe.decoder.heads[1].weight == 2.0 and recipe.decoder.heads[1].key_dim == 64
    with pytest.raises(ValueError, match="wieght"):
        load_recipe({"extends": "tiny_qwen", "name": "x", "decoder": {"trunk": "padt", "heads": [
            {"name": "centroid", "wieght": 2}]}})  # fmt: skip


def _image(h: int, w: int, gen: torch.Generator) -> VisualFeatures:
    fine = torch.randn(4 * h * w, D, generator=gen)
    return VisualFeatures(torch.randn(h * w, D, generator=gen), (h, w), 28, (28 * h, 28 * w), fine, (2 * h, 2 * w))


def test_trains_and_predicts_centres():
    torch.manual_seed(0)
    recipe = load_recipe(
        {
            "extends": "tiny_qwen",
            "name": "centroid-only",
            "decoder": {
                "trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 4},
                "heads": ["centroid"],
            },
        }
    )
    decoder = PaDTDecoder.from_config(recipe.decoder, llm_hidden_size=D, vision_hidden_size=D)
    gen = torch.Generator().manual_seed(0)
    features = [_image(3, 4, gen), _image(4, 3, gen)]
    # each object's VRTs point at cells whose centre is the object's centre: the head can learn it
    cells = torch.tensor([[0, 1, 4, 5], [6, 7, 10, 11], [3, 4, 6, 7]])
    inputs = DecoderInputs(
        features=features,
        prototypes=[f.tokens for f in features],
        image_index=torch.tensor([0, 0, 1]),
        vrt_states=torch.stack([features[b].tokens[c] for b, c in zip([0, 0, 1], cells)]).reshape(-1, D),
        vrt_cells=cells.flatten(),
        counts=torch.tensor([4, 4, 4]),
        original_sizes=[(90, 120), (120, 90)],
    )
    targets = ObjectTargets(boxes=torch.tensor([[0.0, 0.0, 0.5, 0.67], [0.5, 0.33, 1.0, 1.0], [0.0, 0.25, 1.0, 0.75]]))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        losses = decoder.loss(decoder(inputs), targets, inputs)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append(losses["centroid"].item())
    assert set(losses) == {"centroid", "total"}
    assert history[-1] < 0.5 * history[0]
    results = decoder.postprocess(decoder(inputs), inputs)
    assert [set(r) for r in results] == [{"centroid"}] * 3
    x, y = results[2]["centroid"]  # image 1 is 90 px wide, 120 px high
    assert 0 <= x <= 90 and 0 <= y <= 120

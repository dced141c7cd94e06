"""The third-party head example (examples/padt-centroid-head): registered, selected by a recipe, trained, predicted.

CI installs it first (``pip install -e examples/padt-centroid-head --no-deps``); then the entry-point
test runs. Without the installation the head is registered from its source folder so the rest of the
file still checks the plugin API.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
from pathlib import Path

import numpy as np
import padt_plugins.decoders as decoders
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor

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
    # the head's own target key (no boxes at all); the third object has none: left out and counted
    centres = [torch.tensor([0.25, 0.33]), torch.tensor([0.75, 0.67]), None]
    targets = ObjectTargets(extras={"centroid": centres})
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        losses = decoder.loss(decoder(inputs), targets, inputs)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append(losses["centroid"].item())
    assert set(losses) == {"centroid", "total", "skipped_centroid"} and losses["skipped_centroid"] == 1
    assert history[-1] < 0.5 * history[0]
    results = decoder.postprocess(decoder(inputs), inputs)
    assert [set(r) for r in results] == [{"centroid"}] * 3
    x, y = results[2]["centroid"]  # image 1 is 90 px wide, 120 px high
    assert 0 <= x <= 90 and 0 <= y <= 120


# --- end to end on shapes: the dataset hook's annotation -> training -> predict / padt predict --------------


class _Force(LogitsProcessor):
    """Make ``generate`` write known completions (one id list per row): generation is not under test here."""

    def __init__(self, targets: list[list[int]], prompt_length: int):
        self.targets, self.prompt_length = targets, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, -math.inf)
        for row, target in enumerate(self.targets):
            forced[row, target[min(step, len(target) - 1)]] = 0.0
        return forced


@pytest.fixture(scope="module")
def shapes_samples(tmp_path_factory) -> list:
    from padt_core.data.reader import build_dataset
    from padt_core.plugins import get_plugin

    section = {"name": "shapes_centroid", "root": str(tmp_path_factory.mktemp("centroid") / "shapes")}
    section.update(split="train", tasks=["rec"], n_train=8, n_val=0, image_size=112, difficulty="easy", max_objects=1)
    return build_dataset(get_plugin("datasets", "shapes_centroid").Config.model_validate(section)).samples()


def test_the_dataset_hook_annotates_each_object_with_its_centre_of_mass(shapes_samples):
    from padt_core.data.sample import rle_decode

    for sample in shapes_samples:
        (obj,) = sample.objects
        mask = rle_decode(obj.mask)
        rows, cols = np.nonzero(mask)
        h, w = mask.shape
        assert obj.extra["centroid"] == pytest.approx([(cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h])
    # not the box centre: a triangle's or a star's centre of mass lies elsewhere
    box_centres = [((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for s in shapes_samples for o in s.objects]
    centroids = [tuple(o.extra["centroid"]) for s in shapes_samples for o in s.objects]
    assert max(abs(a - b) for bc, c in zip(box_centres, centroids) for a, b in zip(bc, c)) > 0.01


def test_trained_on_shapes_the_centre_reaches_predict_json_and_png(shapes_samples, tmp_path, monkeypatch, capsys):
    """The head learns from ``extra["centroid"]`` (not the box); ``centroid`` then reaches ``model.predict``,
    ``padt predict --out``'s JSON and its PNG, near each object's centre of mass."""
    import padt_core
    from padt_core.cli import main
    from padt_core.model import PaDTModel, load_image
    from padt_core.objects import pack_objects
    from padt_core.train.collator import PaDTCollator

    torch.manual_seed(0)
    decoder = {"trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 4}}
    model = padt_core.build(
        {"extends": "tiny_qwen", "name": "centroid-shapes", "decoder": {**decoder, "heads": ["centroid"]}}
    )
    batch = PaDTCollator(model, vrt_per_object=5, seed=0)(shapes_samples)
    assert batch.objects.targets.boxes is not None and "centroid" in batch.objects.targets.extras
    # The LLM is not what is trained here: one teacher-forced pass gives the states that emit the VRTs,
    # then the decoder learns the centres from them (what padt train's decoder losses do, minus the LLM).
    with torch.no_grad():
        length = batch.completion_ids.shape[1]
        out = model(
            batch.prompt, batch.completion_ids, completion_mask=batch.completion_mask, logits_to_keep=length + 1
        )
    inputs = pack_objects(batch.objects, out.encoded, out.hidden_states, batch.original_sizes)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    for _ in range(150):
        losses = model.decoder.loss(model.decoder(inputs), batch.objects.targets, inputs)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
    assert losses["skipped_centroid"] == 0 and losses["centroid"] < 0.05
    model.eval()

    completions = [row[m.bool()].tolist() for row, m in zip(batch.completion_ids, batch.completion_mask)]
    images, prompts = [s.image for s in shapes_samples], [s.prompt for s in shapes_samples]
    prompt_length = model.prepare([load_image(i) for i in images], prompts)["input_ids"].shape[1]
    predictions = model.predict(images, prompts, batch_size=8, logits_processor=[_Force(completions, prompt_length)])

    def error(point: list[float], sample) -> float:
        h, w = sample.image_size
        (obj,) = sample.objects
        return math.dist(point, (obj.extra["centroid"][0] * w, obj.extra["centroid"][1] * h))

    errors = [error(p.objects[0].outputs["centroid"], s) for p, s in zip(predictions, shapes_samples)]
    uniform = [error([s.image_size[1] / 2, s.image_size[0] / 2], s) for s in shapes_samples]  # untrained: ~centre
    assert max(errors) < 8.0 and sum(errors) < 0.3 * sum(uniform), (errors, uniform)  # px, 112 px images

    # padt predict --out on the saved model: JSON and PNG (generation forced to the same completion)
    model.save_pretrained(tmp_path / "model")
    sample = shapes_samples[0]
    generate = PaDTModel.generate

    def forced_generate(self, batch, encoded=None, **kwargs):
        return generate(self, batch, encoded, logits_processor=[_Force(completions[:1], batch["input_ids"].shape[1])])

    monkeypatch.setattr(PaDTModel, "generate", forced_generate)
    argv = ["predict", str(tmp_path / "model"), "--image", sample.image, "--prompt", sample.prompt]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    stem = Path(sample.image).stem
    record = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
    (obj,) = record["objects"]
    assert list(obj) == ["label", "vrt", "box", "score", "mask", "centroid"] and obj["box"] is None
    assert obj["centroid"] == pytest.approx(predictions[0].objects[0].outputs["centroid"], abs=1e-3)
    assert error(obj["centroid"], sample) < 8.0
    with Image.open(tmp_path / "out" / f"{stem}.png") as drawn, Image.open(sample.image) as original:
        x, y = (round(v) for v in obj["centroid"])
        changed = np.abs(np.asarray(drawn, dtype=int) - np.asarray(original.convert("RGB"), dtype=int)).sum(-1) > 0
        assert changed[y - 6 : y + 7, x - 6 : x + 7].sum() >= 12  # the head's diamond around the centre

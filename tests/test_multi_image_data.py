"""Several images in one conversation (issue 20, docs/multi-image.md): data, training batches, eval, CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import noise_image, sharpen
from padt_plugins.datasets.padt_json import PaDTJsonDataset, PaDTJsonDatasetConfig
from padt_plugins.datasets.shapes.pairs import ShapesPairsDataset, ShapesPairsDatasetConfig
from padt_plugins.metrics.rec import RECMetric
from PIL import Image

import padt_core
from padt_core.cli import main
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.train.collator import PaDTCollator
from padt_core.train.step import compute_losses

pytestmark = pytest.mark.usefixtures("one_thread")

DECODER = {"trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    built = padt_core.build("tiny_qwen", {"decoder": {**DECODER, "heads": ["box", "score", "mask"]}})
    sharpen(built)
    return built


@pytest.fixture
def pair(tmp_path):
    """Two images: 112 x 112 (a 4 x 4 grid of 28-px cells) and 56 x 112 (2 x 4)."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    noise_image(112, 112, 1).save(a)
    noise_image(56, 112, 2).save(b)
    return str(a), str(b)


def two_image_sample(a: str, b: str) -> Sample:
    return Sample(
        id="pair/0",
        image=a,
        images=[a, b],
        task="rec",
        prompt="Find the shape that appears in both images.",
        answer='The "red circle" is in the first image at <|Obj_0|> and in the second image at <|Obj_1|>.',
        objects=[
            ObjectAnn(label="red circle", box=(0.0, 0.0, 0.25, 0.25)),  # cell 0 of image 0
            ObjectAnn(label="red circle", box=(0.75, 0.5, 1.0, 1.0), image=1),  # cell (1, 3) of image 1
        ],
        image_size=(112, 112),
        image_sizes=[(112, 112), (56, 112)],
    )


def test_collator_offsets_the_second_image_and_trains_a_step(model, pair):
    collator = PaDTCollator(model, vrt_per_object=2, seed=0)
    single = Sample(
        id="one", image=pair[0], task="rec", prompt="p", answer='"x" <|Obj_0|>', objects=[ObjectAnn("x", (0, 0, 1, 1))]
    )
    batch = collator([two_image_sample(*pair), single])
    vocab = model.backbone.vocab_rows
    assert batch.prompt["sample_images"] == [[0, 1], [2]] and batch.prompt["image_grids"][:2] == [(4, 4), (2, 4)]
    vrts = batch.completion_ids[0][batch.completion_ids[0] >= vocab] - vocab
    assert vrts.tolist() == [0, 0, 16 + 7, 16 + 7]  # image 1's cell 7 is VRT 16 + 7
    objects = batch.objects
    assert objects.cells.tolist()[:4] == [0, 0, 7, 7] and objects.image.tolist() == [0, 1, 0]
    assert batch.vrt_ignore.shape[-1] == 16 + 8  # the widest sample's cells, both images
    assert batch.original_sizes == [(112, 112), (56, 112), (112, 112)]
    model.train()
    losses = compute_losses(model, batch)
    model.eval()
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0


def test_collator_skips_a_sample_whose_second_image_is_missing(model, pair, tmp_path):
    collator = PaDTCollator(model, vrt_per_object=2, seed=0)
    broken = two_image_sample(pair[0], str(tmp_path / "gone.png"))
    single = Sample(
        id="one", image=pair[0], task="rec", prompt="p", answer='"x" <|Obj_0|>', objects=[ObjectAnn("x", (0, 0, 1, 1))]
    )
    batch = collator([broken, single])
    assert collator.skipped == {"missing_image": 1} and batch.completion_ids.shape[0] == 1


def test_sample_round_trip_and_bad_image_index(pair):
    sample = two_image_sample(*pair)
    again = Sample.from_dict(json.loads(json.dumps(sample.to_dict())))
    assert again == sample and again.image_paths == list(pair)
    single = Sample(
        id="s", image=pair[0], task="rec", prompt="p", answer="<|Obj_0|>", objects=[ObjectAnn("x", (0, 0, 1, 1))]
    )
    assert "images" not in single.to_dict() and "image" not in single.to_dict()["objects"][0]
    with pytest.raises(ValueError, match="object 0 is in image 1 but the sample has 1 image"):
        Sample(
            id="s",
            image=pair[0],
            task="rec",
            prompt="p",
            answer="<|Obj_0|>",
            objects=[ObjectAnn("x", (0, 0, 1, 1), image=1)],
        )


def test_padt_json_reads_records_with_several_images(tmp_path, pair):
    record = {
        "id": 7,
        "images": ["a.png", "b.png"],
        "task": "refering",
        "conversations": [{"from": "human", "value": "<image> and <image>: which shows the red circle?"}],
        "answer_template": 'The "red circle" is in the second image: <|Obj_0|>.',
        "objects": [{"bbox": [0.5, 0.0, 1.0, 1.0], "label": "red circle", "image": 1}],
    }
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(record)
        + "\n"
        + json.dumps({**record, "id": 8, "objects": [{**record["objects"][0], "image": 2}]})
        + "\n"
    )
    with pytest.warns(UserWarning, match="object 0 is in image 2 but the record has 2 image"):
        ds = PaDTJsonDataset(PaDTJsonDatasetConfig(path=str(path), image_dir=str(tmp_path)))
        (sample,) = ds.samples()
    assert sample.images == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert sample.image_sizes == [(112, 112), (56, 112)] and sample.objects[0].image == 1
    assert sample.prompt == "<|img|> and <|img|>: which shows the red circle?"


def test_shapes_pairs_questions_and_held_out_images(tmp_path):
    common = {"root": str(tmp_path / "pairs"), "n_train": 12, "n_val": 8, "n_pairs": 9}
    train = ShapesPairsDataset(ShapesPairsDatasetConfig(split="train", **common)).samples()
    val = ShapesPairsDataset(ShapesPairsDatasetConfig(split="val", questions=["which"], **common)).samples()
    again = ShapesPairsDataset(ShapesPairsDatasetConfig(split="train", **common)).samples()
    assert [s.to_dict() for s in train] == [s.to_dict() for s in again]  # deterministic
    assert {s.meta["question"] for s in train} == {"which", "ordinal", "both"}
    assert all("/train_" in p for s in train for p in s.images) and all("/val_" in p for s in val for p in s.images)
    for s in train + val:
        assert len(s.images) == 2 and s.images[0] != s.images[1]
        if s.meta["question"] == "both":
            assert [o.image for o in s.objects] == [0, 1] and s.objects[0].label == s.objects[1].label
        else:
            (obj,) = s.objects
            assert ("first", "second")[obj.image] in s.answer


def test_rec_counts_a_box_in_the_wrong_image_as_a_miss(pair):
    sample = Sample(
        id="p",
        image=pair[0],
        images=list(pair),
        task="rec",
        prompt="p",
        answer="<|Obj_0|>",
        objects=[ObjectAnn("x", (0.5, 0.0, 1.0, 1.0), image=1)],
        image_sizes=[(112, 112), (56, 112)],
    )

    def scored(image: int, box: list[float]) -> dict:
        metric = RECMetric(RECMetric.Config())
        obj = SimpleNamespace(box=box, score=None, image=image, label="x")
        metric.update(sample, SimpleNamespace(objects=[obj], text="", skipped=[], truncated=False))
        return metric.compute()

    right = scored(1, [56.0, 0.0, 112.0, 56.0])  # image 1's pixels: 112 wide, 56 high
    assert right["rec_acc50"] == 1.0
    wrong = scored(0, [56.0, 0.0, 112.0, 56.0])
    assert wrong["rec_acc50"] == 0.0 and wrong["wrong_image"] == 1


def test_cli_predict_multi_writes_one_json_and_a_png_per_image(tmp_path, pair, capsys):
    out = tmp_path / "out"
    argv = ["predict", "tiny_qwen_shapes", "--image", pair[0], "--image", pair[1], "--multi"]
    assert main([*argv, "--prompt", "<|img|> or <|img|>?", "--max-new-tokens", "4", "--out", str(out)]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["json"] == str(out / "a+b.json") and written["png"] == [str(out / "a.png"), str(out / "b.png")]
    record = json.loads((out / "a+b.json").read_text())
    assert [im["vrt_grid"] for im in record["images"]] == [[4, 4], [2, 4]] and record["prompt"] == "<|img|> or <|img|>?"
    assert all(o["image"] in (0, 1) for o in record["objects"])
    assert sorted(p.name for p in out.iterdir()) == ["a+b.json", "a.png", "b.png"]
    assert np.asarray(Image.open(out / "b.png")).shape[:2] == (56, 112)


def test_eval_predicts_each_pair_as_one_conversation(model, tmp_path):
    from padt_core.eval.run import evaluate_model

    config = ShapesPairsDatasetConfig(
        root=str(tmp_path / "p"), split="val", n_pairs=3, questions=["which"], n_train=4, n_val=6
    )
    report, predictions, samples = evaluate_model(model.eval(), [config], max_new_tokens=6)
    assert len(predictions) == len(samples) == 3 and all(len(s.images) == 2 for s in samples)
    assert 0.0 <= report["rec_acc50"] <= 1.0 and report["counts"]["rec"]["samples"] == 3
    for prediction in predictions:
        assert all(o.image in (0, 1) for o in prediction.objects)

"""The object record: targets by key, heads that see only objects with their targets, one packer for
training and predict, open predictions and their JSON, the typed training batch."""

from __future__ import annotations

import pickle
from typing import Literal

import numpy as np
import padt_plugins.decoders as decoders
import pytest
import torch
from helpers import noise_image
from torch import nn

from padt_core.data.sample import ObjectAnn, Sample
from padt_core.decoder import Head, ObjectTargets, PaDTDecoder
from padt_core.layout import get_layout
from padt_core.objects import ObjectBatch, PredictedObject, json_value, object_json, pack_objects
from padt_core.plugins import PluginConfig, get_plugin, list_plugins, register_plugin
from padt_core.train.batch import TrainBatch
from padt_core.train.collator import PaDTCollator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def _decoder_plugins() -> None:
    if "padt" not in list_plugins("trunks")["trunks"]:
        register_plugin(decoders)


# --- targets by key ------------------------------------------------------------------------------------


def test_targets_by_key_availability_selection_and_errors():
    targets = ObjectTargets(
        boxes=torch.arange(12.0).view(3, 4) / 12,
        masks=[torch.ones(2, 2), None, torch.zeros(3, 3)],
        extras={"depth": [torch.tensor([1.0]), None, torch.tensor([3.0])]},
    )
    assert targets.available("box", 3) == [True] * 3
    assert targets.available("mask", 3) == [True, False, True]
    assert targets.available("depth", 3) == [True, False, True]
    assert targets.available("keypoints", 3) == [False] * 3
    picked = targets.select([0, 2])
    assert picked["depth"].tolist() == [[1.0], [3.0]] and picked["box"].shape == (2, 4)
    assert [m.shape for m in picked["mask"]] == [(2, 2), (3, 3)]
    with pytest.raises(ValueError, match=r"objects \[1\] have no 'depth' target"):
        targets["depth"]
    with pytest.raises(KeyError, match="no object carries target 'keypoints'"):
        targets["keypoints"]
    with pytest.raises(ValueError, match="2 'depth' targets for 3 objects"):
        ObjectTargets(extras={"depth": [None, None]}).validate(3)


class _DepthConfig(PluginConfig):
    name: Literal["depth"] = "depth"


class _DepthHead(Head):
    """A test head with its own target key and two output keys."""

    name = "depth"
    Config = _DepthConfig
    loss_keys = ("depth",)
    target_keys = ("depth",)
    output_keys = ("depth", "near")

    def __init__(self, config, *, hidden_size):
        super().__init__(config, hidden_size=hidden_size)
        self.linear = nn.Linear(hidden_size, 1)

    def predict(self, query_out, ctx):
        return self.linear(query_out[:, 0]).squeeze(-1)

    def loss(self, pred, targets, ctx):
        return {"depth": (pred.float() - targets["depth"].to(pred.device).float()).pow(2).mean()}

    def postprocess(self, pred, ctx):
        return [{"depth": d, "near": d < 0} for d in pred.detach().float().tolist()]


def _decoder(*extra_heads: Head) -> PaDTDecoder:
    torch.manual_seed(0)
    trunk_cls, box_cls = get_plugin("trunks", "padt"), get_plugin("heads", "box")
    trunk = trunk_cls.from_config(
        trunk_cls.Config(hidden_size=32, intermediate_size=64, num_heads=4),
        llm_hidden_size=24,
        vision_hidden_size=None,
        num_queries=1 + len(extra_heads),
        reads_memory=False,
        layout=get_layout("raster"),
    )
    return PaDTDecoder(trunk, [box_cls(box_cls.Config(), hidden_size=32), *extra_heads])


def _inputs(n: int = 5):
    from test_decoder import make_inputs

    return make_inputs([(3, 5), (4, 2)], [(o % 2, 1 + o % 3) for o in range(n)], fine=False)


def test_a_head_learns_only_from_objects_with_its_targets_and_they_are_counted():
    decoder = _decoder(_DepthHead(_DepthConfig(), hidden_size=32))
    inputs = _inputs()
    depth = [torch.tensor(float(o)) if o != 1 and o != 3 else None for o in range(5)]
    targets = ObjectTargets(boxes=torch.tensor([[0.1, 0.1, 0.5, 0.6]] * 5), extras={"depth": depth})
    losses = decoder.loss(decoder(inputs), targets, inputs)
    assert (losses["skipped_depth"].item(), losses["skipped_box"].item()) == (2, 0)
    # the same as decoding only the objects that have a depth (packed objects do not interact)
    kept = [0, 2, 4]
    alone = decoder.loss(decoder(inputs.select(kept)), targets.select(kept))
    torch.testing.assert_close(losses["depth"], alone["depth"])
    # no box targets at all: the box head is left out (zero, still in the graph), the depth head trains
    losses = decoder.loss(decoder(inputs), ObjectTargets(extras={"depth": depth}), inputs)
    assert losses["box_giou"].item() == 0 and losses["skipped_box"].item() == 5
    losses["total"].backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_several_output_keys_merge_into_each_object_and_keys_must_be_unique():
    decoder = _decoder(_DepthHead(_DepthConfig(), hidden_size=32))
    inputs = _inputs(3)
    results = decoder.postprocess(decoder(inputs), inputs)
    assert [sorted(r) for r in results] == [["box", "depth", "near"]] * 3
    assert results[0]["near"] == (results[0]["depth"] < 0)

    class Clash(_DepthHead):
        name = "clash"
        loss_keys = ("clash",)
        output_keys = ("near",)

    with pytest.raises(ValueError, match=r"output keys claimed twice.*'near': \['depth', 'clash'\]"):
        _decoder(_DepthHead(_DepthConfig(), hidden_size=32), Clash(_DepthConfig(), hidden_size=32))

    class Sloppy(_DepthHead):
        def postprocess(self, pred, ctx):
            return [{"depth": 0.0}] * ctx.num_objects

    decoder = _decoder(Sloppy(_DepthConfig(), hidden_size=32))
    with pytest.raises(ValueError, match=r"declares output_keys \['depth', 'near'\] but postprocessed \['depth'\]"):
        decoder.postprocess(decoder(inputs), inputs)


# --- one packer -----------------------------------------------------------------------------------------


def _samples(tmp_path) -> list[Sample]:
    path = tmp_path / "img.png"
    noise_image(112, 168).save(path)  # a 4 x 6 grid
    rec = Sample(
        id="a", image=str(path), task="rec", prompt="Find the red circle.",
        answer='The "the red circle" refers to <|Obj_0|> in this image.',
        objects=[ObjectAnn("the red circle", (0.0, 0.0, 0.5, 0.5), extra={"depth": 2.5})], image_size=(112, 168),
    )  # fmt: skip
    ovd = Sample(
        id="b", image=str(path), task="ovd", prompt="Find cats.",
        answer='There are 2 "cat" (<|Obj_0|>, <|Obj_1|>) in this image.',
        objects=[ObjectAnn("cat", (0.5, 0.0, 1.0, 0.5)),
                 ObjectAnn("cat", (0.0, 0.5, 0.5, 1.0), extra={"depth": [1, 2]})],
        image_size=(112, 168),
    )  # fmt: skip
    return [rec, ovd]


def test_training_and_predict_pack_the_same_objects_the_same_way(tiny_model, tmp_path):
    batch = PaDTCollator(tiny_model, vrt_per_object=3, seed=0)(_samples(tmp_path))
    # what predict sees: the parser on the same completions
    parsed = [
        tiny_model.codec.parse(row[mask.bool()], num_cells=24)
        for row, mask in zip(batch.completion_ids, batch.completion_mask)
    ]
    inferred = ObjectBatch.from_parsed(parsed)
    for field in ("sample", "counts", "positions", "cells"):
        assert torch.equal(getattr(inferred, field), getattr(batch.objects, field)), field
    with torch.no_grad():
        length = batch.completion_ids.shape[1]
        out = tiny_model(
            batch.prompt, batch.completion_ids, completion_mask=batch.completion_mask, logits_to_keep=length + 1
        )
    train = pack_objects(batch.objects, out.encoded, out.hidden_states, batch.original_sizes)
    infer = pack_objects(inferred, out.encoded, out.hidden_states, batch.original_sizes)
    assert torch.equal(train.vrt_states, infer.vrt_states) and torch.equal(train.image_index, infer.image_index)
    train.validate()
    # the state that emitted VRT t of sample b is hidden[b, t]
    torch.testing.assert_close(train.vrt_states[0], out.hidden_states[0, int(batch.objects.positions[0])])
    # warm-up: each VRT's own prototype instead
    warm = pack_objects(batch.objects, out.encoded, None, batch.original_sizes, from_prototypes=True)
    image = out.encoded.image_index[1]
    torch.testing.assert_close(warm.vrt_states[-1], out.encoded.prototypes[image][int(batch.objects.cells[-1])])
    # the extras by key, None where an annotation lacks it; floats as float32, integers as they are
    depth = batch.objects.targets.extras["depth"]
    assert depth[1] is None and depth[0].dtype == torch.float32 and depth[2].tolist() == [1, 2]


def test_the_training_batch_is_a_mapping_that_moves_and_pickles(tiny_model, tmp_path):
    batch = PaDTCollator(tiny_model, vrt_per_object=2, seed=0)(_samples(tmp_path))
    assert isinstance(batch, TrainBatch) and "labels" not in batch and len(batch) == len(list(batch))
    assert batch["completion_ids"] is batch.completion_ids
    with pytest.raises(KeyError, match="TrainBatch has no field 'obj_boxes'"):
        batch["obj_boxes"]
    moved = batch.map_tensors(lambda t: t.clone())  # what .to(device) and .pin_memory() go through
    assert moved.objects.targets.extras["depth"][0] is not batch.objects.targets.extras["depth"][0]
    assert torch.equal(moved.prompt["input_ids"], batch.prompt["input_ids"])
    again = pickle.loads(pickle.dumps(batch))  # DataLoader workers send batches between processes
    assert torch.equal(again.objects.cells, batch.objects.cells) and again.original_sizes == batch.original_sizes


# --- predictions -----------------------------------------------------------------------------------------


def test_predicted_objects_keep_every_output_and_write_json():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    outputs = {"depth": torch.tensor(2.5), "keypoints": np.array([[1.0, 2.0, 1.0]]), "second_mask": mask}
    obj = PredictedObject("cat", [3, 4], box=(1, 2, 3, 4), mask=mask, outputs=outputs)
    assert obj.box == (1, 2, 3, 4) and obj.score is None and obj.outputs["depth"].item() == 2.5
    record = object_json(obj)
    assert list(record) == ["label", "vrt", "box", "score", "mask", "depth", "keypoints", "second_mask"]
    assert record["box"] == [1.0, 2.0, 3.0, 4.0] and record["mask"] == {"shape": [4, 6], "area": 6}
    assert record["depth"] == 2.5 and record["keypoints"] == [[1.0, 2.0, 1.0]]
    assert record["second_mask"] == record["mask"]  # any bool [H, W] output is written like a mask
    assert object_json(obj, rle=True)["second_mask"]["size"] == [4, 6]
    assert json_value({"a": (np.float32(1.5), None)}) == {"a": [1.5, None]}
    with pytest.raises(TypeError, match="output 'x' is a object, which has no JSON form"):
        json_value(object(), key="x")

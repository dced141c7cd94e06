"""PaDTModel with decoder heads: predict fills box/score/mask; a [box]-only recipe trains and predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import noise_image, sharpen

import padt_core
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.train.collator import PaDTCollator
from padt_core.train.step import compute_losses

DECODER = {"trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}}


def build(heads: list[str]) -> padt_core.PaDTModel:
    torch.manual_seed(0)
    model = padt_core.build("tiny_qwen", {"decoder": {**DECODER, "heads": heads}}).eval()
    sharpen(model)
    return model


def test_predict_fills_box_score_mask_in_image_coordinates():
    torch.set_num_threads(1)
    model = build(["box", "score", "mask"])
    images = [noise_image(140, 252, 1), noise_image(90, 60, 2)]
    preds = model.predict(images, ["find the red circle", "hi"], max_new_tokens=10)
    objects = [(o, im) for p, im in zip(preds, images) for o in p.objects]
    assert objects, "the sharpened model should emit VRT runs"
    for obj, image in objects:
        x1, y1, x2, y2 = obj.box
        assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height
        assert 0.0 <= obj.score <= 1.0
        assert obj.mask.shape == (image.height, image.width) and obj.mask.dtype == np.bool_


def test_box_only_recipe_trains_a_step_and_predicts(tmp_path):
    torch.set_num_threads(1)
    model = build(["box"])
    assert list(model.decoder.heads) == ["box"]
    path = tmp_path / "img.png"
    noise_image(112, 112).save(path)
    sample = Sample(
        id="s",
        image=str(path),
        task="rec",
        prompt='Please carefully check the image and detect the object this sentence describes: "x".',
        answer='The "x" refers to <|Obj_0|> in this image.',
        objects=[ObjectAnn(label="x", box=(0.0, 0.0, 0.5, 0.5))],
    )
    batch = PaDTCollator(model, vrt_per_object=3)([sample, sample])
    model.train()
    losses = compute_losses(model, batch, step=10**6)
    assert set(losses) == {"token", "box_giou", "box_l1", "skipped_box", "loss"}
    before = model.decoder.state_dict()["heads.box.mlp.0.weight"].clone()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    losses["loss"].backward()
    optim.step()
    assert not torch.equal(before, model.decoder.state_dict()["heads.box.mlp.0.weight"])
    model.eval()
    preds = model.predict(noise_image(112, 112), "find x", max_new_tokens=8)
    for obj in preds[0].objects:
        assert obj.box is not None and obj.mask is None and obj.score is None


@pytest.mark.parametrize("heads", [["mask"]])
def test_mask_head_without_fine_features_is_a_clear_error(heads):
    model = build(heads)
    batch = model.prepare([noise_image(112, 112)], ["find x"])
    encoded = model.encode(batch)
    for f in encoded.features:
        f.fine, f.fine_grid = None, None
    from padt_core.decoder import DecoderInputs

    inputs = DecoderInputs(
        features=encoded.features,
        prototypes=encoded.prototypes,
        image_index=torch.tensor([0]),
        vrt_states=torch.zeros(2, model.backbone.hidden_size),
        vrt_cells=torch.tensor([0, 1]),
        counts=torch.tensor([2]),
        original_sizes=[(112, 112)],
    )
    with pytest.raises(ValueError, match="fine"):
        model.decoder(inputs)

"""Collator: VRT targets on the processor grid, robust-CE masks, 5-point strategy, skipped samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import noise_image

from padt_core.data.sample import ObjectAnn, Sample
from padt_core.train.collator import PaDTCollator, five_point_cells, pick_vrt_targets
from padt_core.train.step import token_loss

V = 832


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "img.png"
    noise_image(112, 112).save(path)  # 112 px = a 4 x 4 grid of 28-px cells
    return str(path)


def rec_sample(image: str, box=(0.0, 0.0, 0.5, 0.5), sid="s0") -> Sample:
    return Sample(
        id=sid,
        image=image,
        task="rec",
        prompt='Please carefully check the image and detect the object this sentence describes: "the red circle".',
        answer='The "the red circle" refers to <|Obj_0|> in this image.',
        objects=[ObjectAnn(label="the red circle", box=box)],
        image_size=(112, 112),
    )


def test_targets_and_robust_mask_on_hand_made_example(tiny_model, image_path):
    collator = PaDTCollator(tiny_model, vrt_per_object=3, seed=0)
    batch = collator([rec_sample(image_path)])
    assert batch.prompt["image_grids"] == [(4, 4)]
    completion = batch.completion_ids[0]
    positions = batch.objects.positions.tolist()
    cells = batch.objects.cells.tolist()
    assert (completion[positions] - V).tolist() == cells
    assert len(set(cells)) == 3 and set(cells) <= {0, 1, 4, 5}  # the box covers the top-left 2 x 2 cells
    ignore = batch.vrt_ignore[0]
    for t, cell in zip(positions, cells):
        assert set(ignore[t].nonzero().flatten().tolist()) == {0, 1, 4, 5} - {cell}
    others = [t for t in range(completion.shape[0]) if t not in positions]
    assert not ignore[others].any()  # text positions are untouched
    assert completion[batch.completion_mask[0].bool()][-1] == tiny_model.backbone.eos_token_ids[0]
    text = tiny_model.codec.decode(completion)
    assert text.startswith('The "the red circle" refers to <|VRT_') and text.endswith(" in this image.")
    torch.testing.assert_close(batch.objects.targets.boxes, torch.tensor([[0.0, 0.0, 0.5, 0.5]]))


def test_robust_ce_ignores_sibling_cells():
    logits = torch.zeros(1, 1, V + 4)
    logits[0, 0, V + 1] = 5.0  # a sibling cell of the target is the model's favourite
    target = torch.tensor([[V + 0]])
    mask = torch.ones(1, 1)
    ignore = torch.zeros(1, 1, 4, dtype=torch.bool)
    plain = token_loss(logits, target, mask, None, V, "per_token")
    ignore[0, 0, 1] = True
    robust = token_loss(logits, target, mask, ignore, V, "per_token")
    assert robust < plain
    expected = -torch.log_softmax(torch.cat([logits[0, 0, : V + 1], logits[0, 0, V + 2 :]]), 0)[V]
    torch.testing.assert_close(robust, expected)


def test_five_point_picks_extremes():
    rng = np.random.default_rng(0)
    grid_w = 5
    plus = [2, 6, 7, 8, 12]  # a plus sign in a 3 x 3 block
    centre, left, top, right, bottom = five_point_cells(plus, grid_w, rng)
    assert (centre, left, top, right, bottom) == (7, 6, 2, 8, 12)
    few = pick_vrt_targets([3, 9], 5, rng)  # fewer cells than K: with replacement
    assert len(few) == 5 and set(few) <= {3, 9}
    many = pick_vrt_targets(list(range(10)), 5, rng)  # enough cells: without replacement
    assert len(set(many)) == 5
    assert pick_vrt_targets([4, 1], -1, rng) == [1, 4]


def test_bad_samples_are_skipped_and_counted(tiny_model, image_path, tmp_path):
    collator = PaDTCollator(tiny_model, vrt_per_object=2)
    missing = rec_sample(str(tmp_path / "missing.png"), sid="missing")
    tiny = rec_sample(image_path, box=(0.0, 0.0, 0.001, 0.001), sid="tiny")  # covers no cell
    good = rec_sample(image_path, sid="good")
    batch = collator([missing, tiny, good])
    assert batch.completion_ids.shape[0] == 1
    # the readers' reason keys (padt_core/data/reader.py), so the training summary counts each once
    assert collator.skipped == {"missing_image": 1, "object_covers_no_cell": 1, "sample_covers_no_cell": 1}
    # the batch carries its own skips (a DataLoader worker's counter never reaches the main process)
    assert batch.skipped == collator.skipped and batch.to("cpu").skipped == batch.skipped
    again = collator([missing, good])
    assert again.skipped == {"missing_image": 1} and collator.skipped["missing_image"] == 2

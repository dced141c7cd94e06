"""Cell-geometry switches: VRT query positions, the hull box prior, random 1..K cell subsets in training."""

from __future__ import annotations

import torch
from helpers import noise_image

import padt_core
from padt_core.decoder import DecoderInputs
from padt_core.objects import ObjectBatch
from padt_core.train.step import _random_prefix

GEOMETRY = {
    "decoder": {
        "trunk": {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "cell_positions": True},
        "heads": [{"name": "box", "prior": "hull"}, "score"],
    }
}


def decoder_inputs(model, cells: list[list[int]]) -> DecoderInputs:
    batch = model.prepare([noise_image(112, 224)], ["x"])  # a 4 x 8 VRT grid
    encoded = model.encode(batch)
    flat = [c for obj in cells for c in obj]
    return DecoderInputs(
        features=encoded.features,
        prototypes=encoded.prototypes,
        image_index=torch.zeros(len(cells), dtype=torch.long),
        vrt_states=torch.randn(len(flat), model.backbone.hidden_size),
        vrt_cells=torch.tensor(flat),
        counts=torch.tensor([len(c) for c in cells]),
        original_sizes=[(112, 224)],
    )


def test_hull_prior_starts_at_the_cells_hull_and_positions_change_queries():
    torch.set_num_threads(1)
    model = padt_core.build("tiny_qwen", GEOMETRY).eval()
    box = model.decoder.heads["box"]
    with torch.no_grad():
        box.mlp[-1].weight.zero_()
        box.mlp[-1].bias.zero_()
    inputs = decoder_inputs(model, [[0, 1, 9], [30, 31]])  # grid 4 x 8: rows 0-1 cols 0-1; row 3 cols 6-7
    with torch.no_grad():
        pred = model.decoder(inputs)["box"]
    expected = torch.tensor([[1 / 8, 1 / 4, 2 / 8, 2 / 4], [7 / 8, 7 / 8, 2 / 8, 1 / 4]])
    torch.testing.assert_close(pred, expected, atol=1e-3, rtol=0)
    moved = decoder_inputs(model, [[2, 3, 11], [30, 31]])
    moved.vrt_states = inputs.vrt_states
    with torch.no_grad():
        out_a = model.decoder(inputs)["score"]
        out_b = model.decoder(moved)["score"]
    assert not torch.allclose(out_a[0], out_b[0])  # same states, other cells: the queries know where


def _objects(counts: torch.Tensor, keep: torch.Tensor | None = None) -> ObjectBatch:
    cells = torch.arange(int(counts.sum()))
    return ObjectBatch(sample=torch.zeros_like(counts), counts=counts, positions=cells + 100, cells=cells, keep=keep)


def test_random_prefix_keeps_one_to_k_per_object():
    torch.manual_seed(0)
    counts = torch.tensor([5, 1, 3] * 50)
    kept = _random_prefix(_objects(counts))
    kept_cells, kept_counts = kept.cells, kept.counts
    assert ((kept_counts >= 1) & (kept_counts <= counts)).all()
    assert kept_cells.numel() == int(kept_counts.sum())
    assert set(kept_counts[::3].tolist()) == {1, 2, 3, 4, 5}
    starts = torch.cumsum(counts, 0) - counts
    first = torch.cumsum(kept_counts, 0) - kept_counts
    assert torch.equal(kept_cells[first], starts)  # each object keeps a prefix of its own cells
    assert torch.equal(kept.positions, kept_cells + 100)  # positions (hence states) follow their cells


def test_random_prefix_takes_the_collators_counts():
    kept = _random_prefix(_objects(torch.tensor([5, 1, 3]), keep=torch.tensor([2, 1, 3])))
    assert kept.counts.tolist() == [2, 1, 3]
    assert kept.cells.tolist() == [0, 1, 5, 6, 7, 8]


def test_collator_draws_cell_subsets_per_sample(tiny_model, tmp_path):
    """The same sample (same per-sample seed) gets the same subset sizes in any batch it lands in."""
    from helpers import noise_image

    from padt_core.data.sample import ObjectAnn, Sample
    from padt_core.train.collator import PaDTCollator

    path = tmp_path / "im.png"
    noise_image(224, 224).save(path)
    objects = [ObjectAnn(label="a", box=(0.1, 0.1, 0.6, 0.6)), ObjectAnn(label="b", box=(0.5, 0.5, 0.9, 0.9))]
    sample = Sample(id="s", image=str(path), task="ovd", prompt="find", answer="<|Obj_0|> <|Obj_1|>", objects=objects)
    other = Sample(id="t", image=str(path), task="rec", prompt="find", answer="<|Obj_0|>", objects=objects[:1])
    collate = PaDTCollator(tiny_model)
    alone = collate([{"sample": sample, "seed": [0, 0, 7]}])
    mixed = collate([{"sample": other, "seed": [0, 0, 3]}, {"sample": sample, "seed": [0, 0, 7]}])
    assert alone.objects.keep.tolist() == mixed.objects.keep[1:].tolist()
    assert ((alone.objects.keep >= 1) & (alone.objects.keep <= alone.objects.counts)).all()

"""``layout: reference``: the released checkpoints' window-ordered arrangement, index map by index map (§4.2-4.3)."""

from __future__ import annotations

import padt_plugins.decoders as decoders
import pytest
import torch
from transformers.vision_utils import get_vision_window_index

from padt_core.decoder import DecoderInputs, PaDTDecoder
from padt_core.features import VisualFeatures
from padt_core.layout import RasterLayout, ReferenceLayout, get_layout, window_order
from padt_core.plugins import list_plugins, register_plugin
from padt_core.recipe import DecoderConfig

# §4.2's small example: H = 4, W = 12 patches -> merged grid 2 x 6.
FINE, GRID = (4, 12), (2, 6)


@pytest.fixture(scope="module", autouse=True)
def _decoder_plugins() -> None:
    if "padt" not in list_plugins("trunks")["trunks"]:
        register_plugin(decoders)


def test_window_order_of_the_small_example():
    assert window_order(GRID).tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 4, 5, 10, 11]


@pytest.mark.parametrize("thw", [(1, 4, 12), (1, 46, 30), (1, 34, 46), (1, 16, 16), (1, 6, 10), (1, 2, 2)])
def test_window_order_matches_the_vision_tower(thw):
    """The same permutation Qwen2.5-VL's tower applies (window 112 px, patch 14, merge 2)."""
    expected, _ = get_vision_window_index(torch.tensor([thw]), 2, 112, 14)
    assert window_order((thw[1] // 2, thw[2] // 2)).tolist() == expected.tolist()


def test_fine_rows_are_window_ordered_merge_blocks():
    """Sequence index 4j..4j+3 = the 2x2 patches (TL, TR, BL, BR) of the j-th cell in window order."""
    layout = ReferenceLayout()
    pos = layout.fine_positions(FINE).tolist()
    assert pos[0:4] == [[0, 0], [0, 1], [1, 0], [1, 1]]  # cell 0
    assert pos[4:8] == [[0, 2], [0, 3], [1, 2], [1, 3]]  # cell 1: patch rows 0-1, cols 2-3
    assert pos[8:12] == [[0, 4], [0, 5], [1, 4], [1, 5]]  # cell 2
    assert pos[12:16] == [[0, 6], [0, 7], [1, 6], [1, 7]]  # cell 3
    assert pos[16:20] == [[2, 0], [2, 1], [3, 0], [3, 1]]  # cell 6 (second window's first row ends the first)
    assert pos[32:36] == [[0, 8], [0, 9], [1, 8], [1, 9]]  # cell 4: first cell of the second window
    # fine_order indexes the raster fine features; positions are exactly where those rows sit
    order = layout.fine_order(FINE)
    assert sorted(order.tolist()) == list(range(48))
    assert layout.fine_positions(FINE).tolist() == RasterLayout().fine_positions(FINE)[order].tolist()


def test_fine_rows_match_the_processor_and_tower_order():
    """Independent construction: processor order (merge-block raster), then the tower's window permutation."""
    h, w = FINE
    processor = [(2 * r + a, 2 * c + b) for r in range(h // 2) for c in range(w // 2) for a in (0, 1) for b in (0, 1)]
    window_index, _ = get_vision_window_index(torch.tensor([[1, h, w]]), 2, 112, 14)
    tower = [processor[4 * j + s] for j in window_index.tolist() for s in range(4)]
    assert [tuple(p) for p in ReferenceLayout().fine_positions(FINE).tolist()] == tower


def test_low_res_rows_take_the_position_of_the_window_ordered_cell():
    """Low-res row j = raster prototype j, rotary position of sub-patch 0 of the j-th window-ordered cell."""
    pos = ReferenceLayout().cell_positions(GRID, 2).tolist()
    assert pos == [[0, 0], [0, 2], [0, 4], [0, 6], [2, 0], [2, 2], [2, 4], [2, 6], [0, 8], [0, 10], [2, 8], [2, 10]]
    # raster cell 4 is (0, 4) in fine units (0, 8), but its row gets (2, 0): the §4.3 misalignment
    assert pos[4] != RasterLayout().cell_positions(GRID, 2).tolist()[4]


def test_fine_rows_add_low_res_rows_by_sequence_index():
    parents = ReferenceLayout().fine_to_cell(GRID, FINE)
    assert parents.tolist() == [i // 4 for i in range(48)]
    with pytest.raises(ValueError, match="is not grid"):
        ReferenceLayout().fine_to_cell((2, 5), FINE)


def test_mask_blocks_land_at_sequence_index_cells():
    """Fine row i is drawn at cell (i // W, i % W): rows 4-7 at (0, 4)..(0, 7), rows 12-15 at (1, 0)..(1, 3)."""
    layout = ReferenceLayout()
    values = torch.arange(48, dtype=torch.float32).view(1, 48, 1, 1).expand(1, 48, 4, 4)
    canvas = layout.place_patches(values, torch.tensor([list(FINE)]))
    assert tuple(canvas.shape) == (1, 16, 48)
    cell = canvas[0, ::4, ::4]  # one value per fine cell
    assert cell[0, 4:8].tolist() == [4, 5, 6, 7]
    assert cell[1, 0:4].tolist() == [12, 13, 14, 15]
    assert cell.flatten().tolist() == list(range(48))


def test_identity_window_order_keeps_low_res_aligned():
    """Grids at most 4 cells wide: windows are the identity, so low-res positions are the raster ones."""
    assert ReferenceLayout().cell_positions((3, 4), 2).tolist() == RasterLayout().cell_positions((3, 4), 2).tolist()


def test_get_layout_by_name():
    assert isinstance(get_layout("reference"), ReferenceLayout)
    with pytest.raises(ValueError, match="known: raster, reference"):
        get_layout("window")


@pytest.mark.parametrize("memory", ["dense", "factored"])
def test_decoder_runs_in_reference_layout(memory):
    """The trunk and heads take the layout's index maps; dense and factored memories agree."""
    torch.manual_seed(0)
    d = 32
    config = DecoderConfig.model_validate(
        {
            "trunk": {"name": "padt", "hidden_size": d, "intermediate_size": 64, "num_heads": 2, "memory": memory},
            "heads": ["box", "score", "mask"],
            "layout": "reference",
        }
    )
    decoder = PaDTDecoder.from_config(config, llm_hidden_size=d, vision_hidden_size=d).eval()
    feats = VisualFeatures(
        tokens=torch.randn(12, d),
        grid=GRID,
        cell_size=28,
        image_size=(56, 168),
        fine=torch.randn(48, d),
        fine_grid=FINE,
    )
    inputs = DecoderInputs(
        features=[feats],
        prototypes=[torch.randn(12, d)],
        image_index=torch.tensor([0, 0]),
        vrt_states=torch.randn(5, d),
        vrt_cells=torch.tensor([0, 4, 5, 10, 11]),
        counts=torch.tensor([2, 3]),
        original_sizes=[(56, 168)],
    )
    with torch.no_grad():
        out = decoder(inputs)
        if memory == "factored":
            dense = PaDTDecoder.from_config(
                config.model_copy(update={"trunk": config.trunk.model_copy(update={"memory": "dense"})}),
                llm_hidden_size=d,
                vision_hidden_size=d,
            ).eval()
            dense.load_state_dict(decoder.state_dict())
            ref = dense(inputs)
            torch.testing.assert_close(out["mask"], ref["mask"], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out["box"], ref["box"], rtol=1e-4, atol=1e-4)
    assert tuple(out["mask"].shape) == (2, 16, 48)
    assert tuple(out["box"].shape) == (2, 4)


def _decode(layout: str, grid: tuple[int, int], seed: int = 0):
    torch.manual_seed(seed)
    d = 32
    config = DecoderConfig.model_validate(
        {
            "trunk": {"name": "padt", "hidden_size": d, "intermediate_size": 64, "num_heads": 2, "memory": "dense"},
            "heads": ["box", "score", "mask"],
            "layout": layout,
        }
    )
    decoder = PaDTDecoder.from_config(config, llm_hidden_size=d, vision_hidden_size=d).eval()
    with torch.no_grad():  # init std 0.02 leaves every box at ~0.5: larger weights make outputs tell layouts apart
        for p in decoder.parameters():
            if p.dim() == 2:
                p.mul_(8)
    h, w = grid
    gen = torch.Generator().manual_seed(1)
    feats = VisualFeatures(
        tokens=torch.randn(h * w, d, generator=gen),
        grid=grid,
        cell_size=28,
        image_size=(28 * h, 28 * w),
        fine=torch.randn(4 * h * w, d, generator=gen),
        fine_grid=(2 * h, 2 * w),
    )
    inputs = DecoderInputs(
        features=[feats],
        prototypes=[torch.randn(h * w, d, generator=gen)],
        image_index=torch.tensor([0]),
        vrt_states=torch.randn(3, d, generator=gen),
        vrt_cells=torch.tensor([0, 1, h * w - 1]),
        counts=torch.tensor([3]),
        original_sizes=[(28 * h, 28 * w)],
    )
    with torch.no_grad():
        return decoder(inputs)


def test_identity_window_order_changes_only_the_mask_placement():
    """Grid 3x4 (one window column): the reference's memory is the raster memory re-ordered, so boxes and
    scores agree exactly, and its mask is the raster one with patch p(i)'s block drawn at (i // W, i % W)."""
    raster, reference = _decode("raster", (3, 4)), _decode("reference", (3, 4))
    torch.testing.assert_close(reference["box"], raster["box"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference["score"], raster["score"], rtol=1e-5, atol=1e-6)
    fh, fw = 6, 8
    blocks = raster["mask"][0].view(fh, 4, fw, 4).permute(0, 2, 1, 3).reshape(fh * fw, 4, 4)  # raster patch blocks
    order = ReferenceLayout().fine_order((fh, fw))
    expected = blocks[order].view(fh, fw, 4, 4).permute(0, 2, 1, 3).reshape(4 * fh, 4 * fw)
    torch.testing.assert_close(reference["mask"][0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference["mask"], raster["mask"])  # 2x2 blocks drawn as 1x4 strips


def test_windowed_grid_changes_boxes_too():
    """Grid 2x6 (two window columns): misaligned low-res positions and additions reach every output (§4.3)."""
    raster, reference = _decode("raster", GRID), _decode("reference", GRID)
    assert (raster["box"] - reference["box"]).abs().max() > 1e-3
    assert (raster["score"] - reference["score"]).abs().max() > 1e-3

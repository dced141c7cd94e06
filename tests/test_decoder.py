"""Decoder API: plugins, packing, packed == one-by-one, factored == dense memory, losses, gradients, bad input."""

from __future__ import annotations

import json
import types

import numpy as np
import padt_plugins.decoders as decoders
import pytest
import torch

from padt_core.decoder import DecoderInputs, ObjectTargets, PaDTDecoder
from padt_core.features import VisualFeatures
from padt_core.plugins import list_plugins, register_plugin
from padt_core.recipe import DecoderConfig, RecipeError, load_recipe

D_LLM, D_VIS = 24, 20
TINY = {"name": "padt", "hidden_size": 32, "intermediate_size": 64, "num_heads": 4}


@pytest.fixture(scope="module", autouse=True)
def _decoder_plugins() -> None:
    """Register the built-in decoder plugins when the installed entry points do not (yet) list them."""
    if "padt" not in list_plugins("trunks")["trunks"]:
        register_plugin(decoders)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_inputs(
    grids: list[tuple[int, int]],
    objects: list[tuple[int, int]],
    *,
    fine: bool = True,
    seed: int = 0,
) -> DecoderInputs:
    """Random inputs: ``grids`` per image (VRT grid, fine factor 2), ``objects`` = (image, K) each."""
    gen = torch.Generator().manual_seed(seed)
    features, prototypes = [], []
    for h, w in grids:
        features.append(
            VisualFeatures(
                tokens=torch.randn(h * w, D_LLM, generator=gen),
                grid=(h, w),
                cell_size=28,
                image_size=(28 * h, 28 * w),
                fine=torch.randn(4 * h * w, D_VIS, generator=gen) if fine else None,
                fine_grid=(2 * h, 2 * w) if fine else None,
            )
        )
        prototypes.append(torch.randn(h * w, D_LLM, generator=gen))
    counts = torch.tensor([k for _, k in objects], dtype=torch.long)
    cells = [torch.randint(0, grids[b][0] * grids[b][1], (k,), generator=gen) for b, k in objects]
    return DecoderInputs(
        features=features,
        prototypes=prototypes,
        image_index=torch.tensor([b for b, _ in objects], dtype=torch.long),
        vrt_states=torch.randn(int(counts.sum()), D_LLM, generator=gen),
        vrt_cells=torch.cat(cells) if cells else torch.zeros(0, dtype=torch.long),
        counts=counts,
        original_sizes=[(28 * h + 5, 28 * w - 3) for h, w in grids],
    )


def make_decoder(
    heads=("box", "score", "mask"), *, memory: str = "factored", seed: int = 0, compile: bool = False, **trunk
) -> PaDTDecoder:
    torch.manual_seed(seed)
    config = DecoderConfig(trunk={**TINY, "memory": memory, **trunk}, heads=list(heads), compile=compile)
    decoder = PaDTDecoder.from_config(config, llm_hidden_size=D_LLM, vision_hidden_size=D_VIS)
    with torch.no_grad():  # larger weights than the 0.02 init, so memory updates matter in comparisons
        for p in decoder.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return decoder


def make_targets(n: int, seed: int = 0, with_masks: bool = True) -> ObjectTargets:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 0.5
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(n, 2, generator=gen) * 0.4], dim=1)
    masks = [torch.rand(40 + o, 50, generator=gen) > 0.5 if with_masks and o % 3 != 1 else None for o in range(n)]
    return ObjectTargets(boxes=boxes, masks=masks)


GRIDS = [(3, 5), (4, 2)]  # two images of different sizes and aspect ratios
OBJECTS = [(0, 3), (1, 5), (0, 1), (1, 2), (0, 5)]


def one_object(inputs: DecoderInputs, o: int) -> DecoderInputs:
    """Object ``o`` alone with its own image, as a caller decoding objects one by one would pass it."""
    b = int(inputs.image_index[o])
    start = int(inputs.counts[:o].sum())
    stop = start + int(inputs.counts[o])
    return DecoderInputs(
        features=[inputs.features[b]],
        prototypes=[inputs.prototypes[b]],
        image_index=torch.zeros(1, dtype=torch.long),
        vrt_states=inputs.vrt_states[start:stop],
        vrt_cells=inputs.vrt_cells[start:stop],
        counts=inputs.counts[o : o + 1],
        original_sizes=[inputs.original_sizes[b]],
    )


# --- plugins and construction ----------------------------------------------------------------------------


def test_builtin_decoder_plugins_registered():
    plugins = list_plugins()
    assert "padt" in plugins["trunks"]
    assert {"box", "score", "mask"} <= set(plugins["heads"])


def test_config_defaults_are_reference_widths_and_typos_fail():
    config = DecoderConfig(trunk="padt", heads=["box", "score", "mask"])
    assert (config.trunk.hidden_size, config.trunk.intermediate_size, config.trunk.num_heads) == (1280, 3420, 16)
    assert (config.heads[0].giou_weight, config.heads[0].l1_weight, config.heads[2].threshold) == (1.0, 1.0, 0.5)
    with pytest.raises(RecipeError, match="giou_wieght"):
        load_recipe({"extends": "tiny_qwen", "name": "x", "decoder": {"trunk": "padt", "heads": [
            {"name": "box", "giou_wieght": 2}]}})  # fmt: skip
    with pytest.raises(ValueError, match="divisible by 4"):
        DecoderConfig(trunk={"name": "padt", "hidden_size": 36, "num_heads": 6}, heads=["box"])


def test_head_dependencies_and_fine_features_checked_at_build():
    with pytest.raises(ValueError, match=r"'score' needs head\(s\) \['box'\]"):
        PaDTDecoder.from_config(DecoderConfig(trunk=TINY, heads=["score"]), llm_hidden_size=8, vision_hidden_size=8)
    with pytest.raises(ValueError, match="'mask' needs fine image features"):
        PaDTDecoder.from_config(DecoderConfig(trunk=TINY, heads=["mask"]), llm_hidden_size=8, vision_hidden_size=None)
    with pytest.raises(ValueError, match="more than once"):
        PaDTDecoder.from_config(
            DecoderConfig(trunk=TINY, heads=["box", "box"]), llm_hidden_size=8, vision_hidden_size=8
        )
    cfg = DecoderConfig(trunk=TINY, heads=["box"], layout="reference")  # released checkpoints' layout (issue 7)
    assert PaDTDecoder.from_config(cfg, llm_hidden_size=8, vision_hidden_size=8).layout.name == "reference"


# --- forward, postprocess -----------------------------------------------------------------------------------


def test_forward_shapes_and_postprocess():
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder().eval()
    with torch.no_grad():
        out = decoder(inputs)
    for name, value in decoder(inputs).items():  # inference (in-place) and autograd paths agree
        torch.testing.assert_close(out[name], value.detach(), atol=1e-5, rtol=1e-4)
    assert tuple(out["box"].shape) == (5, 4) and tuple(out["score"].shape) == (5,)
    assert tuple(out["mask"].shape) == (5, 4 * 8, 4 * 10)  # largest fine grid: 8 rows (image 1), 10 cols (image 0)
    assert out["mask"][1, 32:, :].abs().sum() == 0 and out["mask"][1, :, 16:].abs().sum() == 0  # outside image 1
    results = decoder.postprocess(out, inputs)
    assert len(results) == 5 and set(results[0]) == {"box", "score", "mask"}
    for o, res in enumerate(results):
        h, w = inputs.original_sizes[int(inputs.image_index[o])]
        x1, y1, x2, y2 = res["box"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert 0.0 <= res["score"] <= 1.0
        assert res["mask"].dtype == np.bool_ and res["mask"].shape == (h, w)


def test_box_postprocess_converts_and_clips():
    inputs = make_inputs([(2, 3)], [(0, 2), (0, 1)])
    decoder = make_decoder(("box",))
    out = decoder(inputs)
    out._predictions["box"] = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.9, 0.1, 0.6, 0.4]])
    (box0,), (box1,) = [[r["box"]] for r in decoder.postprocess(out)]
    h, w = inputs.original_sizes[0]
    assert box0 == pytest.approx([0.25 * w, 0.375 * h, 0.75 * w, 0.625 * h])
    assert box1 == pytest.approx([0.6 * w, 0.0, w, 0.3 * h])  # clipped right and top


@pytest.mark.parametrize("memory", ["factored", "dense"])
def test_packed_equals_one_by_one(memory):
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder(memory=memory).eval()
    with torch.no_grad():
        packed = decoder(inputs)
        for o in range(inputs.num_objects):
            single = decoder(one_object(inputs, o))
            fh, fw = inputs.features[int(inputs.image_index[o])].fine_grid
            torch.testing.assert_close(single["box"][0], packed["box"][o], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(single["score"][0], packed["score"][o], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(single["mask"][0], packed["mask"][o, : 4 * fh, : 4 * fw], atol=1e-5, rtol=1e-4)


def test_factored_memory_equals_dense_memory():
    inputs = make_inputs(GRIDS, OBJECTS, seed=3)
    dense, factored = make_decoder(memory="dense", seed=1), make_decoder(memory="factored", seed=1)
    assert dense.state_dict().keys() == factored.state_dict().keys()
    out_d, out_f = dense(inputs), factored(inputs)
    assert out_d["mask"].abs().max() > 1e-2  # the comparison is not between near-zero tensors
    for name in ("box", "score", "mask"):
        torch.testing.assert_close(out_f[name], out_d[name], atol=1e-5, rtol=1e-4)
    targets = make_targets(inputs.num_objects)
    loss_d, loss_f = dense.loss(out_d, targets), factored.loss(out_f, targets)
    torch.testing.assert_close(loss_f["total"], loss_d["total"])
    loss_d["total"].backward()
    loss_f["total"].backward()
    for (name, p_d), p_f in zip(dense.named_parameters(), factored.parameters()):
        torch.testing.assert_close(p_f.grad, p_d.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_memory_updates_change_outputs():
    """Objects of one image get different memories: the image→query update is per object."""
    inputs = make_inputs([(3, 4)], [(0, 2), (0, 2)])
    decoder = make_decoder()
    with torch.no_grad():
        out = decoder(inputs)
        for block in (decoder.trunk.low_res_transformer, decoder.trunk.high_res_transformer1):
            block.cross_attn_image_to_query.proj.weight.zero_()
        frozen = decoder(inputs)
    assert (out["mask"] - frozen["mask"]).abs().max() > 1e-3


# --- losses and gradients -------------------------------------------------------------------------------


def test_loss_terms_are_float32_and_weighted():
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder()
    out = decoder(inputs)
    targets = make_targets(inputs.num_objects)
    losses = decoder.loss(out, targets, inputs)
    skipped = {"skipped_box", "skipped_score", "skipped_mask"}
    assert set(losses) == {"box_giou", "box_l1", "score", "mask_dice", "mask_focal", "total"} | skipped
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in losses.values())
    terms = [v for k, v in losses.items() if k != "total" and k not in skipped]
    torch.testing.assert_close(losses["total"], sum(terms))
    # make_targets gives objects 1 and 4 no mask: left out of the mask loss, and counted
    assert [losses[k].item() for k in ("skipped_box", "skipped_score", "skipped_mask")] == [0, 0, 2]
    decoder.heads["box"].config.giou_weight = 3.0
    decoder.heads["mask"].config.focal_weight = 0.0
    again = decoder.loss(out, targets)
    torch.testing.assert_close(again["box_giou"], 3 * losses["box_giou"])
    assert again["mask_focal"] == 0


def test_every_parameter_gets_a_gradient():
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder()
    losses = decoder.loss(decoder(inputs), make_targets(inputs.num_objects))
    losses["total"].backward()
    missing = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_bf16_decoder_losses_in_float32():
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder().to(torch.bfloat16)
    out = decoder(inputs)
    assert out["box"].dtype == torch.bfloat16
    losses = decoder.loss(out, make_targets(inputs.num_objects))
    assert losses["total"].dtype == torch.float32 and torch.isfinite(losses["total"])
    losses["total"].backward()


def test_box_only_decoder_trains_and_predicts():
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder(("box",))
    # no head reads the memory: the last block has no memory update, so nothing sits outside the graph
    assert not hasattr(decoder.trunk.high_res_transformer2, "cross_attn_image_to_query")
    targets = make_targets(inputs.num_objects, with_masks=False)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    history = []
    for _ in range(6):
        losses = decoder.loss(decoder(inputs), targets)
        assert set(losses) == {"box_giou", "box_l1", "total", "skipped_box"}
        optimizer.zero_grad()
        losses["total"].backward()
        assert all(p.grad is not None for p in decoder.parameters())
        optimizer.step()
        history.append(losses["total"].item())
    assert history[-1] < history[0]
    results = decoder.postprocess(decoder(inputs))
    assert [set(r) for r in results] == [{"box"}] * 5


def test_mask_loss_without_any_gt_mask_is_zero_but_connected():
    inputs = make_inputs(GRIDS, OBJECTS)
    decoder = make_decoder()
    losses = decoder.loss(decoder(inputs), make_targets(inputs.num_objects, with_masks=False))
    assert losses["mask_dice"] == 0 and losses["mask_focal"] == 0
    losses["total"].backward()
    assert decoder.heads["mask"].upscale2.weight.grad is not None


def test_empty_batch_forward_and_zero_loss_touching_every_parameter():
    inputs = make_inputs(GRIDS, [])
    decoder = make_decoder()
    out = decoder(inputs)
    assert tuple(out["box"].shape) == (0, 4) and tuple(out["score"].shape) == (0,) and out["mask"].shape[0] == 0
    assert decoder.postprocess(out, inputs) == []
    losses = decoder.loss(out, ObjectTargets(boxes=torch.zeros(0, 4)), inputs)
    terms = {"box_giou", "box_l1", "score", "mask_dice", "mask_focal", "total"}
    assert set(losses) == terms | {"skipped_box", "skipped_score", "skipped_mask"}
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    losses["total"].backward()
    assert [n for n, p in decoder.named_parameters() if p.grad is None] == []


# --- bad input ----------------------------------------------------------------------------------------------


def test_object_without_vrts_is_an_error_naming_it():
    inputs = make_inputs(GRIDS, [(0, 2), (1, 1), (0, 2)])
    inputs.counts = torch.tensor([2, 0, 3])
    with pytest.raises(ValueError, match="object 1 has 0 VRTs"):
        make_decoder()(inputs)


def test_vrt_outside_its_image_is_an_error_naming_it():
    inputs = make_inputs(GRIDS, [(0, 2), (1, 3)])
    inputs.vrt_cells[3] = 8  # image 1 is 4x2 = 8 cells
    with pytest.raises(ValueError, match=r"object 1: VRT 1 has cell index 8, outside its image 1 \(grid 4x2 = 8"):
        make_decoder()(inputs)


def test_mask_head_without_fine_features_says_so():
    inputs = make_inputs(GRIDS, OBJECTS, fine=False)
    decoder = make_decoder()
    with pytest.raises(ValueError, match=r"mask head needs fine image features \(VisualFeatures.fine\)"):
        decoder(inputs)
    boxes_only = make_decoder(("box", "score"))  # same trunk, low-res stage only
    out = boxes_only(inputs)
    assert tuple(out["box"].shape) == (5, 4) and torch.isfinite(out["box"]).all()


def test_trunk_without_fine_support_works_on_low_res_only():
    torch.manual_seed(0)
    config = DecoderConfig(trunk=TINY, heads=["box", "score"])
    decoder = PaDTDecoder.from_config(config, llm_hidden_size=D_LLM, vision_hidden_size=None)
    assert not hasattr(decoder.trunk, "high_res_transformer1")
    inputs = make_inputs(GRIDS, OBJECTS, fine=False)
    losses = decoder.loss(decoder(inputs), make_targets(5, with_masks=False))
    losses["total"].backward()
    assert [n for n, p in decoder.named_parameters() if p.grad is None] == []


def test_inconsistent_batches_are_errors():
    inputs = make_inputs(GRIDS, OBJECTS)
    inputs.features[1] = make_inputs([(4, 2)], [], fine=False).features[0]
    with pytest.raises(ValueError, match=r"images \[0\] carry fine features and images \[1\] do not"):
        make_decoder()(inputs)
    inputs = make_inputs(GRIDS, OBJECTS)
    inputs.image_index[2] = 7
    with pytest.raises(ValueError, match="object 2 points to image 7"):
        make_decoder()(inputs)
    inputs = make_inputs(GRIDS, OBJECTS)
    inputs.vrt_states = inputs.vrt_states[:, :10]
    inputs.prototypes = [p[:, :10] for p in inputs.prototypes]
    with pytest.raises(ValueError, match="vrt_states have width 10"):
        make_decoder()(inputs)
    with pytest.raises(ValueError, match="2 masks for 5 objects"):
        decoder = make_decoder()
        decoder.loss(decoder(make_inputs(GRIDS, OBJECTS)), ObjectTargets(torch.zeros(5, 4), [None, None]))


def test_decoder_benchmark_json():
    from padt_bench.decoder import bench_decoder

    result = bench_decoder(
        hidden_size=32, intermediate_size=64, num_heads=4, llm_hidden_size=24, vision_hidden_size=20, grid=(2, 3),
        vrts_per_object=2, object_counts=(1, 10, 100), batch_images=2, objects_per_image=3,
    )  # fmt: skip
    assert [c["objects"] for c in result["cases"]] == [1, 10, 100, 6]
    assert result["config"]["fine_grid"] == [4, 6]
    assert result["speedup_100"] > 0 and result["growth_100_over_10"] > 0 and result["peak_mem_mb"] >= 0
    json.dumps(result)


def test_auto_memory_picks_the_cheaper_kind():
    """``memory: auto``: factored only with many objects per image and a decoder wider than its low rank."""
    from padt_plugins.decoders.factored_memory import FactoredMemory
    from padt_plugins.decoders.memory import DenseMemory
    from padt_plugins.decoders.trunk import PaDTTrunk, PaDTTrunkConfig

    def kind(width: int, heads: int, objects: int, images: int, queries: int = 8, rows=None, device=None):
        # the rule reads only the config and the width: no need to build a 1280-wide trunk for it
        config = PaDTTrunkConfig(hidden_size=width, intermediate_size=width, num_heads=heads, memory="auto")
        trunk = types.SimpleNamespace(config=config, hidden_size=width)
        return PaDTTrunk._memory_kind(trunk, objects, images, queries, rows, device)

    # reference widths: R = 3 * (16 * 8 + 1) = 387 against d = 1280
    assert kind(1280, 16, objects=100, images=1) is FactoredMemory
    assert kind(1280, 16, objects=5, images=1) is FactoredMemory  # 387 < 1280 * 0.8
    assert kind(1280, 16, objects=3, images=2) is FactoredMemory  # 387 < 1280 / 3
    assert kind(1280, 16, objects=4, images=3) is DenseMemory  # 387 > 1280 / 4
    assert kind(1280, 16, objects=1, images=1) is DenseMemory  # nothing to share
    # the tiny recipes' decoder (64 wide, 4 heads): R = 99 > 64, dense even with many objects per image
    assert kind(64, 4, objects=100, images=1) is DenseMemory
    # on an accelerator dense copies win while objects x rows x width stays within 2**26 elements
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert kind(1280, 16, objects=12, images=8, rows=256, device=cuda) is DenseMemory  # a 3B training batch
    assert kind(1280, 16, objects=12, images=8, rows=256, device=cpu) is FactoredMemory  # CPUs pay products
    assert kind(1280, 16, objects=100, images=1, rows=1024, device=cuda) is FactoredMemory  # 131 M elements
    assert kind(1280, 16, objects=52, images=1, rows=1024, device=cuda) is FactoredMemory  # just above 2**26
    assert kind(1280, 16, objects=51, images=1, rows=1024, device=cuda) is DenseMemory  # just below
    assert kind(1280, 16, objects=51, images=1, rows=1024, device=cpu) is FactoredMemory

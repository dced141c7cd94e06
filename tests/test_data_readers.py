"""Dataset readers round-trip tiny COCO / RefCOCO / RIC / PaDT-json fixtures written by the tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from padt_plugins.datasets.coco import CocoDataset, CocoDatasetConfig
from padt_plugins.datasets.padt_json import PaDTJsonDataset, PaDTJsonDatasetConfig
from padt_plugins.datasets.refcoco import RefCocoDataset, RefCocoDatasetConfig, load_refs
from padt_plugins.datasets.ric import RicDataset, RicDatasetConfig
from PIL import Image

from padt_core.data.reader import DataWarning
from padt_core.data.sample import decode_mask, object_cells
from padt_core.rle import encode

COVERAGE = 1 / 28  # Qwen2.5-VL's default: one pixel row of a 28-px cell


H, W = 60, 80
PERSON_A = [8, 6, 24, 6, 24, 18, 8, 18]  # bbox [8, 6, 16, 12] → normalised (0.1, 0.1, 0.3, 0.3)
PERSON_B = [[40, 30, 48, 30, 48, 40, 40, 40], [60, 30, 70, 30, 70, 40, 60, 40]]  # two parts


def write_image(path: Path, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def crowd_rle(height: int, width: int) -> dict:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[40:50, 5:20] = 1
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:  # uncompressed column-major runs, as COCO stores crowd regions
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    return {"size": [height, width], "counts": [int(r) for r in runs]}


def dump(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", H, W)
    write_image(images / "b.png", H, W)
    write_image(images / "c.png", H, W)
    (images / "corrupt.png").write_bytes(b"this is not a png")
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}, {"id": 3, "name": "dog"}]
    cats += [{"id": 10 + k, "name": f"thing{k}"} for k in range(7)]  # 10 categories in all
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 6, 16, 12], "area": 192, "segmentation": [PERSON_A]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 40, 15, 10], "area": 150, "iscrowd": 1,
         "segmentation": crowd_rle(H, W)},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [40, 30, 30, 10], "area": 180, "segmentation": PERSON_B},
        {"id": 4, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 25,
         "segmentation": {"size": [10, 10], "counts": [0, 100]}},  # RLE of another image size
        {"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 0, "segmentation": [[1, 1, 2, 2]]},
        {"id": 6, "image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100},  # box only
        {"id": 7, "image_id": 5, "category_id": 2, "bbox": [20, 0, 10, 10], "area": 100},
        {"id": 8, "image_id": 5, "category_id": 2, "bbox": [40, 0, 10, 10], "area": 100},
        {"id": 9, "image_id": 5, "category_id": 1, "bbox": [40, 30, 10, 10], "area": 100},
    ]  # fmt: skip
    images_json = [
        {"id": 1, "file_name": "a.png", "height": H, "width": W},
        {"id": 2, "file_name": "b.png", "height": H, "width": W},
        {"id": 3, "file_name": "missing.png", "height": H, "width": W},
        {"id": 4, "file_name": "corrupt.png", "height": H, "width": W},
        {"id": 5, "file_name": "c.png", "height": H, "width": W},
    ]
    ann_file = dump(tmp_path / "instances_val.json", {"images": images_json, "annotations": anns, "categories": cats})
    return ann_file, images


def read(reader):
    with pytest.warns(DataWarning) as caught:
        samples = reader.samples()
    return samples, [str(w.message) for w in caught]


# --- coco -----------------------------------------------------------------------------------------


def test_coco_val_samples_and_reference_wording(coco):
    ann_file, images = coco
    ds = CocoDataset(CocoDatasetConfig(annotations=str(ann_file), image_dir=str(images), mode="val"))
    samples, messages = read(ds)
    assert [s.id for s in samples] == ["coco/1", "coco/2", "coco/5"]
    names = ["person", "car", "dog"] + [f"thing{k}" for k in range(7)]
    first = samples[0]
    assert first.task == "ovd" and first.image_size == (H, W) and first.image == str(images / "a.png")
    assert first.prompt == (
        "Please carefully check the image and detect the following objects: " + json.dumps(names) + "."
    )
    assert first.answer == 'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).'
    person_a, person_b, dog = first.objects
    assert person_a.box == pytest.approx((0.1, 0.1, 0.3, 0.3)) and person_a.label == "person"
    assert decode_mask(person_a, (H, W))[6:18, 8:24].all() and decode_mask(person_a, (H, W)).sum() == 192
    both = decode_mask(person_b, (H, W))
    assert both[30:40, 40:48].all() and both[30:40, 60:70].all() and not both[30:40, 50:58].any()
    assert dog.iscrowd and dog.category_id == 3 and decode_mask(dog, (H, W)).sum() == 150
    assert samples[1].answer == "No objects from the list are present in the image." and samples[1].objects == []
    assert samples[2].answer == (
        'In this image, there are 1 "person" (<|Obj_0|>), 3 "car" (<|Obj_1|>, <|Obj_2|>, <|Obj_3|>).'
    )
    assert samples[2].objects[1].mask is None  # box-only annotation
    assert ds.skipped == {"missing_image": 1, "corrupt_image": 1, "rle_size": 1, "empty_mask": 1}
    assert any("missing.png" in m and "image 3" in m and str(ann_file) in m for m in messages)
    assert any("annotation 4" in m and "RLE size [10, 10]" in m for m in messages)


def test_coco_max_per_class_removes_category_from_prompt_and_answer(coco):
    ann_file, images = coco
    cfg = CocoDatasetConfig(annotations=str(ann_file), image_dir=str(images), mode="val", max_per_class=2)
    with pytest.warns(DataWarning):
        sample = CocoDataset(cfg)[2]
    assert '"car"' not in sample.prompt and '"person"' in sample.prompt
    assert sample.answer == 'There is 1 "person" (<|Obj_0|>) in this image.'


def test_coco_train_prompts_are_seeded_per_epoch_and_keep_present_categories(coco):
    ann_file, images = coco
    cfg = CocoDatasetConfig(annotations=str(ann_file), image_dir=str(images), mode="train", drop_rate=1.0, seed=3)
    with pytest.warns(DataWarning):
        ds = CocoDataset(cfg)
        len(ds)
    prompts = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        sample = ds[0]
        names = json.loads(sample.prompt.split("objects: ")[1][:-1])
        assert {"person", "dog"} <= set(names)  # present categories are always kept
        assert 5 <= len(names) <= 7  # 5 of 10 dropped, present ones re-admitted
        # Answer groups follow the prompt order.
        assert sample.answer.index('"person"') < sample.answer.index('"dog"') or names.index("dog") < names.index(
            "person"
        )
        prompts.append(sample.prompt)
    assert len(set(prompts)) > 1  # varies by epoch
    with pytest.warns(DataWarning):
        again = CocoDataset(cfg)
        again.set_epoch(5)
        assert again[0].prompt == prompts[5]  # reproducible from (seed, epoch, image id)
    no_drop = CocoDataset(cfg.model_copy(update={"drop_rate": 0.0}))
    with pytest.warns(DataWarning):
        assert len(json.loads(no_drop[0].prompt.split("objects: ")[1][:-1])) == 10


def test_all_records_bad_is_a_configuration_error(coco, tmp_path):
    ann_file, _ = coco
    cfg = CocoDatasetConfig(annotations=str(ann_file), image_dir=str(tmp_path / "nowhere"), mode="val")
    with pytest.warns(DataWarning), pytest.raises(ValueError, match="every record .* was skipped"):
        len(CocoDataset(cfg))


# --- refcoco --------------------------------------------------------------------------------------


@pytest.fixture
def refcoco(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "refcoco"
    root.mkdir()
    images = tmp_path / "train2014"
    images.mkdir()
    write_image(images / "COCO_train2014_000000000001.jpg", H, W)
    anns = [
        {"id": 101, "image_id": 1, "category_id": 1, "bbox": [40, 30, 30, 10], "area": 180, "segmentation": PERSON_B},
        {"id": 102, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 15], "area": 300},  # box only
    ]
    dump(
        root / "instances.json",
        {
            "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
        },
    )

    def ref(ref_id, ann_id, split, sentences):
        sents = [
            {"sent_id": ref_id * 10 + k, "sent": s, "raw": s, "tokens": s.split()} for k, s in enumerate(sentences)
        ]
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": 1, "split": split, "category_id": 1, "sentences": sents}

    refs = [
        ref(1, 101, "train", ["man on right", "guy in two halves"]),
        ref(2, 102, "train", ["red car"]),
        ref(3, 999, "train", ["ghost"]),
        ref(4, 101, "val", ["val sentence"]),
    ]
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root, images


def test_refcoco_rec_one_sample_per_sentence(refcoco):
    root, images = refcoco
    ds = RefCocoDataset(RefCocoDatasetConfig(root=str(root), image_dir=str(images), split="train"))
    samples, messages = read(ds)
    assert [s.id for s in samples] == ["refcoco/rec/1/10", "refcoco/rec/1/11", "refcoco/rec/2/20"]
    first = samples[0]
    assert first.task == "rec"
    assert first.prompt == (
        'Please carefully check the image and detect the object this sentence describes: "man on right".'
    )
    assert first.answer == 'The "man on right" refers to <|Obj_0|> in this image.'
    (obj,) = first.objects
    assert obj.label == "man on right" and obj.ann_id == 101
    assert obj.box == pytest.approx((0.5, 0.5, 70 / 80, 40 / 60))
    mask = decode_mask(obj, (H, W))
    assert mask[30:40, 40:48].all() and mask[30:40, 60:70].all() and mask.sum() == 180  # parts OR-ed
    assert samples[2].objects[0].mask is None
    assert ds.skipped == {"missing_annotation": 1}
    assert any("ref 3" in m and "ann 999" in m and "refs(unc).p" in m for m in messages)


def test_refcoco_res_needs_masks_and_val_split(refcoco):
    root, images = refcoco
    res = RefCocoDataset(RefCocoDatasetConfig(root=str(root), image_dir=str(images), split="train", task="res"))
    samples, _ = read(res)
    assert [s.task for s in samples] == ["res", "res"]
    assert res.skipped == {"missing_annotation": 1, "no_mask": 1}
    val = RefCocoDataset(RefCocoDatasetConfig(root=str(root), image_dir=str(images), split="val"))
    assert [s.prompt.split('"')[1] for s in val.samples()] == ["val sentence"]


def test_refs_pickle_refuses_code(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref": Path("x")}]))
    with pytest.raises(ValueError, match="only plain data"):
        load_refs(path)


# --- ric ------------------------------------------------------------------------------------------


def test_ric_captions_to_placeholders(coco, tmp_path):
    ann_file, images = coco
    data = json.loads(ann_file.read_text())
    data["images"] = [dict(data["images"][0]), dict(data["images"][4])]
    data["images"][0]["captions"] = [
        "a person (<box_id: 1/>) next to a dog (<box_id: 2/>).",
        "two people (<box_id: 1/>, <box_id: 6/>) and a ghost (<box_id: 999/>), and a car (<box_id: 4/>).",
        "no final stop (<box_id: 1/>)",
    ]
    ric_file = dump(tmp_path / "ric.json", data)
    ds = RicDataset(RicDatasetConfig(annotations=str(ric_file), image_dir=str(images)))
    samples, messages = read(ds)
    assert [s.id for s in samples] == ["ric/1/0", "ric/1/1"]
    assert samples[0].prompt == "Please describe this image."
    assert samples[0].answer == "a person (<|Obj_0|>) next to a dog (<|Obj_1|>)."
    assert [o.ann_id for o in samples[0].objects] == [1, 2] and samples[0].objects[0].label == ""
    # ann 6 is on another image, 999 does not exist, 4 has an RLE of the wrong size.
    assert samples[1].answer == "two people (<|Obj_0|>) and a ghost, and a car."
    assert ds.skipped == {"dropped_marker": 3, "caption_end": 1}
    assert any("annotation 6 (on image 5)" in m for m in messages)


# --- padt_json ------------------------------------------------------------------------------------


def reference_patches(mask: np.ndarray) -> list[int]:
    """The reference's §6.2 rule on a 28-multiple image: mean of each 28×28 block ≥ 1/28."""
    h, w = mask.shape
    blocks = mask.reshape(h // 28, 28, w // 28, 28).mean(axis=(1, 3))
    return np.flatnonzero(blocks.ravel() >= 1 / 28).tolist()


def test_padt_json_round_trip_and_patches_on_the_grid(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    h, w = 84, 112  # a 3 × 4 grid of 28-px cells
    write_image(images / "x.png", h, w)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[20:70, 30:60] = 1
    mask[5:8, 90:112] = 1  # a thin second part: 66 px in cell (0, 3) → ≥ 28 px, kept
    rle = encode(mask)
    patches = reference_patches(mask.astype(bool))
    obj = {"bbox": [30 / w, 5 / h, 1.0, 70 / h], "patches": patches, "rle": rle, "label": "the thing", "iscrowd": 0,
           "area": int(mask.sum())}  # fmt: skip
    prompt = '<image>\nPlease carefully check the image and detect the object this sentence describes: "the thing".'
    records = [
        {"id": 1, "image": "x.png", "task": "refering", "conversations": [{"from": "human", "value": prompt}],
         "answer_template": 'The "the thing" refers to <|Obj_0|> in this image.', "objects": [obj]},
        {"id": 2, "image": "x.png", "task": "ovd", "conversations": [{"from": "human", "value": "<image>Find."}],
         "answer_template": "No objects from the list are present in the image.", "objects": []},
        {"id": 3, "image": "x.png", "task": "ric", "conversations": [{"from": "human", "value": "Describe."}]},
        {"id": 4, "image": "gone.png", "task": "ovd", "conversations": [{"from": "human", "value": "Find."}],
         "answer_template": "x", "objects": []},
        {"id": 5, "image": "x.png", "task": "ovd", "conversations": [{"from": "human", "value": "Find."}],
         "answer_template": "<|Obj_0|>", "objects": [{**obj, "rle": {"size": [10, 10], "counts": [100]}}]},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken json\n")
    ds = PaDTJsonDataset(PaDTJsonDatasetConfig(path=str(path), image_dir=str(images)))
    samples, messages = read(ds)
    assert [s.id for s in samples] == ["padt_json/1", "padt_json/2"]
    rec = samples[0]
    assert rec.task == "rec" and rec.image_size == (h, w)
    assert rec.prompt == prompt.removeprefix("<image>\n")
    assert samples[1].prompt == "Find."
    (thing,) = rec.objects
    assert thing.box == pytest.approx((30 / w, 5 / h, 1.0, 70 / h))
    assert rec.meta["patch_grid"] == (3, 4) and rec.meta["patches"] == [patches]
    # Our cells on the reference's grid are the stored patches.
    assert (
        object_cells(thing, rec.meta["patch_grid"], rec.image_size, coverage=COVERAGE)
        == patches
        == [1, 2, 3, 5, 6, 9, 10]
    )
    assert ds.skipped == {"bad_record": 2, "missing_image": 1, "image_size": 1}
    assert any("line 3" in m and "KeyError" in m for m in messages)
    assert any("line 6" in m for m in messages)


def test_padt_json_list_file_and_res_task(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    write_image(images / "x.png", 56, 56)
    record = {"id": 7, "image": "x.png", "task": "refering", "conversations": [{"from": "human", "value": "p"}],
              "answer_template": "<|Obj_0|>", "objects": [{"bbox": [0, 0, 0.5, 0.5], "label": "l",
                                                           "extra": {"centroid": [0.2, 0.3]}}]}  # fmt: skip
    bad = {**record, "id": 8, "objects": [{"bbox": [0, 0, 0.5, 0.5], "extra": {"box": [0, 0, 1, 1]}}]}
    path = dump(tmp_path / "data.json", [record, bad])
    ds = PaDTJsonDataset(PaDTJsonDatasetConfig(path=str(path), image_dir=str(images), refering_task="res"))
    (sample,), messages = read(ds)
    assert sample.task == "res" and sample.objects[0].mask is None and sample.image_size == (56, 56)
    assert sample.objects[0].extra == {"centroid": [0.2, 0.3]}  # further targets by key, as the file gives them
    assert ds.skipped == {"bad_record": 1} and any("extra key(s) ['box']" in m for m in messages)
    assert object_cells(sample.objects[0], (2, 2), sample.image_size, coverage=COVERAGE) == [0]

"""The ``vlm_r1`` reader (VLM-R1's processed RefCOCO split files) and per-split scoring of its samples."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from padt_plugins.datasets.vlm_r1 import EVAL_SPLITS, VlmR1DatasetConfig, image_id_of, split_file_name
from PIL import Image
from pydantic import ValidationError

from padt_core.data.reader import DataWarning, build_dataset
from padt_core.eval import evaluate_splits
from padt_core.model import PredictedObject, Prediction
from padt_core.plugins import get_plugin
from padt_core.rle import decode, encode

H, W = 40, 80  # every test image is 40 x 80 (h x w)
IMAGES = ("train2014/COCO_train2014_000000000042.jpg", "train2014/COCO_train2014_000000000077.jpg")


def item(image: str, caption: str, solution, **extra) -> dict:
    """One VLM-R1 item as the split files hold it (``problem`` is not read)."""
    return {
        "image": image,
        "normal_caption": caption,
        "solution": solution,
        "problem": "Please output the bbox.",
        **extra,
    }


@pytest.fixture
def files(tmp_path):
    """Two images, a refcoco_val file (3 items, one with a duplicate key) and a refcocop_val file."""
    for name in IMAGES:
        path = tmp_path / "coco" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(path)
    root = tmp_path / "rec_jsons_processed"
    root.mkdir()
    refcoco = [
        item(IMAGES[0], "left dog", [0, 0, 20, 40], height=H, width=W),
        item(IMAGES[0], "left dog", [0, 0, 20, 40], height=H, width=W),  # VLM-R1 files repeat keys
        item(IMAGES[1], "right cat", [40, 10, 80, 30]),  # no height/width: read from the image header
    ]
    (root / "refcoco_val.json").write_text(json.dumps(refcoco))
    (root / "refcocop_val.json").write_text(json.dumps([item(IMAGES[1], "cat", [40, 10, 80, 30])]))
    return tmp_path, root


def read(**config) -> tuple[list, dict]:
    reader = build_dataset(VlmR1DatasetConfig(**config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        samples = reader.samples()
    return samples, dict(reader.skipped)


def test_items_become_referring_samples_with_split_and_image_id(files):
    tmp, root = files
    samples, skipped = read(root=str(root), image_dir=str(tmp / "coco"), splits=["refcoco_val", "refcocop_val"])
    assert skipped == {}
    ids = ["vlm_r1/refcoco_val/0", "vlm_r1/refcoco_val/1", "vlm_r1/refcoco_val/2", "vlm_r1/refcoco+_val/0"]
    assert [s.id for s in samples] == ids
    first, third, plus = samples[0], samples[2], samples[3]
    assert first.task == "rec" and first.image_size == (H, W)
    assert first.objects[0].box == (0.0, 0.0, 0.25, 1.0) and first.objects[0].label == "left dog"
    assert third.objects[0].box == (0.5, 0.25, 1.0, 0.75) and third.image_size == (H, W)
    assert first.prompt.endswith('"left dog".') and '"left dog" refers to <|Obj_0|>' in first.answer
    assert (first.meta["image_id"], third.meta["image_id"]) == (42, 77)
    assert plus.meta["split"] == "refcoco+_val"  # the paper's name; the file is refcocop_val.json
    assert get_plugin("datasets", "vlm_r1").Config is VlmR1DatasetConfig


def test_names_and_defaults():
    assert split_file_name("refcoco+_testB") == "refcocop_testB.json"
    assert image_id_of("COCO_train2014_000000380440.jpg") == 380440
    assert len(EVAL_SPLITS) == 8
    assert VlmR1DatasetConfig(root="r", image_dir="i").splits == list(EVAL_SPLITS)


def test_missing_split_file_and_res_without_masks_are_one_clear_error(files):
    tmp, root = files
    with pytest.raises(FileNotFoundError, match=r"refcocog_test\.json does not exist .*evaluation splits: refcoco_val"):
        read(root=str(root), image_dir=str(tmp / "coco"), splits=["refcocog_test"])
    with pytest.raises(ValidationError, match="task res needs ground_truth"):
        VlmR1DatasetConfig(root=str(root), image_dir="i", task="res")


def test_bad_items_are_skipped_and_counted(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    image = "COCO_train2014_000000000005.jpg"
    Image.new("RGB", (W, H)).save(tmp_path / image)
    items = [
        item(image, "", [0, 0, 5, 5]),
        item(image, "ok", [10, 0, 5, 5]),  # x2 < x1
        item("no_number_here.jpg", "ok", [0, 0, 5, 5]),
        item(image, "ok", [0, 0, 5, 5], height=H + 1, width=W),  # disagrees with the file
        item(image, "kept", [0, 0, 8, 4]),
    ]
    (root / "refcoco_val.json").write_text(json.dumps(items))
    samples, skipped = read(root=str(root), image_dir=str(tmp_path), splits=["refcoco_val"])
    assert [s.objects[0].label for s in samples] == ["kept"]
    assert skipped == {"empty_sentence": 1, "bad_box": 1, "bad_image": 1, "image_size": 1}


def _processed(directory, split: str, records: list[dict]) -> None:
    """The reference's processed split file: one json object per line, in a .json file."""
    directory.mkdir(exist_ok=True)
    (directory / f"{split}.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_ground_truth_from_the_processed_files_gives_boxes_and_masks(files):
    tmp, root = files
    mask = np.zeros((H, W), dtype=bool)
    mask[0:40, 0:10] = True
    records = [
        {"id": 42, "image": "x.jpg", "objects": [{"label": "left dog", "bbox": [0, 0, 0.125, 1], "rle": encode(mask)}]}
    ]
    _processed(tmp / "padt", "refcoco_val", records)
    config = {
        "root": str(root),
        "image_dir": str(tmp / "coco"),
        "splits": ["refcoco_val"],
        "ground_truth": str(tmp / "padt"),
    }
    samples, skipped = read(**config, task="res")
    assert skipped == {"no_ground_truth": 1}  # image 77's "right cat" has no processed record
    assert [s.id for s in samples] == ["vlm_r1/refcoco_val/0", "vlm_r1/refcoco_val/1"]
    assert samples[0].task == "res" and samples[0].objects[0].box == (0.0, 0.0, 0.125, 1.0)
    assert decode(samples[0].objects[0].mask).sum() == 400
    (tmp / "padt" / "refcoco_val.json").write_text('{"id": 42, "objects": [{"label": "a"}]}\n{"id": 4\n')
    with pytest.raises(ValueError, match=r"refcoco_val\.json line 2: not a json object"):
        read(**config)


def test_splits_scored_apart_and_averaged_with_each_item_counted(files):
    """refcoco_val: items 0 and 1 share a key; the answer to item 0 is right, item 1's is empty, item
    2's misses. standard: 1/3. reference: the key's best (1.0) counts for both items 0 and 1 -> 2/3.
    refcoco+_val: its one item is answered right but labelled "a cat" (not echoed): standard 1/1,
    reference 0/1. Averages over the two splits: standard (1/3 + 1) / 2 = 2/3, reference (2/3 + 0) / 2 = 1/3."""
    tmp, root = files
    samples, _ = read(root=str(root), image_dir=str(tmp / "coco"), splits=["refcoco_val", "refcocop_val"])

    def answer(label, box):
        return Prediction("", [PredictedObject(label=label, vrt=[0], box=list(box), score=0.9)])

    predictions = [answer("left dog", (0, 0, 20, 40)), Prediction("", []), answer("right cat", (0, 0, 10, 10))]
    predictions.append(answer("a cat", (40, 10, 80, 30)))
    report = evaluate_splits(predictions, samples, ["rec"], protocol="both")
    assert report["splits"]["refcoco_val"]["rec_acc50"] == pytest.approx(1 / 3)
    assert report["splits"]["refcoco_val"]["rec_acc50_reference"] == pytest.approx(2 / 3)
    assert report["splits"]["refcoco+_val"] == {"rec_acc50": 1.0, "rec_acc50_reference": 0.0}
    assert report["rec_acc50"] == pytest.approx(2 / 3) and report["rec_acc50_reference"] == pytest.approx(1 / 3)
    assert report["counts"]["refcoco_val/rec_reference"]["duplicate_keys"] == 1
    assert report["counts"]["refcoco+_val/rec_reference"]["echo_dropped"] == 1


def test_padt_eval_runs_every_split_in_one_call_and_prints_the_table(files, one_thread):
    """An untrained tiny model over two splits: the per-split rows and the average row are printed."""
    import contextlib
    import io

    from padt_core.cli import main

    tmp, root = files
    section = {
        "name": "vlm_r1",
        "root": str(root),
        "image_dir": str(tmp / "coco"),
        "splits": ["refcoco_val", "refcocop_val"],
    }
    data = tmp / "vlm_r1.yaml"
    data.write_text(json.dumps(section))
    out, report_path = io.StringIO(), tmp / "report.json"
    argv = [
        "eval",
        "tiny_qwen_shapes",
        "--data",
        data,
        "--protocol",
        "both",
        "--max-new-tokens",
        "4",
        "--out",
        report_path,
    ]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    report = json.loads(report_path.read_text())
    assert list(report["splits"]) == ["refcoco_val", "refcoco+_val"]
    assert report["average"] == "unweighted mean over 2 splits" and report["eval"]["tasks"] == ["rec"]
    splits = report["splits"].values()
    assert report["rec_acc50_reference"] == pytest.approx(sum(s["rec_acc50_reference"] for s in splits) / 2)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["split", "rec_acc50", "rec_acc50_reference"]
    assert [line.split()[0] for line in lines[2:5]] == ["refcoco_val", "refcoco+_val", "average"]

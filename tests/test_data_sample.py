"""Sample model, mask decoding, VRT cell coverage (``object_cells``) and task templates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from padt_core.data.sample import (
    MaskSizeError,
    ObjectAnn,
    Sample,
    box_from_xywh,
    cell_coverage,
    decode_mask,
    object_cells,
    rle_decode,
    segmentation_to_rle,
)
from padt_core.data.templates import (
    TaskTemplates,
    drop_objects,
    ovd_answer,
    ovd_prompt,
    rec_answer,
    rec_prompt,
    ric_answer,
)
from padt_core.rle import encode as rle_of

COVERAGE = 1 / 28  # Qwen2.5-VL's default: one pixel row of a 28-px cell


def mask_object(mask: np.ndarray, label: str = "x") -> ObjectAnn:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h) if len(xs) else (0, 0, 0, 0)
    return ObjectAnn(label=label, box=box, mask=rle_of(mask))


def brute_force_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Exact area coverage by upsampling: with each pixel repeated gh×gw times, cells align with pixels."""
    gh, gw = grid
    h, w = mask.shape
    up = np.repeat(np.repeat(mask.astype(np.float64), gh, axis=0), gw, axis=1)
    return up.reshape(gh, h, gw, w).mean(axis=(1, 3))


# --- RLE decoding ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), density=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_rle_decode_matches_pycocotools(h, w, density, seed):
    mask = np.random.default_rng(seed).random((h, w)) < density
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert np.array_equal(rle_decode(rle), mask)
    assert np.array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"].decode()}), mask)


def test_rle_decode_long_runs_and_uncompressed_counts():
    mask = np.zeros((480, 640), dtype=bool)
    mask[100:400, 50:600] = True  # runs longer than 2^15 need several 5-bit groups
    assert np.array_equal(rle_decode(rle_of(mask)), mask)
    assert rle_decode({"size": [3, 2], "counts": [1, 4, 1]}).tolist() == [[False, True], [True, True], [True, False]]


def test_rle_decode_rejects_runs_of_the_wrong_total():
    with pytest.raises(ValueError, match="runs add up to 5 pixels, size 3x2 needs 6"):
        rle_decode({"size": [3, 2], "counts": [1, 4]})


# --- decode_mask / segmentation_to_rle -----------------------------------------------------------


def test_decode_mask_size_mismatch_names_the_record():
    obj = ObjectAnn(label="dog", box=(0, 0, 1, 1), mask=rle_of(np.ones((10, 20), bool)), ann_id=7)
    with pytest.raises(MaskSizeError, match=r"object 'dog' \(ann 7\) of sample coco/3: RLE size 10x20 .* 20x10"):
        decode_mask(obj, (20, 10), record="sample coco/3")
    assert decode_mask(obj, (10, 20)).all()
    with pytest.raises(ValueError, match="has no mask"):
        decode_mask(ObjectAnn(label="box", box=(0, 0, 1, 1)), (10, 20))


def test_multi_part_polygons_are_ored():
    parts = [[0, 0, 4, 0, 4, 4, 0, 4], [12, 12, 16, 12, 16, 16, 12, 16], [1, 1, 2, 2]]  # last: degenerate
    rle = segmentation_to_rle(parts, 16, 16)
    mask = rle_decode(rle)
    assert mask[0:4, 0:4].all() and mask[12:16, 12:16].all()
    assert mask.sum() == 32
    cells = object_cells(ObjectAnn(label="two parts", box=(0, 0, 1, 1), mask=rle), (4, 4), (16, 16), coverage=COVERAGE)
    assert cells == [0, 15]  # both squares (opposite corners), nothing between them


def test_crowd_uncompressed_rle_and_wrong_size():
    # Column-major runs: 5 background, 10 foreground, rest background (as COCO crowd annotations).
    crowd = {"size": [30, 40], "counts": [5, 10, 1185]}
    rle = segmentation_to_rle(crowd, 30, 40)
    assert isinstance(rle["counts"], str)
    mask = rle_decode(rle)
    assert mask.sum() == 10 and mask[5:15, 0].all()
    obj = ObjectAnn(label="people", box=(0, 0, 0.1, 0.5), mask=rle, iscrowd=True)
    assert object_cells(obj, (3, 4), (30, 40), coverage=COVERAGE) == [0, 4]
    with pytest.raises(MaskSizeError, match=r"RLE size \[30, 40\] does not match the image size \[40, 30\]"):
        segmentation_to_rle(crowd, 40, 30)


# --- object_cells ---------------------------------------------------------------------------------


def test_coverage_boundary_is_inclusive_at_one_28th():
    # One 28×28 cell: 28 px is exactly 1/28 of it (kept), 27 px is not (the reference's >= rule).
    exact = np.zeros((56, 84), dtype=bool)
    exact[30, 28:56] = True  # 28 px in cell (1, 1)
    assert object_cells(mask_object(exact), (2, 3), (56, 84), coverage=COVERAGE) == [4]
    short = exact.copy()
    short[30, 28] = False
    assert object_cells(mask_object(short), (2, 3), (56, 84), coverage=COVERAGE) == []
    assert object_cells(mask_object(short), (2, 3), (56, 84), coverage=27 / 784) == [4]


def test_non_square_grid_raster_ids():
    # 3 rows × 5 columns; a mask in row 2, column 4 must be id 2*5 + 4 = 14, not 2*3 + 4.
    mask = np.zeros((84, 140), dtype=bool)
    mask[60:80, 115:135] = True
    assert object_cells(mask_object(mask), (3, 5), (84, 140), coverage=COVERAGE) == [14]
    assert object_cells(mask_object(mask.T), (5, 3), (140, 84), coverage=COVERAGE) == [14]


def test_grid_that_does_not_divide_the_image():
    # 3×3 image on a 2×2 grid: cells are 1.5 px; the centre pixel covers a quarter px² of each cell.
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 1] = True
    cov = cell_coverage(mask_object(mask), (2, 2), (3, 3))
    np.testing.assert_allclose(cov, np.full((2, 2), 0.25 / 2.25))
    corner = np.zeros((3, 3), dtype=bool)
    corner[0, 0] = True
    np.testing.assert_allclose(cell_coverage(mask_object(corner), (2, 2), (3, 3)), [[1 / 2.25, 0], [0, 0]])


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(5, 60),
    w=st.integers(5, 60),
    gh=st.integers(1, 7),
    gw=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_cell_coverage_is_exact_area_resampling(h, w, gh, gw, seed):
    mask = np.random.default_rng(seed).random((h, w)) < 0.3
    obj = ObjectAnn(label="x", box=(0, 0, 1, 1), mask=rle_of(mask))
    np.testing.assert_allclose(cell_coverage(obj, (gh, gw), (h, w)), brute_force_coverage(mask, (gh, gw)), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(4, 60),
    w=st.integers(4, 60),
    gh=st.integers(1, 6),
    gw=st.integers(1, 6),
    data=st.data(),
)
def test_box_coverage_equals_its_rectangle_mask(h, w, gh, gw, data):
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    box_only = ObjectAnn(label="box", box=(x0 / w, y0 / h, x1 / w, y1 / h))
    np.testing.assert_allclose(
        cell_coverage(box_only, (gh, gw), (h, w)), cell_coverage(mask_object(mask), (gh, gw), (h, w)), atol=1e-9
    )


def test_box_only_object_on_a_processor_grid():
    # 100×150 image, processor grid 4×5 (smart_resize → 112×140): the left half covers columns 0-1
    # fully and half of column 2, on every row.
    obj = ObjectAnn(label="left half", box=(0.0, 0.0, 0.5, 1.0))
    assert object_cells(obj, (4, 5), (100, 150), coverage=COVERAGE) == [r * 5 + c for r in range(4) for c in range(3)]
    thin = ObjectAnn(label="sliver", box=(0.0, 0.0, 0.2 / 28, 1.0))  # 1/28 of column 0's width
    assert object_cells(thin, (4, 5), (100, 150), coverage=COVERAGE) == [0, 5, 10, 15]
    assert (
        object_cells(ObjectAnn(label="sliver", box=(0.0, 0.0, 0.19 / 28, 1.0)), (4, 5), (100, 150), coverage=COVERAGE)
        == []
    )


def test_object_cells_rejects_bad_arguments():
    obj = ObjectAnn(label="x", box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="coverage"):
        object_cells(obj, (2, 2), (10, 10), coverage=0)
    with pytest.raises(ValueError, match="positive"):
        object_cells(obj, (0, 2), (10, 10), coverage=COVERAGE)


# --- Sample ---------------------------------------------------------------------------------------


def test_object_and_sample_validation():
    with pytest.raises(ValueError, match="not normalised"):
        ObjectAnn(label="x", box=(0.5, 0, 0.4, 1))
    obj = ObjectAnn(label="x", box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match=r"unreferenced objects \[1\]"):
        Sample(id="a", image="i.png", task="rec", prompt="p", answer="<|Obj_0|>", objects=[obj, obj])
    with pytest.raises(ValueError, match=r"placeholders without object \[1\]"):
        Sample(id="a", image="i.png", task="rec", prompt="p", answer="<|Obj_0|> <|Obj_1|>", objects=[obj])
    with pytest.raises(ValueError, match="task 'det'"):
        Sample(id="a", image="i.png", task="det", prompt="p", answer="", objects=[])


def test_sample_render_and_dict_round_trip():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 3:6] = True
    sample = Sample(
        id="s/1",
        image="img.png",
        task="ovd",
        prompt="p",
        answer=ovd_answer([("cat", 2)]),
        objects=[
            mask_object(mask, "cat"),
            ObjectAnn(label="cat", box=(0, 0, 0.5, 0.5), iscrowd=True, extra={"keypoints": [[0.1, 0.2, 2]]}),
        ],
        image_size=(8, 8),
    )
    assert sample.render(["<|VRT_1|><|VRT_2|>", "<|VRT_9|>"]) == (
        'There are 2 "cat" (<|VRT_1|><|VRT_2|>, <|VRT_9|>) in this image.'
    )
    assert Sample.from_dict(sample.to_dict()) == sample
    assert Sample.from_dict(json.loads(json.dumps(sample.to_dict()))).objects[1].extra == {"keypoints": [[0.1, 0.2, 2]]}
    with pytest.raises(ValueError, match="extra must be a dict with string keys"):
        ObjectAnn(label="x", box=(0, 0, 1, 1), extra=[1, 2])


def test_box_from_xywh_normalises_and_clips():
    assert box_from_xywh([8, 6, 16, 12], 80, 60) == pytest.approx((0.1, 0.1, 0.3, 0.3))
    assert box_from_xywh([-5, 50, 100, 20], 80, 60) == pytest.approx((0.0, 50 / 60, 1.0, 1.0))


# --- templates ------------------------------------------------------------------------------------


def test_ovd_wording_matches_the_reference():
    assert ovd_prompt(["person", "car"]) == (
        'Please carefully check the image and detect the following objects: ["person", "car"].'
    )
    assert ovd_answer([]) == "No objects from the list are present in the image."
    assert ovd_answer([("person", 1)]) == 'There is 1 "person" (<|Obj_0|>) in this image.'
    assert ovd_answer([("car", 3)]) == 'There are 3 "car" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>) in this image.'
    assert ovd_answer([("person", 2), ("cat", 0), ("dog", 1)]) == (
        'In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).'
    )


def test_rec_wording_matches_the_reference():
    sentence = "man on left"
    assert rec_prompt(sentence) == (
        'Please carefully check the image and detect the object this sentence describes: "man on left".'
    )
    assert rec_answer(sentence) == 'The "man on left" refers to <|Obj_0|> in this image.'


def test_templates_are_configurable_and_checked():
    custom = TaskTemplates(ovd_one="One {label}: {objects}.", object_separator=" ")
    assert ovd_answer([("dog", 1)], custom) == "One dog: <|Obj_0|>."
    with pytest.raises(ValueError, match=r"fields must be exactly \{label\}, \{objects\}; got \{lable\}, \{objects\}"):
        TaskTemplates(ovd_one="{lable} {objects}")
    with pytest.raises(ValueError, match="named fields"):
        TaskTemplates(rec_prompt="{}")
    with pytest.raises(ValueError, match="extra"):
        TaskTemplates(ovd_answer="x")


def test_ric_markers_become_placeholders_in_text_order():
    valid = {12, 13, 14}
    caption = "a red circle (<box_id: 12/>) to the left of two stars (<box_id: 13/>, <box_id: 99/>), <box_id:14>."
    text, ids = ric_answer(caption, valid.__contains__)
    assert text == "a red circle (<|Obj_0|>) to the left of two stars (<|Obj_1|>), <|Obj_2|>."
    assert ids == [12, 13, 14]
    caption = "a cat (<box_id: 98/>), a dog (<box_id: abc/>) and a hat (<box_id: 12 />)."
    text, ids = ric_answer(caption, valid.__contains__)
    assert text == "a cat, a dog and a hat (<|Obj_0|>)."
    assert ids == [12]
    # A repeated annotation gets a placeholder per mention, so each placeholder appears once.
    assert ric_answer("a (<box_id: 12/>) and again (<box_id: 12/>).", valid.__contains__) == (
        "a (<|Obj_0|>) and again (<|Obj_1|>).",
        [12, 12],
    )


def test_drop_objects_rewrites_answers_like_the_reference():
    def obj(label):
        return ObjectAnn(label=label, box=(0, 0, 1, 1))

    ovd = Sample("o", "i.png", "ovd", "p", ovd_answer([("person", 2), ("dog", 1)]), [obj("person")] * 2 + [obj("dog")])
    assert drop_objects(ovd, [True, True, True]) is ovd
    assert drop_objects(ovd, [True, False, True]).answer == (
        'In this image, there are 1 "person" (<|Obj_0|>), 1 "dog" (<|Obj_1|>).'
    )
    assert drop_objects(ovd, [False, False, True]).answer == 'There is 1 "dog" (<|Obj_0|>) in this image.'
    assert drop_objects(ovd, [False] * 3).answer == "No objects from the list are present in the image."
    rec = Sample("r", "i.png", "rec", "p", rec_answer("the dog"), [obj("the dog")])
    assert drop_objects(rec, [False]) is None
    text, _ = ric_answer("two stars (<box_id: 1/>, <box_id: 2/>) near a cat (<box_id: 3/>).", lambda i: True)
    ric = Sample("c", "i.png", "ric", "p", text, [obj("a"), obj("b"), obj("c")])
    dropped = drop_objects(ric, [False, True, False])
    assert dropped.answer == "two stars (<|Obj_0|>) near a cat." and [o.label for o in dropped.objects] == ["b"]
    with pytest.raises(ValueError, match="2 keep flags for 3 objects"):
        drop_objects(ric, [True, True])

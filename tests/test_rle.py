"""The one COCO RLE module: round trips against pycocotools, tensors, polygons, areas, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from padt_core import rle


@pytest.mark.parametrize("h, w, density, seed", [(7, 9, 0.4, 0), (1, 1, 1.0, 1), (64, 33, 0.02, 2), (30, 40, 0.0, 3)])
def test_encode_decode_round_trip_and_pycocotools_agrees(h, w, density, seed):
    mask = np.random.default_rng(seed).random((h, w)) < density
    encoded = rle.encode(mask)
    assert encoded["size"] == [h, w] and isinstance(encoded["counts"], str)
    assert np.array_equal(rle.decode(encoded), mask)
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encoded["counts"] == reference["counts"].decode("ascii")  # the same bytes pycocotools writes
    assert rle.area(encoded) == int(mask.sum())


def test_encode_takes_tensors_and_non_bool_masks():
    mask = torch.zeros(5, 6)
    mask[1:3, 2:5] = 0.7  # non-zero = foreground
    assert np.array_equal(rle.decode(rle.encode(mask)), mask.numpy() != 0)
    assert rle.encode(mask.bool()) == rle.encode((mask != 0).numpy().astype(np.uint8) * 3)
    with pytest.raises(ValueError, match=r"must be \[h, w\], got shape \(2, 5, 6\)"):
        rle.encode(np.zeros((2, 5, 6)))


def test_from_segmentation_polygons_rles_and_sizes():
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    poly = rle.from_segmentation(square, 10, 12)
    assert poly["size"] == [10, 12] and rle.area(poly) == 16
    assert rle.from_segmentation([[1, 2, 3, 4]], 10, 12) == rle.encode(np.zeros((10, 12), bool))  # a box, not a polygon
    again = rle.from_segmentation(poly, 10, 12)  # an RLE passes through, counts as str
    assert again == poly
    uncompressed = {"size": [3, 2], "counts": [1, 4, 1]}
    assert rle.decode(rle.from_segmentation(uncompressed, 3, 2)).tolist() == rle.decode(uncompressed).tolist()
    with pytest.raises(rle.MaskSizeError, match=r"RLE size \[10, 12\] does not match the image size \[12, 10\]"):
        rle.from_segmentation(poly, 12, 10)
    with pytest.raises(ValueError, match="corrupt RLE"):
        rle.from_segmentation({"size": [3, 2], "counts": [1, 4]}, 3, 2)


def test_decode_rejects_corrupt_runs():
    with pytest.raises(ValueError, match="corrupt RLE: runs add up to 5 pixels, size 3x2 needs 6"):
        rle.decode({"size": [3, 2], "counts": [1, 4]})
    with pytest.raises(ValueError, match="truncated RLE counts string"):
        rle.decode({"size": [3, 2], "counts": "1o"})

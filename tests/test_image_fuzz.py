"""Fuzzed images (modes, sizes, formats, truncation, arrays) through the one image loader and the collator.

Every input ends as an 8-bit RGB image of its own size with its values scaled (not clipped), or as one
``ImageError`` naming the file; the collator turns the errors into counted skips and never loses a batch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from padt_core.data.image import ImageError, check_image, load_image
from padt_core.data.sample import ObjectAnn, Sample
from padt_core.train.collator import PaDTCollator

pytestmark = pytest.mark.usefixtures("one_thread")

# (mode, format that stores it)
FORMATS = [
    ("1", "PNG"),
    ("L", "PNG"),
    ("LA", "PNG"),
    ("P", "PNG"),
    ("RGB", "PNG"),
    ("RGBA", "PNG"),
    ("I;16", "PNG"),
    ("I", "TIFF"),
    ("F", "TIFF"),
    ("CMYK", "JPEG"),
    ("CMYK", "TIFF"),
    ("RGB", "JPEG"),
    ("L", "GIF"),
    ("RGB", "BMP"),
]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pixels(mode: str, height: int, width: int, seed: int) -> Image.Image:
    """A random image of ``mode``: values spread over the mode's whole range."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32))
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    return rgba if mode == "RGBA" else rgba.convert("RGB").convert(mode)


def _encoded(mode: str, fmt: str, height: int, width: int, seed: int) -> tuple[bytes, Image.Image]:
    image = _pixels(mode, height, width, seed)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), image


@FUZZ
@given(
    kind=st.sampled_from(FORMATS),
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    seed=st.integers(0, 2**16),
    cut=st.none() | st.floats(0.0, 0.95),
)
def test_files_load_as_rgb_of_their_size_or_fail_naming_the_file(tmp_path, kind, height, width, seed, cut):
    mode, fmt = kind
    data, source = _encoded(mode, fmt, height, width, seed)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(data if cut is None else data[: int(len(data) * cut)])
    try:
        image = load_image(path)
    except ImageError as err:
        assert cut is not None, f"an intact {mode} {fmt} was refused: {err}"
        assert str(path) in str(err)
        assert err.reason == "corrupt_image"
        return
    assert image.mode == "RGB"
    assert image.size == (width, height)
    assert check_image(path) == (height, width)
    if cut is None and mode in ("I;16", "I"):  # 16-bit values keep their top 8 bits, not clipped to white
        expected = np.rint(np.asarray(source).astype(np.float64) / 257)
        assert np.abs(np.asarray(image)[..., 0] - expected).max() <= 1
    if cut is None and mode == "F":
        expected = np.rint(np.asarray(source).astype(np.float64) * 255)
        assert np.abs(np.asarray(image)[..., 0] - expected).max() <= 1


def test_sixteen_bit_gray_is_scaled_not_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as raw:
        assert raw.mode == "I;16"
        assert np.asarray(raw.convert("RGB")).mean() > 250  # what PIL's own convert gives: almost all white
    gray = np.asarray(load_image(tmp_path / "ramp16.png"))[..., 0]
    assert gray.min() == 0 and gray.max() == 255
    assert abs(gray.mean() - 127.5) < 1


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (200, 0, 0, 0))
    assert np.asarray(load_image(clear)).min() == 255
    half = Image.new("LA", (4, 4), (0, 128))
    assert abs(int(np.asarray(load_image(half))[0, 0, 0]) - 127) <= 1


ARRAYS = st.tuples(
    st.sampled_from(["HW", "HWC1", "HWC3", "HWC4", "CHW1", "CHW3"]),
    st.sampled_from(["uint8", "uint16", "float32", "float64", "bool", "int64"]),
    st.integers(5, 40),
    st.integers(5, 40),
    st.integers(0, 2**16),
)


@FUZZ
@given(spec=ARRAYS, as_tensor=st.booleans())
def test_arrays_and_tensors_load_as_rgb_of_their_size(spec, as_tensor):
    layout, dtype, height, width, seed = spec
    rng = np.random.default_rng(seed)
    channels = int(layout[-1]) if layout[-1].isdigit() else 0
    shape = {"HW": (height, width), "HWC": (height, width, channels), "CHW": (channels, height, width)}[
        layout.rstrip("134")
    ]
    if dtype in ("float32", "float64"):
        values = rng.random(shape).astype(dtype)  # [0, 1], torchvision's convention
    elif dtype == "bool":
        values = rng.random(shape) > 0.5
    else:
        values = rng.integers(0, 256 if dtype != "uint16" else 65536, shape).astype(dtype)
    image = load_image(torch.from_numpy(values) if as_tensor else values)
    assert image.mode == "RGB"
    assert image.size == (width, height)
    if dtype == "uint8" and layout == "HWC3":
        assert (np.asarray(image) == values).all()


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((2, 3, 5, 6), np.uint8), "expected HW, HWC or CHW"),
        (np.zeros((5, 6, 7), np.uint8), "expected HW, HWC or CHW"),
        (np.full((4, 4), 300), r"\[0, 255\]"),
        (np.full((4, 4, 3), 2.0, np.float32), r"float values must be in \[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.zeros((0, 4), np.uint8), "empty"),
    ],
)
def test_unusable_arrays_are_one_error_naming_shape_and_expectation(array, words):
    with pytest.raises(ImageError, match=words) as caught:
        load_image(array)
    assert str(tuple(array.shape)) in str(caught.value)


def test_a_huge_header_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setenv("PADT_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(ImageError, match="300x200 = 60,000 pixels, more than the limit of 50,000") as caught:
        load_image(tmp_path / "big.png")
    assert caught.value.reason == "image_too_large"
    monkeypatch.setenv("PADT_MAX_IMAGE_PIXELS", "0")  # no limit
    assert load_image(tmp_path / "big.png").size == (300, 200)
    monkeypatch.setenv("PADT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="PADT_MAX_IMAGE_PIXELS='lots'"):
        load_image(tmp_path / "big.png")


def _sample(image: Path, sid: str) -> Sample:
    return Sample(
        id=sid,
        image=str(image),
        task="rec",
        prompt='Please find "the thing".',
        answer='The "thing" refers to <|Obj_0|> in this image.',
        objects=[ObjectAnn(label="thing", box=(0.0, 0.0, 1.0, 1.0))],
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(FORMATS),
    height=st.integers(8, 64),
    width=st.integers(8, 64),
    seed=st.integers(0, 2**16),
    cut=st.none() | st.floats(0.0, 0.9),
)
def test_the_collator_keeps_good_samples_and_counts_bad_images(tiny_model, tmp_path, kind, height, width, seed, cut):
    mode, fmt = kind
    data, _ = _encoded(mode, fmt, height, width, seed)
    fuzzed = tmp_path / f"fuzzed.{fmt.lower()}"
    fuzzed.write_bytes(data if cut is None else data[: int(len(data) * cut)])
    good = tmp_path / "good.png"
    _pixels("RGB", 56, 56, 0).save(good)
    collator = PaDTCollator(tiny_model, vrt_per_object=2)
    try:
        readable = load_image(fuzzed) is not None
    except ImageError:
        readable = False
    batch = collator([_sample(fuzzed, "fuzzed"), _sample(good, "good")])
    assert batch.completion_ids.shape[0] == 1 + readable
    assert batch.original_sizes[-1] == (56, 56)
    if readable:
        assert batch.original_sizes[0] == (height, width)
    else:
        assert dict(collator.skipped) == {"corrupt_image": 1}

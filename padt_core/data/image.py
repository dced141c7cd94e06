"""One image loader for prediction, training and evaluation: files, PIL images, arrays and tensors → 8-bit RGB.

Every place padt reads an image (``PaDTModel.predict``, the training collator, ``padt eval``, the
dataset readers' ``check_images`` probe) goes through here, so each bad input fails the same way,
with one message naming the file:

- a missing path (``ImageNotFoundError``, a ``FileNotFoundError``), a directory, an unreadable or
  truncated file (``ImageError``, a ``ValueError``; its ``reason`` is the key readers, the collator
  and ``padt eval`` count skips under);
- an image of more than :func:`max_image_pixels` pixels (``image_too_large``): a guard against
  decompression bombs, PIL's own hard limit by default, raised with the ``PADT_MAX_IMAGE_PIXELS``
  environment variable (``0`` or ``none``: no limit).

Modes are scaled, not clipped: 16-bit grayscale (``I;16*``) keeps its top 8 bits (``v / 257``), 32-bit
integer ``I`` likewise when it holds values above 255 (PIL opens some 16-bit PNG/TIFF files as ``I``),
float ``F`` in ``[0, 1]`` is multiplied by 255 (within ``[0, 255]`` it is taken as is; any other range is
stretched min–max). Transparent images (``RGBA``, ``LA``, ``P`` with a transparent colour) are composited
on white, as Hugging Face image processors do. Arrays and tensors: ``HW`` (grayscale), ``HWC`` or ``CHW``
with 1, 3 or 4 channels (a tensor is read as ``CHW`` when both ends could be channels, an array as
``HWC``); ``uint8`` as is, ``uint16`` scaled like ``I;16``, ``bool`` as 0/255, floats must lie in
``[0, 1]`` (torchvision's convention).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "ImageError",
    "ImageLike",
    "ImageNotFoundError",
    "check_image",
    "describe_image",
    "from_array",
    "load_image",
    "max_image_pixels",
    "to_rgb",
]

MAX_PIXELS_ENV = "PADT_MAX_IMAGE_PIXELS"
#: PIL's own hard limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``, above which it raises): what loaded before loads.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

ImageLike = Any  # PIL image, path (str / os.PathLike), numpy array, torch tensor, or None (text only)

_CHANNELS = (1, 3, 4)
_FLOAT_SLACK = 1e-3  # float images a rounding step outside [0, 1] are clipped, not refused
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is the key skips are counted under."""

    def __init__(self, message: str, reason: str = "corrupt_image"):
        super().__init__(message)
        self.reason = reason


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image path that does not exist."""

    def __init__(self, message: str):
        super().__init__(message, "missing_image")


def max_image_pixels() -> int | None:
    """The largest image (width × height) padt opens: ``PADT_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`.

    ``None`` (the variable set to ``0`` or ``none``): no limit.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    if text.lower() in ("0", "none"):
        return None
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels (or 0 / none for no limit)") from None
    return value if value > 0 else None


def _open_unchecked(path: Path) -> Image.Image:
    """``Image.open`` with PIL's global decompression-bomb check off (it runs inside ``open``):
    :func:`_check_pixels` applies ours, which may be higher than PIL's. The lock keeps concurrent loaders
    from restoring each other's value; it is held for the header read only, not the decode."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(size: tuple[int, int], where: str, limit: int | None) -> None:
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"image {where} is {width}x{height} = {width * height:,} pixels, more than the limit of {limit:,} "
            f"(a guard against decompression bombs); raise it with the environment variable "
            f"{MAX_PIXELS_ENV}={width * height} (0 for no limit)",
            "image_too_large",
        )
    if width <= 0 or height <= 0:
        raise ImageError(f"image {where} is empty ({width}x{height})", "corrupt_image")


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise ImageError(f"image path {path} is a directory, not an image file", "not_a_file")
    if not path.exists():
        raise ImageNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"image path {path} is not a regular file", "not_a_file")


@contextmanager
def _opened(path: Path, limit: int | None) -> Iterator[Image.Image]:
    """``Image.open(path)`` with our pixel limit and one :class:`ImageError` for every way the file is bad."""
    _check_path(path)
    try:
        with _open_unchecked(path) as im:
            _check_pixels(im.size, str(path), limit)
            yield im
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {path}: not an image format PIL recognises", "corrupt_image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # truncated data, broken chunks, bad headers
        raise ImageError(f"cannot read image {path}: {err}", "corrupt_image") from None


def check_image(path: str | os.PathLike, decode: bool = False) -> tuple[int, int]:
    """``(height, width)`` of an image file, checked as :func:`load_image` would (the readers' probe).

    Args:
        path: the image file.
        decode: also decode the pixels (finds truncated files; costs a full read).

    Raises:
        ImageNotFoundError: no such file.
        ImageError: a directory, an unreadable/truncated file, or too many pixels (see ``reason``).

    Example:
        >>> check_image("cat.png")
        (480, 640)
    """
    path = Path(path)
    with _opened(path, max_image_pixels()) as im:
        if decode:
            im.load()
        return im.height, im.width


def load_image(image: ImageLike) -> Image.Image | None:
    """An 8-bit RGB PIL image from a path, a PIL image (any mode), a numpy array or a torch tensor.

    Args:
        image: the image; ``None`` passes through (a text-only sample). Files larger than
            :func:`max_image_pixels` are refused.

    Raises:
        ImageNotFoundError: a path that does not exist.
        ImageError: a directory, an unreadable/truncated file, too many pixels, an array of an unusable
            shape, dtype or value range (the message names the file or the array's shape).

    Example:
        >>> load_image("scan16.png").mode  # a 16-bit grayscale PNG, scaled to 8 bits
        'RGB'
        >>> load_image(torch.rand(3, 64, 48)).size
        (48, 64)
    """
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        with _opened(path, max_image_pixels()) as im:
            im.load()  # a truncated file fails here, inside _opened: one ImageError naming it
            return to_rgb(im, str(path))
    if _is_array(image):
        return from_array(image)
    raise ImageError(
        f"expected an image: a file path, a PIL image, a numpy array or a torch tensor; got {type(image).__name__}",
        "bad_image_type",
    )


def describe_image(image: ImageLike) -> str:
    """How messages name an input image: its path, or its kind and shape."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or ""
        return name or f"PIL image {image.width}x{image.height} ({image.mode})"
    shape = getattr(image, "shape", None)
    return f"{type(image).__name__} of shape {tuple(shape)}" if shape is not None else type(image).__name__


def to_rgb(image: Image.Image, where: str | None = None) -> Image.Image:
    """``image`` as 8-bit RGB: deep grayscale scaled (not clipped), transparency composited on white.

    An image already in RGB is returned as it is.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    where = where or describe_image(image)
    if mode.startswith("I;16"):
        return _gray(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        return _gray(np.clip(values, 0, 65535) / 257.0 if values.size and values.max() > 255 else values)
    if mode == "F":
        return _gray(_float_gray(np.asarray(image).astype(np.float64)))
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"image {where}: mode {mode} cannot be converted to RGB ({err})", "bad_image_mode") from None


def _float_gray(values: np.ndarray) -> np.ndarray:
    values = np.where(np.isfinite(values), values, 0.0)
    if not values.size:
        return values
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values * 255.0
    if low >= 0.0 and high <= 255.0:
        return values
    return (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")


def _is_array(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def from_array(array: Any) -> Image.Image:
    """An 8-bit RGB PIL image from a numpy array or torch tensor (``HW``, ``HWC`` or ``CHW``).

    Raises:
        ImageError: an unusable shape, dtype or value range; the message gives the shape and what was expected.

    Example:
        >>> from_array(np.zeros((32, 48, 3), np.uint8)).size
        (48, 32)
    """
    torch = sys.modules.get("torch")
    is_tensor = torch is not None and isinstance(array, torch.Tensor)
    if is_tensor:
        tensor = array.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        values = tensor.numpy()
    else:
        values = np.asarray(array)
    where = f"{'tensor' if is_tensor else 'array'} of shape {tuple(values.shape)} ({values.dtype})"
    if values.ndim == 3:
        first, last = values.shape[0] in _CHANNELS, values.shape[2] in _CHANNELS
        if first and (not last or is_tensor):
            values = values.transpose(1, 2, 0)
        elif not last:
            raise ImageError(f"image {where}: expected HW, HWC or CHW with 1, 3 or 4 channels", "bad_array")
        if values.shape[2] == 1:
            values = values[:, :, 0]
    elif values.ndim != 2:
        raise ImageError(f"image {where}: expected HW, HWC or CHW with 1, 3 or 4 channels", "bad_array")
    if values.size == 0:
        raise ImageError(f"image {where} is empty", "bad_array")
    values = _to_uint8(values, where)
    return to_rgb(Image.fromarray(np.ascontiguousarray(values)), where)


def _to_uint8(values: np.ndarray, where: str) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype == np.uint16:
        return np.rint(values / 257.0).astype(np.uint8)
    if np.issubdtype(values.dtype, np.integer):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 255:
            raise ImageError(
                f"image {where}: integer values must be in [0, 255] (got {low}..{high}); pass uint8, or uint16",
                "bad_array",
            )
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ImageError(f"image {where} holds NaN or infinite values", "bad_array")
        low, high = float(values.min()), float(values.max())
        if low < -_FLOAT_SLACK or high > 1.0 + _FLOAT_SLACK:
            raise ImageError(
                f"image {where}: float values must be in [0, 1] (got {low:.3g}..{high:.3g}); divide 0-255 "
                "values by 255 or pass uint8, and undo any mean/std normalisation",
                "bad_array",
            )
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageError(f"image {where}: unsupported dtype {values.dtype}", "bad_array")

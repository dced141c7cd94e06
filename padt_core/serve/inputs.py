"""A request's image and prompt, checked before it is queued: each bad input is one :class:`RequestError`
with the HTTP status it is answered with and a message naming the field, the value and what was expected."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from PIL import Image, UnidentifiedImageError

from .limits import ServeLimits

__all__ = ["TASKS", "RequestError", "decode_image", "decode_images", "task_prompt"]

#: what the ``task`` field takes: a task's prompt template, or ``prompt`` (the text sent verbatim)
TASKS = ("rec", "ovd", "ric", "prompt")


class RequestError(ValueError):
    """A request the server refuses; ``status`` is its HTTP status (4xx, or 503 when the queue is full)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, name: str, limits: ServeLimits, pixels_used: int = 0) -> Image.Image:
    """An uploaded file as 8-bit RGB, through padt's image loader (``padt_core.data.image.load_image``).

    The size is read from the header and checked against ``limits.max_image_pixels`` (less the
    ``pixels_used`` by the request's earlier images) before any pixel is decoded, so a 10000 × 10000
    upload costs its header, not 300 MB.

    Raises:
        RequestError: 413 (too many bytes or pixels), 415 (not an image), 422 (empty, truncated, corrupt).

    Example:
        >>> decode_image(Path("cat.png").read_bytes(), "cat.png", ServeLimits()).size
        (640, 480)
    """
    from ..data.image import ImageError, load_image

    if not data:
        raise RequestError(422, f"image {name!r} is empty (0 bytes)")
    if len(data) > limits.max_upload_bytes:
        raise RequestError(
            413, f"image {name!r} has {len(data):,} bytes, more than the server's limit of {limits.max_upload_bytes:,}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit, below, is the one that counts
            with Image.open(BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError:  # PIL's own hard limit, far above any sensible server limit
        raise RequestError(413, f"image {name!r} has more pixels than PIL opens at all") from None
    except UnidentifiedImageError:
        raise RequestError(415, f"{name!r} is not an image (PIL recognises no image format in it)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise RequestError(422, f"cannot read image {name!r}: {err}") from None
    if pixels_used + width * height > limits.max_image_pixels:
        also = f" after {pixels_used:,} in the request's other images" if pixels_used else ""
        raise RequestError(
            413,
            f"image {name!r} is {width}x{height} = {width * height:,} pixels{also}, more than the server's limit "
            f"of {limits.max_image_pixels:,} (padt serve --max-image-pixels)",
        )
    # load_image reads files: its checks (truncated data, odd modes) then apply to uploads word for word
    handle, path = tempfile.mkstemp(prefix="padt-serve-", suffix=".upload")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        image = load_image(path)
    except ImageError as err:
        raise RequestError(422, str(err).replace(path, repr(name))) from None
    finally:
        os.unlink(path)
    assert image is not None
    return image


def decode_images(files: list[tuple[bytes, str]], limits: ServeLimits) -> list[Image.Image]:
    """A request's ``(data, name)`` uploads decoded (:func:`decode_image`), their pixels counted together.

    Raises:
        RequestError: 422 (no image), 413 (more than ``limits.max_images``), or an image's own error.
    """
    if not files:
        raise RequestError(422, "field image is missing: send the image file")
    if len(files) > limits.max_images:
        raise RequestError(413, f"{len(files)} images, more than the server's limit of {limits.max_images} per request")
    images: list[Image.Image] = []
    for data, name in files:
        images.append(decode_image(data, name, limits, sum(im.width * im.height for im in images)))
    return images


def task_prompt(
    task: str | None, prompt: str | None, labels: str | Sequence[str] | None, templates: Any, limits: ServeLimits
) -> str:
    """The prompt sent to the model for a request's ``task`` / ``prompt`` / ``labels`` fields.

    ``task`` ``rec``: ``prompt`` is the referring sentence; ``ovd``: ``labels`` (a list, or names separated
    by commas) are the categories; ``ric``: captioning, no other field; ``prompt`` (or none): ``prompt`` is
    sent as it is. The templates are the model's recipe's (``data.templates``).

    Raises:
        RequestError: 422 (unknown task, missing or empty field), 413 (prompt longer than the limit).

    Example:
        >>> task_prompt("rec", "the red star", None, TaskTemplates(), ServeLimits())
        'Please carefully check the image and detect the object this sentence describes: "the red star".'
    """
    from ..data.templates import ovd_prompt, rec_prompt, ric_prompt

    task = task or "prompt"
    if task not in TASKS:
        raise RequestError(422, f"task {task!r} is not one of {', '.join(TASKS)}")
    if labels is not None and task != "ovd":
        raise RequestError(422, f"labels name the categories of task 'ovd', not of task {task!r}")
    text = (prompt or "").strip()
    if len(text) > limits.max_prompt_chars:  # checked before templating: a 50 000-character field costs nothing
        raise RequestError(
            413, f"prompt has {len(text):,} characters, more than the server's limit of {limits.max_prompt_chars:,}"
        )
    if task == "ric":
        if text:
            raise RequestError(422, "task 'ric' writes its own prompt; send no prompt (or use task 'prompt')")
        final = ric_prompt(templates)
    elif task == "ovd":
        if text:
            raise RequestError(422, "task 'ovd' writes its own prompt from labels; send no prompt")
        names = labels.split(",") if isinstance(labels, str) else list(labels or [])
        names = [str(name).strip() for name in names if str(name).strip()]
        if not names:
            raise RequestError(422, "task 'ovd' needs labels: the categories to detect (e.g. 'circle, star')")
        if len(names) > limits.max_labels:
            raise RequestError(413, f"{len(names)} labels, more than the server's limit of {limits.max_labels}")
        final = ovd_prompt(names, templates)
    elif not text:
        what = "the referring sentence" if task == "rec" else "the question to ask about the image"
        raise RequestError(422, f"prompt is empty; task {task!r} needs {what}")
    else:
        final = rec_prompt(text, templates) if task == "rec" else text
    if len(final) > limits.max_prompt_chars:
        raise RequestError(
            413,
            f"the prompt for task {task!r} has {len(final):,} characters, more than the server's limit of "
            f"{limits.max_prompt_chars:,}",
        )
    return final

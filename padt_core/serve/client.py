"""A client for ``padt serve`` on the standard library alone (``urllib``): no extra to install."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Client", "ServeError"]


class ServeError(RuntimeError):
    """The server refused or failed a request; ``status`` is its HTTP status, the message the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """Ask a running ``padt serve`` for predictions.

    Args:
        url: the server, e.g. ``http://127.0.0.1:7860``.
        timeout: seconds to wait for one answer.

    Example:
        >>> client = Client("http://127.0.0.1:7860")
        >>> record = client.predict("shapes.png", "the red star", task="rec")
        >>> record["objects"][0]["box"]
        [12.0, 40.5, 88.0, 97.25]
    """

    def __init__(self, url: str = "http://127.0.0.1:7860", timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def info(self) -> dict[str, Any]:
        """The model's name, the tasks, the server's limits and examples (``GET /api/info``)."""
        return self._call(urllib.request.Request(f"{self.url}/api/info"))

    def predict(
        self,
        image: str | os.PathLike | bytes | Any | Sequence[Any],
        prompt: str | None = None,
        *,
        task: str | None = None,
        labels: Sequence[str] | str | None = None,
        image_name: str | None = None,
    ) -> dict[str, Any]:
        """The ``padt predict --out`` record for one image, or ``--multi``'s for a list (``POST /api/predict``).

        Args:
            image: a file path, the file's bytes, or a PIL image (sent as PNG); a list of them: one
                conversation about several images (``docs/multi-image.md``).
            prompt: the text sent as it is, or with ``task="rec"`` the referring sentence.
            task: ``rec``, ``ovd`` (with ``labels``), ``ric``, or ``None`` / ``prompt`` for ``prompt`` verbatim.
            labels: the categories of ``task="ovd"``.
            image_name: how the record names the image (default: the file name, else ``upload``); one image only.

        Raises:
            ServeError: the server's 4xx/5xx answer (its message names what was wrong).
        """
        if isinstance(image, (list, tuple)):
            files = [_image_bytes(one) for one in image]
            fields: dict[str, Any] = {
                "images": [base64.b64encode(data).decode("ascii") for data, _ in files],
                "image_names": [name for _, name in files],
            }
        else:
            data, name = _image_bytes(image)
            fields = {"image": base64.b64encode(data).decode("ascii"), "image_name": image_name or name}
        fields.update({k: v for k, v in (("task", task), ("prompt", prompt), ("labels", labels)) if v is not None})
        if isinstance(fields.get("labels"), (list, tuple)):
            fields["labels"] = list(fields["labels"])
        body = json.dumps(fields).encode("utf-8")
        request = urllib.request.Request(
            f"{self.url}/api/predict", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except (json.JSONDecodeError, AttributeError):
                message = text
            raise ServeError(err.code, message) from None


def _image_bytes(image: Any) -> tuple[bytes, str]:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), "upload"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.read_bytes(), path.name
    if hasattr(image, "save"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "upload.png"
    raise TypeError(f"image must be a file path, bytes or a PIL image, got {type(image).__name__}")

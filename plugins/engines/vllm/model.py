"""PaDT's VRT vocabulary on vLLM's own Qwen2.5-VL model class.

The exported model directory (:mod:`.export`) declares ``vocab_size = V + P_max`` (``P_max``: the
most VRT cells one image can have) with zero rows appended to the embedding table and the
classifier, plus a ``padt_vrt`` config section and the prototype projection's weights. On top of vLLM's
model this class only changes what VRTs change, exactly as padt's Hugging Face hooks do
(``PaDTModel.vrt_io``):

* ``embed_input_ids``: an id ``V + k`` takes prototype ``k`` of *its request's* image;
* ``compute_logits``: columns ``V + k`` are ``h · prototype_k`` of the request's image (padt's own
  :func:`padt_core.head.vrt_logits`), the dtype's minimum past its cells.

Which request a token belongs to, and the image features after prefill, come from the runner
(:mod:`._runner`); prototypes are computed once per request, when its image's encoder output first
appears, and released when it finishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

from padt_core.embedding import PrototypeBank, PrototypeProjection
from padt_core.head import vrt_logits

from . import _runner

__all__ = ["PaDTQwen2_5_VLForConditionalGeneration", "PaDTQwen3VLForConditionalGeneration", "VRTVocabulary"]

_runner.patch_runner()

PROJECTION_PREFIX = "padt.projection."


class VRTVocabulary:
    """Mixin for a vLLM Qwen-VL model class: per-request VRT embeddings and logits."""

    def _padt_init(self, vllm_config) -> None:
        if getattr(vllm_config, "use_v2_model_runner", False):
            raise ValueError(
                "PaDT on vLLM needs the v1 model runner (it wraps two of its methods, "
                "padt_plugins/engines/vllm/_runner.py); set VLLM_USE_V2_MODEL_RUNNER=0"
            )
        if vllm_config.cache_config.enable_prefix_caching:
            raise ValueError(
                "PaDT on vLLM does not support prefix caching: a cached image prefix skips the vision encoder, "
                "which the request's VRT prototypes are computed from; pass enable_prefix_caching=False"
            )
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError(
                "PaDT on vLLM does not support speculative decoding: VRT logits are laid out one row per request"
            )
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError("PaDT on vLLM does not support pipeline parallelism (tensor parallelism is untested)")
        section = getattr(self.config, "padt_vrt", None)
        if not section:
            raise ValueError("the model config has no padt_vrt section: export the model with padt's export_for_vllm")
        self.padt_vocab = int(section["vocab_rows"])
        self.padt_max_cells = int(section["max_cells"])
        self.padt_merge = int(self.config.vision_config.spatial_merge_size)
        self.padt_hidden = int(section["hidden_size"])
        self.padt_suppress = torch.tensor(section.get("suppress", []), dtype=torch.long)
        self.padt_projection = None
        if section.get("prototypes", True):
            self.padt_projection = PrototypeProjection(
                int(section["hidden_size"]),
                int(section["rank"]),
                bool(section["projection"]),
                position=section["position"],
                max_grid=tuple(section["max_grid"]),
                **({"max_images": int(section["max_images"])} if section.get("max_images") else {}),
            )
        self.padt_prototypes: dict[str, list[torch.Tensor]] = {}  # request id -> per image in prompt order [cells, D]
        self.padt_step: tuple[list[str], list[int]] | None = None  # request order and token counts of the step

    # --- what the runner hook calls (_runner.py) -----------------------------------------------
    def padt_images_taken(self, req_id: str) -> int:
        """How many of the request's images already have prototypes (the next one handed over is that index)."""
        return len(self.padt_prototypes.get(req_id, ()))

    def padt_on_step(self, req_ids: list[str], counts: list[int], images: dict[str, list]) -> None:
        if self.padt_projection is None:  # no VRTs: nothing to keep
            images = {}
        for req_id, items in images.items():
            kept = self.padt_prototypes.setdefault(req_id, [])
            for place, encoded, (_, h, w) in items:
                if place != len(kept):
                    raise RuntimeError(f"request {req_id}: image {place} handed over before image {len(kept)}")
                grid = (h // self.padt_merge, w // self.padt_merge)
                with torch.no_grad():
                    # Qwen3-VL's encoder output is [merged tokens | DeepStack features] along channels: the
                    # prototypes are made from the merged tokens, as in padt's backbone (VisualFeatures.tokens).
                    tokens = encoded[:, : self.padt_hidden].to(self.padt_projection_dtype)
                    kept.append(self._padt_project(tokens, grid, place))
        self.padt_step = (req_ids, counts)

    def _padt_project(self, tokens: torch.Tensor, grid: tuple[int, int], place: int) -> torch.Tensor:
        """Prototypes of one image; ``place``: its position among the request's images (``vrt.max_images``)."""
        if getattr(self.padt_projection, "max_images", 0):
            return self.padt_projection(tokens, grid, place)
        return self.padt_projection(tokens, grid)

    def padt_release(self, finished: Iterable[str]) -> None:
        finished = [r for r in finished if r in self.padt_prototypes]
        for req_id in finished:
            del self.padt_prototypes[req_id]
        if finished:
            self.__dict__.pop("_padt_bank_cache", None)  # it may hold a finished request's prototypes

    @property
    def padt_projection_dtype(self) -> torch.dtype:
        return next(self.padt_projection.parameters(), torch.empty(0)).dtype

    def _padt_bank(self, req_ids: Sequence[str], like: torch.Tensor) -> PrototypeBank:
        """The step's requests' prototypes as padt's padded bank (row ``i``: request ``i`` of the step); kept
        while the batch stays the same (every decoding step between two arrivals or finishes)."""
        key = (tuple((r, len(self.padt_prototypes.get(r, ()))) for r in req_ids), like.dtype, like.device)
        cached = self.__dict__.get("_padt_bank_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        # A request's bank row is its images' prototypes back to back, as padt's (multi-image samples).
        prototypes, index = [], []
        for req_id in req_ids:
            parts = self.padt_prototypes.get(req_id)
            index.append(len(prototypes) if parts else -1)
            if parts:
                prototypes.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        bank = PrototypeBank.from_prototypes(prototypes, index, like.shape[-1], like.device, like.dtype)
        self.__dict__["_padt_bank_cache"] = (key, bank)
        return bank

    # --- the two model methods VRTs change -----------------------------------------------------
    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        is_vrt = input_ids >= self.padt_vocab
        embeds = super().embed_input_ids(
            input_ids.masked_fill(is_vrt, 0), multimodal_embeddings, is_multimodal=is_multimodal
        )
        where = is_vrt.nonzero().squeeze(1)
        if where.numel() == 0:
            return embeds
        req_ids, counts = self._padt_current(input_ids.shape[0], "embed_input_ids")
        request = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))[where.cpu()]
        bank = self._padt_bank(req_ids, embeds)
        cells = (input_ids[where] - self.padt_vocab).cpu()
        available = bank.valid.sum(1).cpu()[request] if bank.width else torch.zeros_like(cells)
        bad = (cells >= available).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(
                f"request {req_ids[int(request[i])]} holds <|VRT_{int(cells[i])}|> but its image(s) have "
                f"{int(available[i])} cells (so far)"
            )
        embeds[where] = bank.bank[request.to(embeds.device), cells.to(embeds.device)].to(embeds.dtype)
        return embeds

    def compute_logits(self, hidden_states):
        logits = super().compute_logits(hidden_states)
        if logits is None:
            return None
        vocab, lowest = self.padt_vocab, torch.finfo(logits.dtype).min
        logits[:, vocab:] = lowest
        if self.padt_suppress.numel():
            logits[:, self.padt_suppress.to(logits.device)] = lowest
        step = self.padt_step
        if step is None or len(step[0]) != hidden_states.shape[0]:
            return logits  # a warm-up or profiling run: no requests, no VRTs
        bank = self._padt_bank(step[0], hidden_states)
        if bank.width:
            extra = vrt_logits(hidden_states.unsqueeze(1), bank).squeeze(1)
            logits[:, vocab : vocab + bank.width] = extra.to(logits.dtype)
        return logits

    def _padt_current(self, tokens: int, where: str) -> tuple[list[str], list[int]]:
        step = self.padt_step
        if step is None or sum(step[1]) != tokens:
            raise RuntimeError(
                f"{where} got VRT ids but no request order for this step ({tokens} tokens); the runner hook of "
                "padt_plugins/engines/vllm/_runner.py did not run: is this vLLM's v1 runner?"
            )
        return step

    def load_weights(self, weights):
        """vLLM's loader, the projection's weights (``padt.projection.*``) routed to :attr:`padt_projection`."""
        loaded = super().load_weights(self._padt_split_weights(weights))
        own = self.padt_projection.named_parameters() if self.padt_projection is not None else ()
        return set(loaded) | {f"padt_projection.{n}" for n, _ in own}

    def _padt_split_weights(self, weights):
        """vLLM's weights, with the projection's own routed to :attr:`padt_projection`."""
        own = dict(self.padt_projection.named_parameters()) if self.padt_projection is not None else {}
        for name, tensor in weights:
            if name.startswith(PROJECTION_PREFIX):
                with torch.no_grad():
                    own[name[len(PROJECTION_PREFIX) :]].copy_(tensor)
                continue
            yield name, tensor


class PaDTQwen2_5_VLForConditionalGeneration(VRTVocabulary, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with PaDT's per-request VRT vocabulary."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._padt_init(vllm_config)


class PaDTQwen3VLForConditionalGeneration(VRTVocabulary, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with PaDT's per-request VRT vocabulary (DeepStack features stay at image positions)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._padt_init(vllm_config)

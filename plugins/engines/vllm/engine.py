"""``VLLMEngine``: a padt model generating in vLLM, its objects decoded by padt's own heads.

vLLM generates the ids (continuous batching, paged KV cache, chunked prefill, tensor parallel); padt
then runs the same teacher-forced pass over prompt + completion as after Hugging Face ``generate``
(``PaDTModel.decode_objects``), in this process, on the model it was given. Why that pass and not
vLLM's pooling runner: a pooling engine is a second ``LLM`` (a pooling runner cannot also generate),
with a second copy of the weights and KV cache, and the decoder needs the vision tower's fine features,
which vLLM never returns; padt's pass reuses the features it computes anyway and is, by construction,
the path training and ``engine="hf"`` use, so boxes agree exactly whenever the ids do.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from padt_core.data.image import load_image

from . import _runner
from .export import check_backbone, export_for_vllm

__all__ = ["GENERATION_KEYS", "VLLMEngine"]

# predict/generate keyword arguments this engine maps onto vLLM's SamplingParams.
GENERATION_KEYS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "num_beams",
    "num_return_sequences",
    "seed",
)
_ENGINE_DEFAULTS: dict[str, Any] = {
    "enable_prefix_caching": False,  # refused by the model class: see model.py
    "generation_config": "vllm",  # sampling comes from padt's recipe, not the exported generation_config.json
}


class VLLMEngine:
    """Generation in vLLM for one ``PaDTModel`` (one ``vllm.LLM``; start it once, reuse it).

    Args:
        model: the padt model (its backbone must have a vLLM class: ``export.SUPPORTED_BACKBONES``).
        export_dir: where the vLLM copy of the model is written; default a temporary directory removed by
            :meth:`close`.
        **engine_args: passed to ``vllm.LLM`` (``tensor_parallel_size``, ``max_num_batched_tokens``,
            ``dtype``, ``enforce_eager``, ``max_num_seqs``, ...); ``enable_prefix_caching=True`` is refused.

    Example:
        >>> engine = VLLMEngine(model, max_num_batched_tokens=2048)  # doctest: +SKIP
        >>> engine.predict(["cat.jpg"], "Where is the cat?")  # doctest: +SKIP
    """

    name = "vllm"

    def __init__(self, model: Any, export_dir: str | os.PathLike | None = None, **engine_args: Any):
        check_backbone(model.recipe.backbone.name)
        if engine_args.get("enable_prefix_caching"):
            raise ValueError(
                "enable_prefix_caching=True is not supported with PaDT: a cached image prefix skips the vision "
                "encoder the request's VRT prototypes come from (docs/vllm.md)"
            )
        from vllm import LLM

        self.model = model
        self._own_dir = export_dir is None
        self.export_dir = Path(export_dir or tempfile.mkdtemp(prefix="padt-vllm-"))
        export_for_vllm(model, self.export_dir, overwrite=True)
        # dtype: vLLM's "auto" would take bf16 on CPU; images per prompt: as many as the recipe places (vrt.max_images)
        images = max(1, int(getattr(model.recipe.vrt, "max_images", 0) or 0))
        limit = {"limit_mm_per_prompt": {"image": images, "video": 0}}
        args = {**_ENGINE_DEFAULTS, "dtype": model.dtype, **limit, **engine_args}
        if model.projection is not None:
            args["logits_processors"] = [*args.get("logits_processors", []), _NO_REPEAT]
        self.engine_args = args
        self.llm = LLM(model=str(self.export_dir), tokenizer=str(self.export_dir), **args)

    # --- requests -------------------------------------------------------------------------------
    def sampling_params(self, **generation_kwargs: Any):
        """vLLM ``SamplingParams`` of the recipe's generation settings with ``generation_kwargs`` on top."""
        from vllm import SamplingParams

        unknown = sorted(set(generation_kwargs) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(
                f"engine='vllm' does not take generation argument(s) {', '.join(unknown)}; "
                f"it maps {', '.join(GENERATION_KEYS)}"
            )
        seed = generation_kwargs.pop("seed", None)
        config = self.model.generation_config(**generation_kwargs)
        if config.num_beams != 1 or (config.num_return_sequences or 1) != 1:
            raise ValueError("engine='vllm' generates one sequence per prompt without beams (num_beams=1)")
        sample = bool(config.do_sample)
        extra = {}
        for spec in self.model.recipe.generation.logits_processors:
            if spec.name != "no_repeat_vrt":
                raise ValueError(
                    f"generation.logits_processors: {spec.name!r} has no vLLM version in padt (only no_repeat_vrt)"
                )
            if self.model.projection is not None:
                extra[_EXTRA_KEY] = {"vocab_rows": self.model.backbone.vocab_rows, "max_run": spec.max_run}
        return SamplingParams(
            max_tokens=int(config.max_new_tokens),
            temperature=float(config.temperature or 1.0) if sample else 0.0,
            top_p=float(config.top_p or 1.0) if sample else 1.0,
            top_k=int(config.top_k or 0) if sample else 0,
            repetition_penalty=float(config.repetition_penalty or 1.0),
            stop_token_ids=list(self.model.backbone.eos_token_ids),
            seed=seed,
            detokenize=False,
            extra_args=extra or None,
        )

    def requests(self, batch: Any, images: Sequence[Any]) -> list[dict[str, Any]]:
        """vLLM prompts of a prepared padt batch: its token ids with each image placeholder run collapsed
        to one token (vLLM's processor expands it again from the same image), and the image(s) as the
        backbone hands them to its processor."""
        backbone = self.model.backbone
        image_token = backbone.hf_model.config.image_token_id
        out = []
        for b, (row, mask, image) in enumerate(zip(batch["input_ids"], batch["attention_mask"], images)):
            ids = row[mask.bool()].tolist()
            collapsed = [t for i, t in enumerate(ids) if t != image_token or i == 0 or ids[i - 1] != image_token]
            request: dict[str, Any] = {"prompt_token_ids": collapsed}
            if isinstance(image, (list, tuple)):  # several images in one conversation, in prompt order
                request["multi_modal_data"] = {"image": [_prepared(backbone, j, im) for j, im in enumerate(image)]}
            elif image is not None:
                request["multi_modal_data"] = {"image": _prepared(backbone, b, image)}
            out.append((request, ids))
        return out

    def generate_ids(self, batch: Any, images: Sequence[Any], **generation_kwargs: Any) -> list[list[int]]:
        """Completion ids (up to and with the end-of-sequence token) of every prompt of a prepared batch."""
        pairs = self.requests(batch, images)
        params = self.sampling_params(**generation_kwargs)
        outputs = self.llm.generate([r for r, _ in pairs], params, use_tqdm=False)
        completions = []
        for (_, expected), output in zip(pairs, outputs):
            if list(output.prompt_token_ids) != expected:
                raise RuntimeError(
                    f"vLLM's processor made a prompt of {len(output.prompt_token_ids)} tokens where padt's made "
                    f"{len(expected)}: the two image processors disagree on the image grid"
                )
            completions.append(list(output.outputs[0].token_ids))
        return completions

    def completions_tensor(self, completions: Sequence[Sequence[int]]) -> torch.Tensor:
        """Right-padded ``[B, longest]`` ids, as Hugging Face ``generate`` returns them."""
        width = max((len(c) for c in completions), default=0)
        pad = self.model.backbone.pad_token_id
        out = torch.full((len(completions), width), pad, dtype=torch.long)
        for i, row in enumerate(completions):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        batch_size: int = 8,
        progress: bool | None = None,
        **generation_kwargs: Any,
    ) -> list:
        """``PaDTModel.predict`` with vLLM generating: ``batch_size`` prompts go to vLLM at once (it batches
        them continuously); their objects are decoded by the model's heads."""
        model = self.model
        starts = range(0, len(images), batch_size)
        show = progress if progress is not None else len(starts) > 1
        results = []
        for start in tqdm(starts, desc="predict (vllm)", disable=not show, unit="batch"):
            pil = [_load(im) for im in images[start : start + batch_size]]
            batch = model.prepare(pil, list(prompts[start : start + batch_size]))
            for key, value in batch.items():
                if isinstance(value, torch.Tensor):
                    batch[key] = value.to(model.device)
            encoded = model.encode(batch)  # also checks prompt VRTs against each image's grid
            ids = self.generate_ids(batch, pil, **generation_kwargs)
            completions = self.completions_tensor(ids).to(model.device)
            results += model.answer_format.read_completions(model, batch, encoded, completions, pil)
        return results

    def close(self) -> None:
        """Stop the vLLM engine and remove a temporary export."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
        if self._own_dir and self.export_dir.exists():
            shutil.rmtree(self.export_dir, ignore_errors=True)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load(image: Any) -> Any:
    """A sample's image(s) loaded: ``None``, one image, or a list of them (one conversation)."""
    if isinstance(image, (list, tuple)):
        return [load_image(im) for im in image]
    return load_image(image)


def _prepared(backbone: Any, index: int, image: Any) -> Any:
    """The image as the backbone hands it to its processor (e.g. upscaled to one cell): what vLLM's copy of
    the same processor must see for the grids to agree. The Qwen plugins' ``_prepare_image`` takes the image,
    or (Qwen3-VL) its index and the image."""
    prepare = getattr(backbone, "_prepare_image", None)
    if prepare is None:
        return image
    return prepare(index, image) if len(inspect.signature(prepare).parameters) == 2 else prepare(image)


_NO_REPEAT = "padt_plugins.engines.vllm.logits:NoRepeatVRTProcessor"
_EXTRA_KEY = "padt_no_repeat_vrt"  # logits.EXTRA_KEY (not imported here: that module imports vLLM's sampler)
_ = _runner  # the version check runs when this module is imported

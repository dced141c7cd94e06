"""``PaDTModel``: a backbone plugin + visual prototypes + the extended classifier (+ decoder heads).

How VRTs reach the LLM without copying it or its decoding loop: while a PaDT forward or
``generate`` runs, two hooks sit on the backbone's own modules. The input-embedding hook gives VRT
ids (``>= V``) their sample's prototype instead of a table row; the output-embedding hook appends
the sample's VRT logits to the text logits. Everything else (caches, M-RoPE, beams, logits
processors) is the backbone's and Hugging Face's own code.

The answer format (``padt_core/answer_format.py``) decides what differs per format: whether there
is a prototype projection (hence a bank and the hooks) and how generated completions become objects.
A format that writes objects as text (e.g. ``text_box``) makes the model the plain backbone: no
projection, no bank, no hooks, no decoder; its parser places the boxes.

Beside this module: the checks of prompts and images (``padt_core/model_inputs.py``) and the records
the model returns, ``Encoded`` / ``PaDTOutput`` / ``Prediction`` (``padt_core/model_outputs.py``); all
are importable from here too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .answer_format import build_answer_format
from .atomic import atomic_directory
from .backbone import Backbone, BackboneBatch, sample_image_list
from .data.image import ImageLike, load_image
from .embedding import PrototypeBank
from .model_inputs import (
    PromptError,
    check_context,
    check_image_slots,
    check_prompts,
    check_vrt_ids,
    image_list,
    load_sample,
    name_rejected_image,
)
from .model_outputs import Encoded, PaDTOutput, Prediction
from .objects import ObjectBatch, PredictedObject, pack_objects
from .plugins import get_plugin
from .recipe import Recipe, load_recipe
from .vrt import ParsedCompletion, VRTCodec
from .vrt_io import vrt_io
from .weights import load_weights

__all__ = [
    "FORMAT_VERSION",
    "Encoded",
    "PaDTModel",
    "PaDTOutput",
    "PredictedObject",
    "Prediction",
    "PromptError",
    "load_image",
]

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
RECIPE_NAME = "recipe.yaml"
META_NAME = "padt.json"
BACKBONE_DIR = "backbone"


class PaDTModel(nn.Module):
    """A multimodal LLM that can point: emits VRTs and decodes them into boxes, masks and scores."""

    def __init__(self, recipe: Recipe, backbone: Backbone, decoder: nn.Module | None = None):
        super().__init__()
        self.recipe = recipe
        self.backbone = backbone
        self.answer_format = build_answer_format(recipe)
        # None: the format writes objects as text, so there are no VRTs and no prototypes to project.
        self.projection = self.answer_format.build_projection(recipe, backbone)
        self.decoder = decoder
        self.codec = VRTCodec(backbone.tokenizer, backbone.vocab_rows, backbone.eos_token_ids, backbone.pad_token_id)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe: Recipe, *, meta: bool = False) -> PaDTModel:
        backbone_cls = get_plugin("backbones", recipe.backbone.name)
        backbone = backbone_cls.from_config(recipe.backbone, meta=meta)
        return cls._assemble(recipe, backbone, meta=meta)

    @classmethod
    def _assemble(cls, recipe: Recipe, backbone: Backbone, meta: bool = False) -> PaDTModel:
        dtype = backbone.hf_model.get_input_embeddings().weight.dtype
        device = torch.device("meta") if meta else None
        # The recipe's seed makes the new modules (projection, decoder) the same on every build.
        with torch.random.fork_rng(), torch.device(device) if device is not None else nullcontext():
            torch.manual_seed(recipe.train.seed)
            decoder = None
            if recipe.decoder is not None:
                from .decoder import PaDTDecoder

                decoder = PaDTDecoder.from_config(
                    recipe.decoder,
                    llm_hidden_size=backbone.hidden_size,
                    vision_hidden_size=backbone.vision_hidden_size,
                )
            model = cls(recipe, backbone, decoder)
        if model.projection is not None:
            model.projection.to(dtype)
        if model.decoder is not None:
            model.decoder.to(dtype)
        return model

    @property
    def device(self) -> torch.device:
        return self.backbone.hf_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.hf_model.get_input_embeddings().weight.dtype

    @property
    def coverage(self) -> float:
        """Fraction of a cell an object must cover for the cell to be its: ``data.coverage``, else the backbone's."""
        coverage = self.recipe.data.coverage
        return coverage if coverage is not None else self.backbone.default_coverage

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Activation checkpointing inside the backbone (what ``Trainer`` calls)."""
        hf = self.backbone.hf_model
        if hasattr(hf, "activation_checkpointing_enable"):
            hf.activation_checkpointing_enable(
                activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                every_n_layers=every_n_layers,
                offload=offload,
            )
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)
        # Hooks on a frozen embedding would otherwise cut the graph of re-entrant checkpoints.
        hf.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    # --- inputs ---------------------------------------------------------------------------------
    def prepare(self, images: Sequence[ImageLike | Sequence[ImageLike]], prompts: Sequence[str]) -> BackboneBatch:
        """Chat-format prompts, tokenise them with their images, map ``<|VRT_k|>`` strings to VRT ids.

        ``images[b]`` is sample ``b``'s image, ``None`` (text only) or a list of images in one
        conversation (placed at the prompt's ``<|img|>`` slots, else before the text; ``docs/multi-image.md``).
        """
        check_prompts(self.backbone, images, prompts)
        pil = [load_sample(b, im) for b, im in enumerate(images)]
        return self._prepare_loaded(pil, prompts, images, checked=True)

    def _prepare_loaded(
        self, pil: Sequence[Any], prompts: Sequence[str], images: Sequence[Any], checked: bool = False
    ) -> BackboneBatch:
        """:meth:`prepare` of images already loaded (``images``: as given, for messages)."""
        if not checked:
            check_prompts(self.backbone, images, prompts)
        counts = [len(sample_image_list(im)) for im in pil]
        check_image_slots(prompts, counts, self.answer_format.name, self.projection is not None)
        # One image is passed as `True`, as before several were possible (third-party backbones take a bool).
        texts = [self.backbone.format_prompt(p, n if n > 1 else n == 1) for p, n in zip(prompts, counts)]
        self.codec.register_prompt_vrts(texts)
        try:
            batch = self.backbone.process(texts, pil)
        except ValueError as err:
            raise name_rejected_image(self.backbone, err, images, prompts, texts, pil) from None
        if "sample_images" not in batch:  # a backbone plugin written before multi-image samples
            batch["sample_images"] = [[i] if i >= 0 else [] for i in batch["image_index"]]
        check_context(self.backbone, batch, images)
        batch["input_ids"] = self.codec.to_model_ids(batch["input_ids"])
        return batch

    def encode(self, batch: BackboneBatch) -> Encoded:
        """Run the vision tower once and build the per-sample prototype bank."""
        features, model_kwargs = self.backbone.encode_images(_to_device(batch, self.device))
        sample_images = [list(own) for own in batch["sample_images"]]
        if self.projection is None:  # answer format without VRTs
            prototypes, bank = [], None
        else:
            places = [0] * len(features)  # each image's place in its sample (vrt.max_images embeds it)
            for own in sample_images:
                for place, i in enumerate(own):
                    places[i] = place
            prototypes = self.projection.project_all([f.tokens for f in features], [f.grid for f in features], places)
            # A sample's bank row is its images' prototypes back to back: VRT k of a multi-image sample
            # numbers the concatenation of their cells.
            rows = [own[0] if len(own) == 1 else (own or -1) for own in sample_images]
            bank = PrototypeBank.from_prototypes(prototypes, rows, self.backbone.hidden_size, self.device, self.dtype)
        encoded = Encoded(features, prototypes, bank, model_kwargs, sample_images)
        check_vrt_ids(batch["input_ids"], encoded, self.backbone.vocab_rows, self.answer_format.name)
        return encoded

    # --- the VRT hooks --------------------------------------------------------------------------
    def vrt_io(
        self, bank: PrototypeBank | None, capture: list[torch.Tensor] | None = None, suppress: Sequence[int] = ()
    ) -> AbstractContextManager[None]:
        """Within the block, the backbone LLM reads VRT ids from ``bank`` and emits VRT logits.

        If ``capture`` is a list, the last-layer hidden states that feed the classifier are appended
        to it at every call (the decoder's VRT features). ``suppress``: text ids never to generate
        (their logit is the dtype's minimum). The tensors are prepared once per call
        (``padt_core/vrt_io.py``).
        """
        return vrt_io(self.backbone.hf_model, bank, self.backbone.vocab_rows, capture=capture, suppress=suppress)

    # --- forward / generate ---------------------------------------------------------------------
    def forward(
        self,
        batch: BackboneBatch,
        completion_ids: torch.Tensor | None = None,
        encoded: Encoded | None = None,
        completion_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> PaDTOutput:
        """Teacher-forced forward over prompt (+ completion): logits and last-layer hidden states.

        ``completion_ids`` ``[B, L]`` (text and VRT ids, right-padded; ``completion_mask`` marks real
        tokens) are appended to the left-padded prompt. ``logits_to_keep > 0`` computes logits and
        returns hidden states for the last that many positions only (``L + 1`` covers every position
        that predicts a completion token: index ``t`` then predicts completion token ``t``).
        """
        batch = _to_device(batch, self.device)
        encoded = encoded if encoded is not None else self.encode(batch)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        model_inputs = self.backbone.model_inputs(batch)
        if completion_ids is not None:
            completion_ids = completion_ids.to(self.device)
            if completion_mask is None:
                completion_mask = torch.ones_like(completion_ids)
            input_ids = torch.cat([input_ids, completion_ids], dim=1)
            attention_mask = torch.cat([attention_mask, completion_mask.to(attention_mask)], dim=1)
            model_inputs = self.backbone.extend_model_inputs(batch, completion_ids)
            check_vrt_ids(completion_ids, encoded, self.backbone.vocab_rows, self.answer_format.name)
        captured: list[torch.Tensor] = []
        with self._vrt_io_if_any(encoded, captured):
            out = self.backbone.hf_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                logits_to_keep=logits_to_keep,
                **model_inputs,
                **encoded.model_kwargs,
            )
        return PaDTOutput(logits=out.logits, hidden_states=captured[-1] if captured else None, encoded=encoded)

    def _vrt_io_if_any(
        self, encoded: Encoded, capture: list[torch.Tensor] | None = None
    ) -> AbstractContextManager[None]:
        """:meth:`vrt_io` on the batch's bank; nothing when the answer format uses no VRTs."""
        return nullcontext() if encoded.bank is None else self.vrt_io(encoded.bank, capture=capture)

    def generation_config(self, **overrides: Any) -> GenerationConfig:
        """The recipe's generation settings as a ``GenerationConfig`` (``overrides`` win)."""
        settings = self.recipe.generation
        base = self.backbone.hf_model.generation_config.to_dict() if settings.use_checkpoint_config else {}
        fields = settings.model_dump(
            exclude={"use_checkpoint_config", "logits_processors", "engine", "engine_args"}, exclude_none=True
        )
        config = GenerationConfig(**{**base, **fields})
        config.eos_token_id = self.backbone.eos_token_ids
        config.pad_token_id = self.backbone.pad_token_id
        config.update(**overrides)
        return config

    def logits_processors(self) -> list:
        """Logits processors named in the recipe's ``generation.logits_processors``."""
        out = []
        for spec in self.recipe.generation.logits_processors:
            cls = get_plugin("logits_processors", spec.name)
            out.append(cls.from_config(spec, model=self))
        return out

    @torch.no_grad()
    def generate(self, batch: BackboneBatch, encoded: Encoded | None = None, **generation_kwargs: Any) -> torch.Tensor:
        """Hugging Face ``generate`` with VRTs.

        Returns the generated ids only (``[B', new]``), or, with ``return_dict_in_generate=True``,
        Hugging Face's output object (whose ``sequences`` include the prompt).
        """
        from transformers import LogitsProcessorList

        batch = _to_device(batch, self.device)
        encoded = encoded if encoded is not None else self.encode(batch)
        processors = LogitsProcessorList(self.logits_processors())
        processors.extend(generation_kwargs.pop("logits_processor", None) or [])
        known = set(GenerationConfig().to_dict())
        config = self.generation_config(**{k: v for k, v in generation_kwargs.items() if k in known})
        rest = {k: v for k, v in generation_kwargs.items() if k not in known}
        # The backbone's placeholders (image pad, vision start/end) are masked in the prepared logits bias:
        # generated, they would break the teacher-forced pass of predict (image-token count != features).
        with self.vrt_io(encoded.bank, suppress=self.backbone.never_generate_ids):
            out = self.backbone.hf_model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                generation_config=config,
                logits_processor=processors,
                **self.backbone.model_inputs(batch),
                **_fresh(encoded.model_kwargs),
                **rest,
            )
        if config.return_dict_in_generate:
            return out
        return out[:, batch["input_ids"].shape[1] :]

    # --- predict --------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        prompts: str | Sequence[str],
        batch_size: int = 8,
        progress: bool | None = None,
        engine: str | Any | None = None,
        engine_args: dict[str, Any] | None = None,
        **generation_kwargs: Any,
    ) -> list[Prediction]:
        """Answer ``prompts`` about ``images``; parse objects and decode their boxes/scores/masks.

        A single prompt is used for every image. ``progress`` shows a bar (default: more than one batch).
        Images are paths, PIL images (any mode), numpy arrays or torch tensors (``HW``, ``HWC`` uint8,
        ``CHW`` float in ``[0, 1]``; a 4-d array or tensor is a batch of them), as
        :func:`padt_core.data.image.load_image` reads them. ``engine``: ``"hf"`` (Hugging Face ``generate``),
        the name of a ``padt.engines`` entry point (``"vllm"``: ``docs/vllm.md``) built once with ``engine_args``,
        or an engine object; objects are decoded by this model's heads either way. ``None`` (the default): the
        recipe's ``generation.engine`` and ``generation.engine_args`` (:meth:`engine_choice`).

        A list inside ``images`` is one sample with several images, one conversation
        (``docs/multi-image.md``): ``predict(images=[[a, b], [c]], prompts=[...])``; its objects say which
        image they are in (``obj.image``, ``obj.cells``) and are in that image's pixels.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        images = image_list(images)
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if generation_kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("predict returns one completion per prompt; use generate for several")
        engine, engine_args = self.engine_choice(engine, engine_args)
        if not (isinstance(engine, str) and engine == "hf"):  # generation elsewhere, objects from these heads
            runner = self._engine(engine, engine_args)
            return runner.predict(images, prompts, batch_size=batch_size, progress=progress, **generation_kwargs)
        starts = range(0, len(images), batch_size)
        show = progress if progress is not None else len(starts) > 1
        results: list[Prediction] = []
        for start in tqdm(starts, desc="predict", disable=not show, unit="batch"):
            results += self._predict_batch(
                images[start : start + batch_size], prompts[start : start + batch_size], generation_kwargs, start
            )
        return results

    def engine_choice(
        self, engine: str | Any | None = None, engine_args: Mapping[str, Any] | None = None
    ) -> tuple[str | Any, dict[str, Any]]:
        """The engine a call uses and its arguments: the call's, else the recipe's ``generation`` section.

        ``engine=None`` takes ``generation.engine``; the recipe's ``generation.engine_args`` apply when the
        engine is the recipe's, updated key by key by ``engine_args``. ``hf`` takes no arguments.

        Args:
            engine: ``"hf"``, a ``padt.engines`` name, an engine object, or ``None`` (the recipe's).
            engine_args: arguments that build a named engine, on top of the recipe's.

        Example:
            >>> model.engine_choice(engine_args={"dtype": "bfloat16"})  # doctest: +SKIP
            ('vllm', {'tensor_parallel_size': 2, 'dtype': 'bfloat16'})
        """
        settings = self.recipe.generation
        name = settings.engine if engine is None else engine
        args = dict(settings.engine_args) if isinstance(name, str) and name == settings.engine else {}
        args.update(engine_args or {})
        if isinstance(name, str) and name == "hf" and args:
            raise ValueError(f"engine_args {sorted(args)} configure another engine than hf (e.g. engine='vllm')")
        return name, args

    def _engine(self, engine: str | Any, engine_args: dict[str, Any] | None) -> Any:
        """``engine`` itself if it is an engine object, else the ``padt.engines`` entry point of that name built
        for this model (kept: an engine such as vLLM takes tens of seconds to start; new arguments replace it)."""
        if not isinstance(engine, str):
            return engine
        from importlib.metadata import entry_points

        args = dict(engine_args or {})
        engines = self.__dict__.setdefault("_engines", {})
        current = engines.get(engine)
        if current is not None and current[0] == args:
            return current[1]
        found = {ep.name: ep for ep in entry_points(group="padt.engines")}
        if engine not in found:
            where = " (generation.engine of the recipe)" if engine == self.recipe.generation.engine else ""
            raise ValueError(f"unknown engine {engine!r}{where}; installed: {', '.join(['hf', *sorted(found)])}")
        if current is not None and hasattr(current[1], "close"):
            current[1].close()
        engines[engine] = (args, found[engine].load()(self, **args))
        return engines[engine][1]

    def _predict_batch(self, images, prompts, generation_kwargs, first: int = 0) -> list[Prediction]:
        pil = [load_sample(first + b, im) for b, im in enumerate(images)]
        batch = _to_device(self._prepare_loaded(pil, prompts, images), self.device)
        encoded = self.encode(batch)
        completions = self.generate(batch, encoded=encoded, **generation_kwargs)
        return self.answer_format.read_completions(self, batch, encoded, completions, pil)

    def decode_objects(self, batch, encoded, completions, parsed: list[ParsedCompletion], pil, predictions):
        """Run the decoder heads on the VRT runs ``parsed`` from ``completions``; fill ``predictions``' objects."""
        # The state that emitted VRT t is the last-layer state one position before it: recompute it
        # with one teacher-forced pass (vision features reused).
        mask = (completions != self.backbone.pad_token_id).long()
        keep = completions.shape[1] + 1
        hidden = self.forward(batch, completions, encoded=encoded, completion_mask=mask, logits_to_keep=keep)
        objects = ObjectBatch.from_parsed(parsed, device=hidden.hidden_states.device)
        sizes = [(im.height, im.width) for own in pil for im in sample_image_list(own)]  # per batch image
        inputs = pack_objects(objects, encoded, hidden.hidden_states, sizes)
        results = iter(self.decoder.postprocess(self.decoder(inputs), inputs))
        for prediction in predictions:  # from_parsed packs the objects in this order
            for obj in prediction.objects:
                obj.outputs.update(next(results))

    # --- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write weights (safetensors), the resolved recipe and the backbone's processor files."""
        out = Path(directory)
        if (out / WEIGHTS_NAME).exists() and not overwrite:
            raise FileExistsError(f"{out} already holds a saved model; pass overwrite=True to replace it")
        # Built in a hidden sibling and swapped in whole (padt_core/atomic.py): a save killed midway leaves
        # the old model (or nothing), never a mix. padt.json, which marks a model directory, goes in last.
        with atomic_directory(out, marker=META_NAME) as tmp:
            self.backbone.save(str(tmp / BACKBONE_DIR))
            # save_model writes one tensor per group of tied weights
            save_model(self, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "padt_format": str(FORMAT_VERSION)})
            (tmp / RECIPE_NAME).write_text(self.recipe.to_yaml())
            meta = {"format_version": FORMAT_VERSION, "library": "padt"}
            (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> PaDTModel:
        """Restore a model written by :meth:`save_pretrained` (no original YAML needed)."""
        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        meta_file, weights = path / META_NAME, path / WEIGHTS_NAME
        if not meta_file.is_file() or not (path / RECIPE_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a padt model directory (missing {META_NAME} or {RECIPE_NAME})")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} was written with padt model format {meta.get('format_version')!r}; this padt reads "
                f"format {FORMAT_VERSION}. Convert it with the padt version that wrote it."
            )
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has no weights file {WEIGHTS_NAME}")
        recipe = load_recipe(path / RECIPE_NAME)
        backbone_cls = get_plugin("backbones", recipe.backbone.name)
        backbone = backbone_cls.from_saved(recipe.backbone, str(path / BACKBONE_DIR))
        model = cls._assemble(recipe, backbone)
        load_weights(model, weights, device=map_location, built_from=str(path / RECIPE_NAME))
        return model


def _fresh(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Shallow copies of dicts/ModelOutputs: HF ``generate`` expands multimodal outputs in place for beams,
    which would corrupt ``Encoded.model_kwargs`` for the teacher-forced pass that follows."""
    from transformers.utils import ModelOutput

    def copy(value: Any) -> Any:
        if isinstance(value, ModelOutput):
            return type(value)(**{k: copy(v) for k, v in value.items()})
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        return value

    return {k: copy(v) for k, v in kwargs.items()}


def _to_device(batch: BackboneBatch, device: torch.device) -> BackboneBatch:
    out = BackboneBatch()
    for key, value in batch.items():
        out[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return out

"""The one place ``padt serve`` calls the model: a batch of (image(s), prompt) jobs in, ``predict --out`` records out.

Another engine (a vLLM one, say) only needs :meth:`PaDTEngine.predict`'s contract: PIL images and
prompts in, one ``Prediction`` per job out, greedy and in order.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

__all__ = ["Answer", "Job", "PaDTEngine"]


@dataclass
class Job:
    """One request as the model sees it.

    Attributes:
        image: the decoded 8-bit RGB image, or a list of them (one conversation, ``docs/multi-image.md``).
        name: how the answer names the image (the upload's file name); a list for a list of images.
        prompt: the prompt sent to the model (the task template already applied).
    """

    image: Image.Image | list[Image.Image]
    name: str | list[str]
    prompt: str

    @property
    def images(self) -> list[Image.Image]:
        """The job's images as a list (one for a single image)."""
        return list(self.image) if isinstance(self.image, list) else [self.image]


@dataclass
class Answer:
    """A job's prediction, its images' VRT grids and its ``padt predict --out`` (or ``--multi``) JSON record."""

    job: Job
    prediction: Any
    grids: list[tuple[int, int]]
    record: dict[str, Any] = field(default_factory=dict)


class PaDTEngine:
    """A loaded ``PaDTModel`` answering jobs in batches (greedy: the recipe's generation settings).

    Args:
        model: the model, already on its device and in eval mode.
        max_new_tokens: tokens per answer; ``None``: the recipe's ``generation.max_new_tokens``.
        batch_read: decode the batch's boxes, scores and masks in one pass too (faster; they may then
            differ from the one-at-a-time answer in the last float bit). Default: each answer read alone.
        generation_engine: ``"hf"`` (Hugging Face ``generate``, above), or another engine for
            ``model.predict(engine=...)``: a ``padt.engines`` name (``"vllm"``, ``docs/vllm.md``) or an engine
            object; it gets each batch whole and batches as it does (its answers are its own).
        engine_args: arguments that build the named engine (``model.predict(engine_args=...)``).

    Example:
        >>> engine = PaDTEngine(padt_core.load("runs/my_model").eval())
        >>> engine.answer([Job(image, "shapes.png", "Please describe this image.")])[0].record["text"]
    """

    def __init__(
        self,
        model: Any,
        max_new_tokens: int | None = None,
        batch_read: bool = False,
        generation_engine: str | Any = "hf",
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.batch_read = batch_read
        self.generation_engine = generation_engine
        self.engine_args = engine_args
        self.generation = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}

    @property
    def templates(self) -> Any:
        """The recipe's prompt templates (``TaskTemplates``)."""
        return self.model.recipe.data.templates

    def predict(self, images: list[Any], prompts: list[str]) -> list[Any]:
        """The model's ``Prediction`` per sample (an image or a list of images, one prompt each), each what
        ``model.predict`` gives it alone.

        One ``generate`` call for the whole batch; then each answer's boxes, scores and masks from its own
        teacher-forced pass. That pass over a left-padded batch differs from the unpadded one in the last
        bits (float sums over other lengths: boxes moved by 1 ulp on the tiny models), so a batched answer
        would not be the one-at-a-time answer byte for byte; per sample it is. The batched generation's
        tokens equal the one-at-a-time tokens in every test and load test so far (greedy: only a logit
        tie within rounding could flip one), which ``padt bench serve`` keeps checking.
        """
        model = self.model
        if not (isinstance(self.generation_engine, str) and self.generation_engine == "hf"):
            return model.predict(
                images,
                prompts,
                batch_size=len(images),
                progress=False,
                engine=self.generation_engine,
                engine_args=self.engine_args,
                **self.generation,
            )
        if len(images) == 1:
            return model.predict(images, prompts, batch_size=1, progress=False, **self.generation)
        batch = model.prepare(images, prompts)
        encoded = model.encode(batch)
        completions = model.generate(batch, encoded=encoded, **self.generation)
        if model.decoder is None or self.batch_read:  # without heads, reading the batch's tokens is exact
            return model.answer_format.read_completions(model, batch, encoded, completions, list(images))
        return [self._read_alone(image, prompt, row) for image, prompt, row in zip(images, prompts, completions)]

    def _read_alone(self, image: Any, prompt: str, row: Any) -> Any:
        """``Prediction`` of one batched completion, read as ``model.predict`` reads a batch of one."""
        model = self.model
        stops = set(model.backbone.eos_token_ids)
        ends = [i for i, token in enumerate(row.tolist()) if token in stops]
        # alone, generation stops after the first end token; in a batch, pad tokens follow it
        own = row[: ends[0] + 1] if ends else row
        batch = model.prepare([image], [prompt])
        encoded = model.encode(batch)
        return model.answer_format.read_completions(model, batch, encoded, own[None], [image])[0]

    def answer(self, jobs: list[Job]) -> list[Answer | Exception]:
        """Answer ``jobs`` in one batch; if the batch fails, each job alone, so one bad job fails by itself."""
        try:
            predictions = self.predict([job.image for job in jobs], [job.prompt for job in jobs])
        except Exception as err:
            if len(jobs) == 1:
                return [err]
            return [self.answer([job])[0] for job in jobs]
        return [self._answer(job, prediction) for job, prediction in zip(jobs, predictions)]

    def _answer(self, job: Job, prediction: Any) -> Answer:
        from ..cli.predict import _vrt_grid, multi_prediction_record, prediction_record

        grids = [_vrt_grid(self.model, image) for image in job.images]
        if isinstance(job.image, list):
            record = multi_prediction_record(job.name, job.image, grids, job.prompt, prediction)
        else:
            record = prediction_record(job.name, job.image, grids[0], job.prompt, prediction)
        return Answer(job=job, prediction=prediction, grids=grids, record=record)

    def draw(self, answer: Answer, masks: bool = True, cells: bool = True, image: int = 0) -> bytes:
        """PNG of the answer drawn on its ``image``-th image (``padt_core.viz``): boxes, labels and scores
        always, masks and VRT cells when asked; of several images, the objects in that one.

        Raises:
            IndexError: ``image`` is not one of the job's images.
        """
        from ..cli.predict import objects_in_image
        from ..viz import draw_prediction

        images = answer.job.images
        if not 0 <= image < len(images):
            raise IndexError(f"image {image}: the answer has {len(images)} image(s)")
        several = isinstance(answer.job.image, list)
        decoder = self.model.decoder
        heads = decoder.heads.values() if decoder is not None else ()
        picture = draw_prediction(
            images[image],
            objects_in_image(answer.prediction, image) if several else answer.prediction,
            answer.grids[image] if cells else None,
            mask_alpha=0.45 if masks else 0.0,
            heads=heads,
        )
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

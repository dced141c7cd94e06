"""``padt predict``: answer one prompt about each image (or, with ``--multi``, about all of them in one
conversation); JSON on stdout or files per image."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, atomic_write_text
from ._common import (
    _build_or_load,
    _check_model_source,
    _refuse_existing,
    _strict_json,
    add_overrides,
    check_device,
    positive_int,
    print_json,
)


def _prediction_json(prediction: Any, image: str | None = None, rle: bool = False) -> dict[str, Any]:
    """A prediction as JSON: per object ``label``, ``vrt``, boxes xyxy in pixels, ``score``, masks as size +
    area (or COCO RLE with ``rle``), then every other head output by its key (``objects.object_json``)."""
    from ..objects import object_json

    objects = [object_json(obj, rle=rle) for obj in prediction.objects]
    out: dict[str, Any] = {} if image is None else {"image": image}
    out.update(text=prediction.text, objects=objects, skipped=prediction.skipped, truncated=prediction.truncated)
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer one prompt about each image; print JSON, or write ``<stem>.json`` + ``<stem>.png`` per image."""

    from ..data.image import load_image
    from ..data.templates import DEFAULT_TEMPLATES

    _task_prompt(args, DEFAULT_TEMPLATES)  # bad flag combinations fail before the model loads
    # stdout is the JSON answer alone; vLLM logs to stdout unless told otherwise (read when it is imported)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # None: the recipe's generation.engine / engine_args, which --engine-arg updates (model.engine_choice)
    engine = {"engine": args.engine, "engine_args": engine_flags(args)}
    device = check_device(args.device)
    _check_model_source(args.model, args.overrides)
    images = [load_image(path) for path in args.image]  # one error naming the file (padt_core/data/image.py)
    if args.multi:
        multi_files = _multi_output_paths(args.image, Path(args.out), args.overwrite) if args.out else None
    outputs = _output_paths(args.image, Path(args.out), args.overwrite) if args.out and not args.multi else None
    model = _build_or_load(args.model, args.overrides)
    model.to(device=device)
    check_engine_args(args, model)
    model.eval()
    prompt = _task_prompt(args, model.recipe.data.templates)
    kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    if args.multi:
        return _predict_multi(model, args.image, images, prompt, multi_files, {**engine, **kwargs})
    predictions = model.predict(images, prompt, batch_size=args.batch_size, **engine, **kwargs)
    if outputs is None:
        print_json([_prediction_json(p, image) for p, image in zip(predictions, args.image)])
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    written = [
        _write_prediction(model, path, image, prediction, prompt, files)
        for path, image, prediction, files in zip(args.image, images, predictions, outputs)
    ]
    print_json(written)
    return 0


def _multi_output_paths(images: Sequence[str], out: Path, overwrite: bool) -> tuple[Path, list[Path]]:
    """``--multi --out``: one JSON for the conversation (``<stem>+<stem>.json``) and one PNG per image."""
    pairs = _output_paths(images, out, overwrite)
    json_file = out / ("+".join(Path(image).stem for image in images) + ".json")
    _refuse_existing(json_file, overwrite)
    return json_file, [png for _, png in pairs]


def _predict_multi(
    model: Any,
    sources: Sequence[str],
    images: Sequence[Any],
    prompt: str,
    files: tuple[Path, list[Path]] | None,
    kwargs: dict[str, Any],
) -> int:
    """``--multi``: every ``--image`` in one conversation (``docs/multi-image.md``); one JSON record (each
    object with its ``image`` and its ``cells`` in that image's grid, boxes in that image's pixels) and,
    with ``--out``, one drawing per image of the objects in it."""
    from ..viz import draw_prediction

    prediction = model.predict([list(images)], prompt, **kwargs)[0]
    grids = [_vrt_grid(model, image) for image in images]
    record = multi_prediction_record(sources, images, grids, prompt, prediction, rle=files is not None)
    if files is None:
        print_json(record)
        return 0
    json_file, pngs = files
    json_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_file, json.dumps(record, indent=2) + "\n")
    heads = model.decoder.heads.values() if model.decoder is not None else ()
    for j, (image, grid, png_file) in enumerate(zip(images, grids, pngs)):
        own = objects_in_image(prediction, j)
        drawing = draw_prediction(image, own, grid, heads=heads, prompt=prompt)
        with atomic_path(png_file) as tmp:
            drawing.save(tmp, format="PNG")
    print_json({"json": str(json_file), "png": [str(p) for p in pngs], "objects": len(prediction.objects)})
    return 0


def multi_prediction_record(
    sources: Sequence[str],
    images: Sequence[Any],
    grids: Sequence[tuple[int, int]],
    prompt: str,
    prediction: Any,
    rle: bool = True,
) -> dict[str, Any]:
    """The JSON ``padt predict --multi`` writes (``padt serve`` answers the same for several images): each
    image's name, size and VRT grid, the prompt, then the prediction (objects with their ``image``)."""
    record = {
        "images": [
            {"image": source, "width": image.width, "height": image.height, "vrt_grid": list(grid)}
            for source, image, grid in zip(sources, images, grids)
        ],
        "prompt": prompt,
    }
    record.update(_prediction_json(prediction, rle=rle))
    return _strict_json(record)


def objects_in_image(prediction: Any, image: int) -> Any:
    """``prediction`` with only the objects of its ``image``-th image, their VRTs as cells of that image's
    own grid (what a drawing of that image marks)."""
    from ..objects import PredictedObject

    own = [
        PredictedObject(obj.label, obj.cells if obj.cells is not None else obj.vrt, outputs=obj.outputs)
        for obj in prediction.objects
        if (obj.image or 0) == image
    ]
    return replace(prediction, objects=own)


def add_engine_arguments(parser: argparse.ArgumentParser, engines: str) -> None:
    """``--engine`` (``engines`` says which, for this command) and the repeatable ``--engine-arg KEY=VALUE``."""
    parser.add_argument(
        "--engine",
        default=None,
        help=f"generation engine: {engines}; default: the recipe's generation.engine (hf unless set)",
    )
    parser.add_argument(
        "--engine-arg",
        action="append",
        metavar="KEY=VALUE",
        help="engine option, repeatable, on top of the recipe's generation.engine_args "
        "(vllm: tensor_parallel_size=2, max_num_batched_tokens=2048, dtype=bfloat16)",
    )


def engine_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--engine-arg`` as a mapping, refused before the model loads when ``--engine hf`` takes none."""
    if args.engine_arg and args.engine == "hf":
        raise ValueError("--engine-arg configures another engine than hf; add --engine vllm")
    return parse_engine_args(args.engine_arg)


def check_engine_args(args: argparse.Namespace, model: Any) -> None:
    """``--engine-arg`` without ``--engine`` needs a recipe whose ``generation.engine`` is not hf."""
    if args.engine_arg and args.engine is None and model.recipe.generation.engine == "hf":
        raise ValueError(
            "--engine-arg configures another engine than hf; add --engine vllm (or set generation.engine in the recipe)"
        )


def parse_engine_args(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--engine-arg key=value`` pairs (values parsed as YAML: ``tensor_parallel_size=2``, ``dtype=bfloat16``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--engine-arg expects key=value (e.g. max_num_batched_tokens=2048), got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _task_prompt(args: argparse.Namespace, templates: Any) -> str:
    """The prompt sent to the model: ``--prompt`` verbatim, or ``--task``'s template (``TaskTemplates``)."""
    from ..data.templates import ovd_prompt, rec_prompt, ric_prompt

    if args.labels is not None and args.task != "ovd":
        raise ValueError("--labels names the categories of --task ovd; add --task ovd")
    if args.task is None:
        if args.prompt is None:
            raise ValueError("pass --prompt, or --task rec|ovd|ric to use a task's prompt template")
        return args.prompt
    if args.task == "rec":
        if args.prompt is None:
            raise ValueError('--task rec needs --prompt with the referring sentence (e.g. --prompt "the red square")')
        return rec_prompt(args.prompt, templates)
    if args.prompt is not None:
        raise ValueError(
            f"--task {args.task} writes its own prompt; drop --prompt (or drop --task to send it verbatim)"
        )
    if args.task == "ric":
        return ric_prompt(templates)
    labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    if not labels:
        raise ValueError("--task ovd needs --labels with the categories to detect (e.g. --labels cat,dog)")
    return ovd_prompt(labels, templates)


def _output_paths(images: Sequence[str], out: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """``(json, png)`` per image in ``out``, named after the image's stem; checked before any work is done."""
    from collections import Counter

    stems = [Path(image).stem for image in images]
    repeated = sorted(stem for stem, n in Counter(stems).items() if n > 1)
    if repeated:
        raise ValueError(f"images with the same file name would write the same files in {out}: {', '.join(repeated)}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    paths = [(out / f"{stem}.json", out / f"{stem}.png") for stem in stems]
    for pair in paths:
        for path in pair:
            _refuse_existing(path, overwrite)
    return paths


def _write_prediction(
    model: Any, source: str, image: Any, prediction: Any, prompt: str, files: tuple[Path, Path]
) -> dict[str, Any]:
    """Write one image's prediction as JSON (masks as COCO RLE) and as a drawing; return what was written."""
    from ..viz import draw_prediction

    grid = _vrt_grid(model, image)
    record = prediction_record(source, image, grid, prompt, prediction)
    json_file, png_file = files
    heads = model.decoder.heads.values() if model.decoder is not None else ()
    drawing = draw_prediction(image, prediction, grid, heads=heads, prompt=prompt)
    # temporary files, then renames (padt_core/atomic.py): an interrupted run leaves no half-written JSON or PNG
    atomic_write_text(json_file, json.dumps(record, indent=2) + "\n")
    with atomic_path(png_file) as tmp:
        drawing.save(tmp, format="PNG")
    return {"image": source, "json": str(json_file), "png": str(png_file), "objects": len(prediction.objects)}


def prediction_record(source: str, image: Any, grid: tuple[int, int], prompt: str, prediction: Any) -> dict[str, Any]:
    """The JSON ``padt predict --out`` writes for one image (``padt serve`` answers the same): the image's name
    and size, its VRT grid, the prompt, then the prediction with masks as COCO RLE; NaN as ``None``.

    Args:
        source: how the image is named in the record (its path, or an upload's file name).
        image: the PIL image the model saw.
        grid: its ``(h, w)`` VRT grid (:func:`_vrt_grid`).
        prompt: the prompt sent to the model.
        prediction: the model's ``Prediction`` for it.

    Example:
        >>> prediction_record("cat.png", image, (8, 8), prompt, model.predict(image, prompt)[0])["vrt_grid"]
        [8, 8]
    """
    record = {"image": source, "width": image.width, "height": image.height, "vrt_grid": list(grid), "prompt": prompt}
    record.update(_prediction_json(prediction, rle=True))
    return _strict_json(record)


def _vrt_grid(model: Any, image: Any) -> tuple[int, int]:
    """The ``(h, w)`` VRT grid of ``image`` as the model's processor sees it."""
    batch = model.backbone.process([model.backbone.format_prompt("x", True)], [image])
    rows, cols = (int(v) for v in batch["image_grids"][0])
    return rows, cols


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR_OR_RECIPE", help="saved model directory, recipe path or name")
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    parser.add_argument(
        "--prompt", default=None, help="the question asked of every image (with --task rec: the sentence)"
    )
    parser.add_argument(
        "--task",
        choices=["rec", "ovd", "ric"],
        default=None,
        help="use the model's prompt template: rec (--prompt is the referring sentence; RES masks come with it), "
        "ovd (--labels), ric (captioning)",
    )
    parser.add_argument("--labels", default=None, metavar="A,B,C", help="categories to detect, with --task ovd")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N", help="default: the recipe's")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per batch (default: 8)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … (default: cpu)")
    add_engine_arguments(parser, "hf or vllm (docs/vllm.md; objects by padt's heads either way)")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="write <stem>.json (masks as COCO RLE) and <stem>.png per image"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    parser.add_argument(
        "--multi",
        action="store_true",
        help="all --image in one conversation (<|img|> in --prompt places them, else they come first): one JSON "
        "record, objects with their image index; with --out, <stem>+<stem>.json and one PNG per image",
    )
    add_overrides(parser)
    parser.set_defaults(handler=cmd_predict)

"""``padt demo``: shapes → train → eval → report + gallery; ``--smoke`` is an instant check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_overrides, print_json
from .predict import _prediction_json

_DEMO_OUT = "runs/demo"
_SMOKE_ONLY = ("prompt", "max_new_tokens")
_FULL_ONLY = ("out", "seed", "quick", "long", "overwrite")


def cmd_demo(args: argparse.Namespace) -> int:
    """Shapes → train → eval → ``report.json`` + ``gallery.png`` (``padt_core.demo``); ``--smoke``: instant check."""
    unused = _FULL_ONLY if args.smoke else _SMOKE_ONLY
    given = [name for name in unused if getattr(args, name) is not None and getattr(args, name) is not False]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(
            f"{flags} {'do' if len(given) > 1 else 'does'} not apply {'with' if args.smoke else 'without'} --smoke"
        )
    if args.smoke:
        return _demo_smoke(args)
    from ..demo import DEMO_RECIPE, format_table, run_demo

    out = Path(args.out or _DEMO_OUT)
    budget = "quick" if args.quick else "long" if args.long else "default"
    report = run_demo(
        out,
        budget=budget,
        overwrite=args.overwrite,
        seed=args.seed or 0,
        overrides=args.overrides or None,
        recipe_name=args.recipe or DEMO_RECIPE,
    )
    print(format_table(report))
    info = report.get("budget", {})
    if info:
        print(
            f"budget {info.get('name')}: {info.get('train_images')} train images, {info.get('steps')} steps, "
            f"trained in {info.get('train_seconds')}s, {info.get('total_seconds')}s in all"
        )
    print(f"report:  {out / 'report.json'}")
    print(f"gallery: {out / 'gallery.png'}")
    return 0


def _demo_image(size: int = 224) -> Any:
    """A grey image with a red square and a blue disc: something to point at, made without files."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((size // 8, size // 8, size // 2, size // 2), fill=(220, 30, 30))
    draw.ellipse((size // 2, size // 2, size - size // 8, size - size // 8), fill=(30, 30, 220))
    return image


def _demo_smoke(args: argparse.Namespace) -> int:
    """Build a recipe, predict on a generated image, print completion and objects (every stage runs)."""
    import time

    import padt_core

    recipe = args.recipe or "tiny_qwen"
    prompt = args.prompt or "Please find the red square."
    start = time.perf_counter()
    model = padt_core.build(recipe=recipe, overrides=args.overrides or None)
    model.eval()
    built = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())
    print(f"built {model.recipe.name!r} in {built - start:.1f}s ({params:,} parameters)")
    max_new_tokens = 24 if args.max_new_tokens is None else args.max_new_tokens
    prediction = model.predict(_demo_image(), prompt, max_new_tokens=max_new_tokens)[0]
    print(f"prompt: {prompt}")
    print(f"completion ({len(prediction.ids)} tokens, {time.perf_counter() - built:.1f}s): {prediction.text!r}")
    print_json(_prediction_json(prediction)["objects"])
    if model.recipe.name == "tiny_qwen":
        print("(tiny_qwen is randomly initialised: the text is noise; this checks that every stage runs)")
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR", help=f"output folder (default: {_DEMO_OUT})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", help="a small budget: fewer images and steps")
    budget.add_argument(
        "--long", action="store_true", help="the 'full' shapes split (distractors: size/position words), more steps"
    )
    parser.add_argument("--seed", type=int, default=None, help="data and training seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a demo run already in --out")
    parser.add_argument(
        "--recipe",
        default=None,
        help="recipe path or bundled name (default: tiny_shapes_pretrained; with --smoke: tiny_qwen); "
        "tiny_qwen_shapes trains the tiny Qwen2.5-VL from scratch",
    )
    smoke = parser.add_argument_group("smoke run (--smoke)")
    smoke.add_argument("--smoke", action="store_true", help="only build a recipe and predict on a drawn image")
    smoke.add_argument("--prompt", default=None, help='default: "Please find the red square."')
    smoke.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: 24")
    add_overrides(parser)
    parser.set_defaults(handler=cmd_demo)

"""The ``padt`` command line: one subcommand per verb, each a plain function.

Subcommands live in :data:`COMMANDS` (``name -> Command``). A ``Command`` adds its arguments to its
own parser and points the parser at a handler ``fn(args) -> exit code``. New verbs (``train``,
``eval``, ``data``, ``convert`` …) add one entry; ``demo`` is kept as its own handler,
:func:`cmd_demo`, so it can be replaced without touching the rest.

Bad input (missing files, invalid recipes, unknown plugins, an unreachable hub, values our code
rejects) prints one ``padt: error: …`` message on stderr and exits with status 2; ``--traceback``
shows the full trace instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "Command", "Handler", "add_subcommand", "build_parser", "cmd_demo", "main"]

EXIT_USAGE = 2  # argparse's own status for bad usage; bad input files/values are usage errors too
Handler = Callable[[argparse.Namespace], int]  # what `parser.set_defaults(handler=...)` stores


@dataclass(frozen=True)
class Command:
    """A top-level subcommand: ``configure(parser)`` adds arguments and sets ``handler`` defaults."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": reported in one line, not as a traceback."""
    from .backbone import HubUnreachableError
    from .plugins import UnknownPluginError
    from .recipe import RecipeError

    # RecipeError is a ValueError; listed for clarity. HubUnreachableError is an OSError.
    return (RecipeError, UnknownPluginError, HubUnreachableError, FileNotFoundError, FileExistsError, ValueError)


def _common_options() -> argparse.ArgumentParser:
    """Options every (sub)command accepts, so ``--traceback`` works before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subparser that did not see the flag must not reset what the main parser saw.
    common.add_argument(
        "--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
    )
    return common


def add_subcommand(subparsers: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A (nested) subcommand parser with the common options; use it for every new verb."""
    return subparsers.add_parser(name, help=help, description=help, parents=[_common_options()])


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="dotted recipe overrides, values parsed as YAML (e.g. vrt.rank=8 train.lr=1e-5)",
    )


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … (default: cpu)")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the model (default: recipe's)"
    )


def _build_or_load(source: str, overrides: Sequence[str]):
    """A model from a directory written by ``save_pretrained`` (holds ``padt.json``) or from a recipe."""
    import padt_core
    from padt_core.model import META_NAME

    path = Path(source)
    if path.is_dir():
        if not (path / META_NAME).is_file():
            raise FileNotFoundError(f"{path} is a directory but not a padt model (no {META_NAME})")
        if overrides:
            raise ValueError("recipe overrides apply to recipes, not to a saved model directory")
        return padt_core.load(path)
    return padt_core.build(recipe=source, overrides=list(overrides) or None)


def _prediction_json(prediction: Any, image: str | None = None) -> dict[str, Any]:
    objects = []
    for obj in prediction.objects:
        item: dict[str, Any] = {"label": obj.label, "vrt": obj.vrt, "box": obj.box, "score": obj.score}
        # Masks are full-resolution arrays: report their size here, not every pixel.
        item["mask"] = None if obj.mask is None else {"shape": list(obj.mask.shape), "area": int(obj.mask.sum())}
        objects.append(item)
    out: dict[str, Any] = {} if image is None else {"image": image}
    out.update(text=prediction.text, objects=objects, skipped=prediction.skipped, truncated=prediction.truncated)
    return out


# ---------------------------------------------------------------------------------------------------
# padt plugins
# ---------------------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    """List registered plugins by kind."""
    from .plugins import get_registry, list_plugins

    plugins = list_plugins(args.kind)
    if args.json:
        _print_json(plugins)
        return 0
    rows = [("KIND", "NAME", "PROVIDED BY")]
    for kind, names in plugins.items():
        registry = get_registry(kind)
        rows += [(kind, name, registry.sources.get(name, "")) for name in names] or [(kind, "-", "")]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for kind, name, source in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {source}".rstrip())
    return 0


def _configure_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print {kind: [names]} as JSON")
    parser.add_argument("--kind", default=None, help="only this kind (backbones, trunks, heads, …)")
    parser.set_defaults(handler=cmd_plugins)


# ---------------------------------------------------------------------------------------------------
# padt recipe validate | schema
# ---------------------------------------------------------------------------------------------------


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    """Load, merge and validate a recipe; optionally print the resolved YAML."""
    from .recipe import load_recipe

    recipe = load_recipe(args.file, args.overrides or None)
    print(f"OK {recipe.name}")
    if args.print:
        print(recipe.to_yaml(), end="")
    return 0


def cmd_recipe_schema(args: argparse.Namespace) -> int:
    """Print the recipe's JSON schema (plugin sections list the registered plugins' schemas)."""
    from .recipe import recipe_schema

    _print_json(recipe_schema())
    return 0


def _configure_recipe(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe_command", metavar="{validate,schema}", required=True)
    validate = add_subcommand(sub, "validate", "validate a recipe file or bundled recipe name")
    validate.add_argument("file", help="recipe YAML path or bundled recipe name (e.g. tiny_qwen)")
    _add_overrides(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved recipe as YAML")
    validate.set_defaults(handler=cmd_recipe_validate)
    schema = add_subcommand(sub, "schema", "print the recipe JSON schema")
    schema.set_defaults(handler=cmd_recipe_schema)


# ---------------------------------------------------------------------------------------------------
# padt bench generate | decoder
# ---------------------------------------------------------------------------------------------------


def _write_result(result: dict[str, Any], output: str | None) -> None:
    text = json.dumps(result, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    print(text)


def cmd_bench_generate(args: argparse.Namespace) -> int:
    """Per-token decode time of PaDT generation vs the plain backbone."""
    from .bench.generate import bench_generate

    result = bench_generate(
        args.recipe,
        batch_sizes=tuple(args.batch_sizes),
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        overrides=args.overrides or None,
        image_size=args.image_size,
        vrt_mode=args.vrt_mode,
        threads=args.threads,
        clock=args.clock,
    )
    _write_result(result, args.output)
    return 0


def cmd_bench_decoder(args: argparse.Namespace) -> int:
    """Decoder benchmark (``padt_core.bench.decoder``); options other than device/dtype use its defaults."""
    try:
        from .bench.decoder import bench_decoder
    except ModuleNotFoundError as err:
        if err.name not in {"padt_core.bench.decoder", "padt_core.bench"}:
            raise  # a dependency of the module is missing: that is a real error, keep its trace
        raise ValueError(
            "the decoder benchmark is not available in this installation (padt_core/bench/decoder.py is missing)"
        ) from None
    kwargs: dict[str, Any] = {"device": args.device}
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    result = bench_decoder(**kwargs)
    _write_result(result, args.output)
    return 0


def _configure_bench(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="{generate,decoder}", required=True)
    gen = add_subcommand(sub, "generate", "PaDT vs plain backbone decode speed (ms per token)")
    gen.add_argument("--recipe", required=True, help="recipe path or bundled name")
    gen.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B")
    gen.add_argument("--new-tokens", type=int, default=32, metavar="N", help="tokens per timed generation")
    gen.add_argument("--repeats", type=int, default=3, metavar="K", help="timed repeats (median)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--image-size", type=int, default=224, metavar="PX", help="side of the noise images")
    gen.add_argument(
        "--vrt-mode",
        choices=["random", "init"],
        default="random",
        help="random: non-zero prototypes so VRTs are emitted (default); init: weights as built",
    )
    gen.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    gen.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default) or this process's CPU time (CPU only; steadier on a shared machine)",
    )
    gen.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    _add_device(gen)
    _add_overrides(gen)
    gen.set_defaults(handler=cmd_bench_generate)
    dec = add_subcommand(sub, "decoder", "decoder trunk + heads speed")
    dec.add_argument("--output", default=None, metavar="FILE", help="also write the JSON here")
    _add_device(dec)
    dec.set_defaults(handler=cmd_bench_decoder)


# ---------------------------------------------------------------------------------------------------
# padt predict
# ---------------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    """Answer one prompt about each image; print completions and parsed objects as JSON."""
    import torch

    for image in args.image:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
    model = _build_or_load(args.model, args.overrides)
    model.to(device=torch.device(args.device))
    model.eval()
    kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    predictions = model.predict(args.image, args.prompt, batch_size=args.batch_size, **kwargs)
    _print_json([_prediction_json(p, image) for p, image in zip(predictions, args.image)])
    return 0


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR_OR_RECIPE", help="saved model directory, recipe path or name")
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    parser.add_argument("--prompt", required=True, help="the question, asked of every image")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    _add_overrides(parser)
    parser.set_defaults(handler=cmd_predict)


# ---------------------------------------------------------------------------------------------------
# padt demo (a smoke run until the real demo lands; replace cmd_demo only)
# ---------------------------------------------------------------------------------------------------


def _demo_image(size: int = 224):
    """A grey image with a red square and a blue disc: something to point at, made without files."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((size // 8, size // 8, size // 2, size // 2), fill=(220, 30, 30))
    draw.ellipse((size // 2, size // 2, size - size // 8, size - size // 8), fill=(30, 30, 220))
    return image


def cmd_demo(args: argparse.Namespace) -> int:
    """End-to-end smoke run: build a recipe, predict on a generated image, print completion and objects."""
    import time

    import padt_core

    start = time.perf_counter()
    model = padt_core.build(recipe=args.recipe, overrides=args.overrides or None)
    model.eval()
    built = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())
    print(f"built {model.recipe.name!r} in {built - start:.1f}s ({params:,} parameters)")
    prediction = model.predict(_demo_image(), args.prompt, max_new_tokens=args.max_new_tokens)[0]
    print(f"prompt: {args.prompt}")
    print(f"completion ({len(prediction.ids)} tokens, {time.perf_counter() - built:.1f}s): {prediction.text!r}")
    _print_json(_prediction_json(prediction)["objects"])
    if model.recipe.name == "tiny_qwen":
        print("(tiny_qwen is randomly initialised: the text is noise; this checks that every stage runs)")
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny_qwen", help="recipe path or bundled name (default: tiny_qwen)")
    parser.add_argument("--prompt", default="Please find the red square.")
    parser.add_argument("--max-new-tokens", type=int, default=24, metavar="N")
    _add_overrides(parser)
    parser.set_defaults(handler=cmd_demo)


# ---------------------------------------------------------------------------------------------------
# Registry of subcommands and the entry point
# ---------------------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "plugins": Command("list registered plugins", _configure_plugins),
    "recipe": Command("validate recipes, print the recipe schema", _configure_recipe),
    "predict": Command("predict objects in images with a saved model or a recipe", _configure_predict),
    "bench": Command("benchmarks (JSON on stdout)", _configure_bench),
    "demo": Command("end-to-end smoke run on the tiny offline model", _configure_demo),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``padt`` parser with every subcommand in :data:`COMMANDS`."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="padt",
        description="PaDT: let a multimodal LLM point at image patches (visual reference tokens).",
        parents=[_common_options()],
    )
    parser.add_argument("--version", action="version", version=f"padt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.configure(add_subcommand(sub, name, command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``padt``; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    show_trace = getattr(args, "traceback", False)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("padt: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if show_trace:
            raise
        print(f"padt: error: {str(err) or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

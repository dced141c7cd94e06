"""``padt serve``: a web page and a JSON API for a model, on 127.0.0.1 unless ``--host`` says otherwise."""

from __future__ import annotations

import argparse
import sys

from ._common import EXIT_USAGE, _build_or_load, _check_model_source, add_overrides, check_device, positive_int
from .predict import add_engine_arguments

_INSTALL = 'padt serve needs the serve extra: pip install "padt[serve]" (from a checkout: pip install -e ".[serve]")'

_MB = 1024 * 1024
# (flag, ServeLimits field, type, metavar, flag unit in the field's unit, help): one flag per bound of the server.
_LIMIT_FLAGS = (
    ("--max-batch-size", "max_batch_size", positive_int, "N", 1, "requests per generate call"),
    ("--max-wait-ms", "max_wait_ms", float, "MS", 1, "how long a batch waits for more requests"),
    ("--max-queue", "max_queue", positive_int, "N", 1, "requests waiting before more are refused with 503"),
    ("--max-upload-mb", "max_upload_bytes", positive_int, "MB", _MB, "largest image file"),
    ("--max-image-pixels", "max_image_pixels", positive_int, "N", 1, "most pixels of a request's images, w x h"),
    ("--max-images", "max_images", positive_int, "N", 1, "most images in one request, one conversation"),
    ("--max-prompt-chars", "max_prompt_chars", positive_int, "N", 1, "longest prompt"),
    ("--timeout", "timeout_s", float, "S", 1, "seconds per request"),
)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, then serve the page and ``/api/predict`` until interrupted."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(f"padt: error: {_INSTALL}", file=sys.stderr)
        return EXIT_USAGE
    from ..serve import PaDTEngine, ServeLimits, create_app, is_loopback, shapes_examples
    from .predict import check_engine_args, engine_flags

    limits = ServeLimits(
        max_new_tokens=args.max_new_tokens,
        **{name: getattr(args, flag[2:].replace("-", "_")) * scale for flag, name, _, _, scale, _ in _LIMIT_FLAGS},
    )
    engine_args = engine_flags(args)
    device = check_device(args.device)
    _check_model_source(args.model, args.overrides)
    model = _build_or_load(args.model, args.overrides)
    model.to(device=device)
    check_engine_args(args, model)
    model.eval()
    examples = [] if args.no_examples else shapes_examples()
    generation_engine, engine_args = model.engine_choice(args.engine, engine_args)  # the recipe's by default
    engine = PaDTEngine(
        model,
        max_new_tokens=args.max_new_tokens,
        batch_read=args.batch_read,
        generation_engine=generation_engine,
        engine_args=engine_args,
    )
    app = create_app(engine, limits, examples)
    if not is_loopback(args.host):
        print(
            f"padt serve: listening on {args.host}, not only on this machine: anyone who can reach this port can "
            "use the model (there is no authentication)",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"padt serve: {model.recipe.name} on http://{shown}:{args.port} (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    from ..serve.limits import ServeLimits

    d = ServeLimits()
    parser.add_argument("model", metavar="MODEL_DIR_OR_RECIPE", help="saved model directory, recipe path or name")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network, "
        "without authentication)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … (default: cpu)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N", help="default: the recipe's")
    for flag, name, kind, metavar, scale, text in _LIMIT_FLAGS:
        default = getattr(d, name) // scale if scale > 1 else getattr(d, name)
        shown = f"{default:g}" if isinstance(default, float) else f"{default:,}"
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{text} (default: {shown})")
    add_engine_arguments(
        parser, "hf (Hugging Face generate, batched here) or vllm (docs/vllm.md; it batches each batch itself)"
    )
    parser.add_argument(
        "--batch-read",
        action="store_true",
        help="decode a batch's boxes/scores/masks in one pass too: faster, but they may differ from the "
        "one-at-a-time answer in the last float bit (default: each answer read alone, identical)",
    )
    parser.add_argument("--no-examples", action="store_true", help="do not preload the shapes example images")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's"
    )
    add_overrides(parser)
    parser.set_defaults(handler=cmd_serve)

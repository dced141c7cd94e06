"""``padt convert``: a released PaDT checkpoint into a padt model directory."""

from __future__ import annotations

import argparse

from ._common import add_overrides


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a released PaDT checkpoint into a padt model directory."""
    from ..convert import convert

    out = convert(
        args.source,
        args.destination,
        recipe=args.recipe,
        overrides=args.overrides or None,
        revision=args.revision,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def _configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="hub id (PaDT-MLLM/PaDT_Pro_3B) or directory, published layout")
    parser.add_argument("destination", metavar="DST", help="padt model directory to write (padt_core.load reads it)")
    add_overrides(parser)
    parser.add_argument(
        "--recipe", default=None, help="recipe to use as is (default: padt_pro_3b_released filled from config.json)"
    )
    parser.add_argument("--revision", default=None, help="hub revision of SRC")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in DST")
    parser.set_defaults(handler=cmd_convert)

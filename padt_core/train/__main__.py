"""``python -m padt_core.train RECIPE [key.sub=value ...] [--output-dir D] [--overwrite | --resume]``.

The same entry point on one process or many: ``torchrun --nproc_per_node N -m padt_core.train …``
(or ``accelerate launch -m padt_core.train …``) runs data-parallel training of the same recipe; the
Hugging Face Trainer reads the process group from the launcher's environment. The main process
prints a JSON summary (output directory, steps, final loss, skipped samples) and, with
``--summary FILE``, writes it with the full log history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


def build_parser(prog: str = "python -m padt_core.train") -> argparse.ArgumentParser:
    """The argument parser (``padt train`` may reuse it)."""
    parser = argparse.ArgumentParser(prog=prog, description="Train a PaDT recipe with the Hugging Face Trainer.")
    parser.add_argument("recipe", help="recipe YAML path or bundled recipe name")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="dotted recipe overrides, values parsed as YAML (e.g. train.max_steps=100 train.lr=1e-5)",
    )
    parser.add_argument("--output-dir", default=None, help="run directory (default: train.output_dir or runs/NAME)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a run directory that holds a run")
    mode.add_argument("--resume", action="store_true", help="continue the latest checkpoint of the run directory")
    parser.add_argument("--summary", default=None, metavar="FILE", help="also write the summary + log history here")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    return parser


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: Sequence[str] | None = None, callbacks: Sequence[Any] | None = None) -> int:
    """Parse ``argv``, train, print the summary; 0 on success, 2 on bad input (one ``error:`` line).

    ``callbacks`` (``TrainerCallback`` objects) are handed to :func:`~padt_core.train.run.train`, for
    programs that wrap this entry point.
    """
    args = build_parser().parse_args(argv)
    from ..backbone import HubUnreachableError
    from ..plugins import UnknownPluginError
    from .run import train

    try:
        summary = train(
            args.recipe,
            args.overrides or None,
            output_dir=args.output_dir,
            overwrite=args.overwrite,
            resume=args.resume,
            callbacks=callbacks,
        )
    except (ValueError, FileNotFoundError, FileExistsError, UnknownPluginError, HubUnreachableError) as err:
        if args.traceback:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"padt train: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    if _is_main_process():
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        short = {k: v for k, v in summary.items() if k != "log_history"}
        print(json.dumps(short, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

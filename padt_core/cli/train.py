"""``padt train``: train a recipe; also runs under ``torchrun -m padt_core.cli train …``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ._common import add_overrides, print_json


def cmd_train(args: argparse.Namespace) -> int:
    """Train a recipe (``padt_core.train.run.train``); rank 0 prints a JSON summary (and writes ``--summary``)."""
    from contextlib import redirect_stdout

    from ..train.run import train

    with redirect_stdout(sys.stderr):  # the Trainer's log lines go to stderr: stdout is the JSON summary alone
        summary = train(
            args.recipe,
            args.overrides or None,
            output_dir=args.output_dir,
            overwrite=args.overwrite,
            resume=args.resume,
            init_from=args.init_from,
        )
    if _is_main_process():
        if args.summary:
            atomic_write_text(args.summary, json.dumps(summary, indent=2, default=str) + "\n")
        print_json(_train_summary(summary))
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """End a ``torchrun`` job's process group before exit: a rank whose gloo threads are still alive when
    the interpreter shuts down can abort ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _is_main_process() -> bool:
    """Whether this is rank 0 of a ``torchrun`` / ``accelerate launch`` job (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The training summary without the full log history: first and last logged value of each loss term."""
    history = summary.get("log_history", [])
    losses: dict[str, dict[str, Any]] = {}
    for entry in history:
        for key, value in entry.items():
            if key == "loss" or key.startswith("loss_"):
                term = losses.setdefault(key, {"first": value, "first_step": entry.get("step")})
                term.update(last=value, last_step=entry.get("step"))
    out = {key: value for key, value in summary.items() if key != "log_history"}
    output_dir = Path(summary["output_dir"])
    steps = sorted(int(p.name[11:]) for p in output_dir.glob("checkpoint-*") if p.name[11:].isdigit())
    out["checkpoints"] = [f"checkpoint-{step}" for step in steps]
    out["logged_steps"] = sum(1 for entry in history if "loss" in entry)
    out["losses"] = losses
    return out


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="recipe path or bundled name (e.g. tiny_qwen_shapes)")
    add_overrides(parser)
    parser.add_argument(
        "--output-dir", default=None, metavar="DIR", help="default: the recipe's train.output_dir, else runs/NAME"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a training run already in the output dir")
    mode.add_argument("--resume", action="store_true", help="continue from the output dir's latest checkpoint")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start from the weights of this padt model directory (train.init_from; ignored with --resume)",
    )
    parser.add_argument(
        "--summary", default=None, metavar="FILE", help="also write the summary with the full log history"
    )
    parser.epilog = "Multi-process: torchrun --nproc_per_node N -m padt_core.cli train RECIPE ..."
    parser.set_defaults(handler=cmd_train)

"""The ``padt`` command line: one subcommand per verb, each a plain function in a module of its own.

Subcommands live in :data:`COMMANDS` (``name -> Command``). A ``Command`` adds its arguments to its
own parser and points the parser at a handler ``fn(args) -> exit code``; a new verb adds one module
(``padt_core/cli/<verb>.py``, helpers shared between verbs in ``_common.py``) and one entry. ``padt bench``
wraps the separate ``padt_bench`` package (whose light ``ablate`` module names the sweep configurations
when the parser is built) and ``padt data shapes`` the shapes dataset plugin (imported when run).
Verbs: ``plugins``, ``recipe``, ``data``, ``train``, ``eval``, ``predict``, ``convert``, ``bench``, ``demo``,
``serve``.
Handlers import the heavy modules (torch, transformers) themselves, so ``padt --help`` stays fast.

``padt train`` also runs under ``torchrun --nproc_per_node N -m padt_core.cli train …`` (or
``accelerate launch``); only rank 0 prints the summary.

Bad input (missing files, invalid recipes, unknown plugins, an unreachable hub, values our code
rejects) prints one ``padt: error: …`` message on stderr and exits with status 2; ``--traceback``
shows the full trace instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._common import (
    EXIT_USAGE,
    Command,
    Handler,
    _common_options,
    _user_errors,
    add_device,
    add_overrides,
    add_subcommand,
    print_json,
    write_result,
)
from ._extensions import GROUPS, load_commands
from .convert import _configure_convert, cmd_convert
from .demo import _configure_demo, cmd_demo
from .eval import _configure_eval, cmd_eval
from .plugins import _configure_plugins
from .predict import _configure_predict, cmd_predict
from .recipe import _configure_recipe
from .serve import _configure_serve
from .train import _configure_train, cmd_train

__all__ = [
    "COMMANDS",
    "Command",
    "Handler",
    "add_device",
    "add_overrides",
    "add_subcommand",
    "build_parser",
    "cmd_convert",
    "cmd_demo",
    "cmd_eval",
    "cmd_predict",
    "cmd_train",
    "main",
    "print_json",
    "write_result",
]

COMMANDS: dict[str, Command] = {
    "plugins": Command("list registered plugins", _configure_plugins),
    "recipe": Command("validate recipes, print the recipe schema", _configure_recipe),
    "train": Command(
        "train a recipe (Hugging Face Trainer; torchrun / accelerate for several processes)", _configure_train
    ),
    "eval": Command("evaluate a model on a recipe's or a dataset's samples; write a report JSON", _configure_eval),
    "predict": Command("predict objects in images with a saved model or a recipe", _configure_predict),
    "convert": Command("convert a released PaDT checkpoint into a padt model directory", _configure_convert),
    "demo": Command(
        "end-to-end demo: shapes -> train -> eval -> report + gallery (--smoke: instant check)", _configure_demo
    ),
    "serve": Command("a web page and a JSON API for a model, concurrent requests batched", _configure_serve),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``padt`` parser: the verbs of :data:`COMMANDS`, then those of installed packages (``padt.commands``)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="padt",
        description="PaDT: let a multimodal LLM point at image patches (visual reference tokens).",
        parents=[_common_options()],
    )
    parser.add_argument("--version", action="version", version=f"padt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.configure(add_subcommand(sub, name, command.help))
    extensions = load_commands(COMMANDS)
    for group, help in GROUPS.items():
        names = [path[1] for path in extensions if len(path) == 2 and path[0] == group]
        if names:
            parser_of_group = add_subcommand(sub, group, help.format(names=", ".join(names)))
            verbs = parser_of_group.add_subparsers(
                dest=f"{group}_command", metavar="{" + ",".join(names) + "}", required=True
            )
            for name in names:
                command = extensions[(group, name)]
                command.configure(add_subcommand(verbs, name, command.help))
    for path, command in extensions.items():
        if len(path) == 1:
            command.configure(add_subcommand(sub, path[0], command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``padt``; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    show_trace = getattr(args, "traceback", False)
    from ..runtime import tune_cpu_allocator

    tune_cpu_allocator()  # large CPU tensors stay on the heap (padt_core/runtime.py); PADT_MALLOC_TUNING=0 opts out
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("padt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `padt … | head`: the reader left; stay quiet, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit, which would fail again
        return 141
    except _user_errors() as err:
        if show_trace:
            raise
        print(f"padt: error: {str(err) or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE

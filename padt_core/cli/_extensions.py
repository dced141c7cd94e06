"""Verbs that other packages add to ``padt``: the ``padt.commands`` entry-point group.

An entry point's name is the verb (``bench``) or ``group.verb`` for a subcommand of one of the verb
groups in :data:`GROUPS` (``data.shapes`` is ``padt data shapes``); its value is a
:class:`~padt_core.cli.Command`::

    [project.entry-points."padt.commands"]
    "data.my-dataset" = "my_package.cli:COMMAND"

This is how the benchmarks (``padt_bench``) and the shapes generator (``padt_plugins.datasets.shapes``)
give ``padt bench`` and ``padt data shapes`` without the core knowing either. The module is imported
whenever the parser is built, so it must be light: a handler imports torch and the package's heavy
modules itself. A command that fails to load is skipped with a warning on stderr, so one broken
package does not take the other verbs down with it.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Collection

from ._common import Command

__all__ = ["COMMAND_GROUP", "GROUPS", "load_commands"]

COMMAND_GROUP = "padt.commands"
#: Verb groups whose subcommands come from packages: name -> help (``{names}``: its subcommands).
GROUPS: dict[str, str] = {"data": "write datasets ({names})"}


def load_commands(builtin: Collection[str]) -> dict[tuple[str, ...], Command]:
    """``{("bench",): Command, ("data", "shapes"): Command, ...}`` from the installed entry points.

    Args:
        builtin: the core's own verbs, which an entry point may not replace.
    """
    commands: dict[tuple[str, ...], Command] = {}
    for ep in sorted(importlib.metadata.entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        package = ep.dist.metadata["name"] if ep.dist is not None else "?"
        path = tuple(ep.name.split("."))
        if path[0] in builtin or path in commands or len(path) > 2 or (len(path) == 2 and path[0] not in GROUPS):
            where = "a built-in verb" if path[0] in builtin else "taken" if path in commands else "not a verb path"
            _warn(f"command {ep.name!r} of package {package} is {where} (verb, or one of {sorted(GROUPS)}.verb)")
            continue
        try:
            command = ep.load()
        except Exception as err:  # a broken package must not take the other verbs down
            _warn(f"command {ep.name!r} ({ep.value}, package {package}) failed to load: {type(err).__name__}: {err}")
            continue
        if not isinstance(command, Command):
            _warn(f"command {ep.name!r} ({ep.value}, package {package}) is {command!r}, not a padt_core.cli.Command")
            continue
        commands[path] = command
    return commands


def _warn(message: str) -> None:
    print(f"padt: warning: {message}; skipped", file=sys.stderr)

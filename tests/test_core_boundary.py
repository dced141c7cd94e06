"""The core imports no plugin and no benchmark: ``padt bench`` and ``padt data shapes`` come from entry points."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "padt_core"
OUTSIDE = ("padt_plugins", "padt_bench")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_modules_import_no_plugin_or_benchmark():
    found = {}
    for path in sorted(CORE.rglob("*.py")):
        outside = sorted(name for name in _imports(path) if name.split(".")[0] in OUTSIDE)
        if outside:
            found[path.relative_to(CORE).as_posix()] = outside
    assert found == {}, f"core modules importing plugins/benchmarks: {found}"


def test_the_verbs_of_other_packages_come_from_entry_points(capsys):
    from padt_core.cli import COMMANDS, build_parser
    from padt_core.cli._extensions import load_commands

    assert {"bench", "data"}.isdisjoint(COMMANDS)
    commands = load_commands(COMMANDS)
    assert {("bench",), ("data", "shapes")} <= set(commands)
    assert commands[("data", "shapes")].configure.__module__ == "padt_plugins.datasets.shapes.cli"
    build_parser()
    assert capsys.readouterr().err == ""  # no command skipped with a warning

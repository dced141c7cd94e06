"""The core library imports no plugin and no benchmark: only two command-line verbs wrap them."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "padt_core"
OUTSIDE = ("padt_plugins", "padt_bench")
# Command-line verbs that front a package outside the core, importing it when they run.
ALLOWED = {"cli/bench.py": {"padt_bench"}, "cli/data.py": {"padt_plugins.datasets.shapes"}}


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
        where = path.relative_to(CORE).as_posix()
        outside = {name for name in _imports(path) if name.split(".")[0] in OUTSIDE}
        allowed = ALLOWED.get(where, set())
        extra = {name for name in outside if not any(name == a or name.startswith(a + ".") for a in allowed)}
        if extra:
            found[where] = sorted(extra)
    assert found == {}, f"core modules importing plugins/benchmarks: {found}"


def test_the_allowed_verbs_still_need_their_exception():
    """An entry of ALLOWED that no longer imports anything outside should be removed from it."""
    for where, allowed in ALLOWED.items():
        outside = {name for name in _imports(CORE / where) if name.split(".")[0] in OUTSIDE}
        assert outside, where
        assert all(any(name == a or name.startswith(a + ".") for a in allowed) for name in outside), where

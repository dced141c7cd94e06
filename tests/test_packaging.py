"""pyproject lists every package of the tree, so a wheel holds what an editable install imports."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, directory in setup["package-dir"].items():
        base = ROOT / directory
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            if "__pycache__" not in parts:
                found.add(".".join((package, *parts)))
    assert found == set(setup["packages"]), f"unlisted: {found - set(setup['packages'])}"
    assert "padt_core.bench" not in found  # the benchmarks are a package of their own (padt_bench)

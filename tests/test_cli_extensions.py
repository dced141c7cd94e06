"""Verbs from installed packages (``padt.commands`` entry points): added, or skipped with a warning."""

from __future__ import annotations

import pytest

from padt_core.cli import main

MODULE = """
from padt_core.cli import Command


def _configure(parser):
    parser.add_argument("--n", type=int, default=1)
    parser.set_defaults(handler=lambda args: print(f"extra ran n={args.n}") or 0)


COMMAND = Command("an extra dataset writer", _configure)
NOT_A_COMMAND = "a string"
"""

ENTRY_POINTS = """[padt.commands]
data.extra = extra_cli:COMMAND
hello = extra_cli:COMMAND
train = extra_cli:COMMAND
broken = no_such_module_for_padt:COMMAND
odd = extra_cli:NOT_A_COMMAND
too.deep.path = extra_cli:COMMAND
"""


@pytest.fixture
def extra_package(tmp_path, monkeypatch):
    (tmp_path / "extra_cli.py").write_text(MODULE)
    info = tmp_path / "extra_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_package_verbs_join_the_parser_and_bad_ones_are_skipped(extra_package, capsys):
    assert main(["data", "extra", "--n", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == "extra ran n=3\n"
    assert "command 'train' of package extra-dist is a built-in verb" in err
    assert "command 'broken' (no_such_module_for_padt:COMMAND, package extra-dist) failed to load" in err
    assert (
        "command 'odd' (extra_cli:NOT_A_COMMAND, package extra-dist) is 'a string', not a padt_core.cli.Command" in err
    )
    assert "command 'too.deep.path' of package extra-dist is not a verb path" in err
    assert main(["hello"]) == 0  # a top-level verb
    assert capsys.readouterr().out == "extra ran n=1\n"
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert "write datasets (extra, shapes)" in out  # the group lists what the packages add
    with pytest.raises(SystemExit):
        main(["train", "--help"])  # the built-in train is kept
    assert "RECIPE" in capsys.readouterr().out

"""``padt plugins``: list registered plugins by kind."""

from __future__ import annotations

import argparse

from ._common import print_json


def cmd_plugins(args: argparse.Namespace) -> int:
    """List registered plugins by kind."""
    from ..plugins import get_registry, list_plugins

    plugins = list_plugins(args.kind)
    if args.json:
        print_json(plugins)
        return 0
    rows = [("KIND", "NAME", "PROVIDED BY")]
    for kind, names in plugins.items():
        registry = get_registry(kind)
        rows += [(kind, name, registry.sources.get(name, "")) for name in names] or [(kind, "-", "")]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for kind, name, source in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {source}".rstrip())
    return 0


def _configure_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print {kind: [names]} as JSON")
    parser.add_argument("--kind", default=None, help="only this kind (backbones, trunks, heads, …)")
    parser.set_defaults(handler=cmd_plugins)

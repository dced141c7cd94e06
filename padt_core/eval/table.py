"""The plain-text tables ``padt eval`` prints: metrics × protocols, or splits × metrics.

A report of one split prints one row per metric with a column per protocol it holds (``standard``
for ``rec_acc50``, ``reference`` for ``rec_acc50_reference``). A report of several splits
(:func:`padt_core.eval.evaluate_splits`) prints one row per split and the average row last.
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_report"]

SUFFIX = "_reference"
_NOT_METRICS = ("counts", "protocol", "protocol_notes", "splits", "average", "skipped", "eval", "recipe")


def _value(v: Any) -> str:
    if v is None or isinstance(v, (dict, list, str)) or v != v:
        return "n/a"
    return f"{float(v):.4f}"


def _metric_keys(report: dict[str, Any]) -> list[str]:
    return [
        k
        for k, v in report.items()
        if k not in _NOT_METRICS and not isinstance(v, bool) and (v is None or isinstance(v, (int, float)))
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report's headline numbers as an aligned text table (see the module docstring).

    Example:
        >>> print(format_report({"rec_acc50": 0.5, "rec_acc50_reference": 1.0, "protocol": "both"}))
        metric     standard  reference
        ---------  --------  ---------
        rec_acc50  0.5000    1.0000
    """
    keys = _metric_keys(report)
    if "splits" in report:
        header = ["split", *keys]
        rows = [[split, *(_value(numbers.get(k)) for k in keys)] for split, numbers in report["splits"].items()]
        rows.append([f"average ({len(report['splits'])})", *(_value(report[k]) for k in keys)])
    else:
        bases = list(dict.fromkeys(k[: -len(SUFFIX)] if k.endswith(SUFFIX) else k for k in keys))
        columns = [
            c for c in ("standard", "reference") if any((b if c == "standard" else b + SUFFIX) in keys for b in bases)
        ]
        header = ["metric", *columns]
        rows = [[b, *(_value(report.get(b if c == "standard" else b + SUFFIX)) for c in columns)] for b in bases]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(row, widths)).rstrip()
        for row in [header, ["-" * w for w in widths], *rows]
    ]
    notes = report.get("protocol_notes") or {}
    lines += [f"{task}: {note}" for task, note in notes.items()]
    return "\n".join(lines)

"""Generation plugins: logits processors enabled from a recipe's ``generation:`` section."""

from __future__ import annotations

from padt_core.plugins import hookimpl

from .no_repeat_vrt import NoRepeatVRT


@hookimpl
def padt_logits_processors() -> list[type]:
    return [NoRepeatVRT]

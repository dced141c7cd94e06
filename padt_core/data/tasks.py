"""Task names come from the dataset plugins: each declares the tasks its samples carry (``tasks``).

The core knows no task by name. A sample's ``task`` and a recipe's ``data.task_weights`` keys must
be a task some registered dataset plugin declares (the built-in readers declare PaDT's ``rec``,
``res``, ``ovd`` and ``ric``); a miss is an error listing the known tasks.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..plugins import get_registry

__all__ = ["UnknownTaskError", "check_tasks", "registered_tasks"]


_cache: tuple[object, dict[str, list[str]]] | None = None  # (the registry it was read from, its tasks)


class UnknownTaskError(ValueError):
    """A sample or recipe named a task that no registered dataset plugin declares."""


def registered_tasks() -> dict[str, list[str]]:
    """``{task: [dataset plugins declaring it]}`` over the registered dataset plugins, tasks sorted.

    Example:
        >>> sorted(registered_tasks())[:2]
        ['ovd', 'rec']
    """
    return {task: list(names) for task, names in _declared().items()}


def _declared() -> dict[str, list[str]]:
    """:func:`registered_tasks` read once per registry (every sample checks its task: no copy, no rescan)."""
    global _cache
    registry = get_registry("datasets")
    if _cache is None or _cache[0] is not registry:  # registering a plugin builds a new registry
        out: dict[str, list[str]] = {}
        for name, cls in sorted(registry.entries.items()):
            for task in getattr(cls, "tasks", ()):
                out.setdefault(task, []).append(name)
        _cache = (registry, dict(sorted(out.items())))
    return _cache[1]


def check_tasks(tasks: Iterable[str], where: str) -> None:
    """Raise :class:`UnknownTaskError` naming ``where`` if any of ``tasks`` is not a registered task.

    Args:
        tasks: task names to check.
        where: what named them, for the message (``"data.task_weights"``, ``"sample coco/12"``).

    Example:
        >>> check_tasks(["rec", "ovd"], "data.task_weights")
    """
    known = _declared()
    unknown = sorted({t for t in tasks if t not in known})
    if unknown:
        listed = ", ".join(known) or "(none)"
        raise UnknownTaskError(
            f"{where}: unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the registered dataset plugins declare: {listed} (a dataset plugin declares its tasks in `tasks`)"
        )

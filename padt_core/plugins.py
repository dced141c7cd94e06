"""Plugin system: the pluggy manager and typed registries (the hooks themselves: :mod:`padt_core.hookspec`).

A plugin is a plain module (or object) with ``@hookimpl`` functions that return plugin *classes*.
Every plugin class carries a ``name`` and a pydantic ``Config`` model; recipes validate their
sections against that model. Built-in plugins are found through the ``padt`` entry-point group,
exactly like a third-party package's::

    [project.entry-points.padt]
    my_head = "my_package.my_head_module"
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

import pluggy
from pydantic import BaseModel, ConfigDict

from . import hookspec as hookspec_module
from .hookspec import PROJECT_NAME, hookimpl, hookspec

if TYPE_CHECKING:  # the base classes import torch; the registry resolves them only when it is built (_BASES)
    from .answer_format import AnswerFormat
    from .backbone import Backbone
    from .data.reader import DatasetReader
    from .decoder import Head, Trunk

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "DuplicatePluginError",
    "Kind",
    "PluginConfig",
    "PluginHookError",
    "Registry",
    "UnknownPluginError",
    "get_plugin",
    "get_registry",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "register_plugin",
    "unregister_plugin",
]

ENTRY_POINT_GROUP = "padt"


class PluginConfig(BaseModel):
    """Base of every plugin's config model: the recipe section ``{name: ..., <options>}``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str


#: Plugin kinds, one per hook of :mod:`padt_core.hookspec` (its name without ``padt_``), in definition order.
KINDS: tuple[str, ...] = tuple(name.removeprefix("padt_") for name in vars(hookspec_module) if name.startswith("padt_"))
Kind = Literal["backbones", "trunks", "heads", "datasets", "metrics", "logits_processors", "answer_formats"]
_SINGULAR = {
    "backbones": "backbone",
    "trunks": "trunk",
    "heads": "head",
    "datasets": "dataset",
    "metrics": "metric",
    "logits_processors": "logits processor",
    "answer_formats": "answer format",
}


#: The base class each kind's plugins subclass, where the core defines one (``module:attribute``, imported
#: when the registries are built: these modules need torch, which ``import padt_core.plugins`` must not).
_BASES: dict[str, str] = {
    "backbones": "padt_core.backbone:Backbone",
    "trunks": "padt_core.decoder:Trunk",
    "heads": "padt_core.decoder:Head",
    "datasets": "padt_core.data.reader:DatasetReader",
    "answer_formats": "padt_core.answer_format:AnswerFormat",
}


class UnknownPluginError(LookupError):
    """A recipe or call named a plugin that is not registered."""


class DuplicatePluginError(ValueError):
    """Two plugins of the same kind claim the same name."""


class PluginHookError(pluggy.PluginValidationError):
    """A plugin's hook functions do not match :mod:`padt_core.hookspec`: an unknown (misspelt) hook name,
    a ``padt_*`` function without ``@hookimpl``, or arguments the hook does not pass."""


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Registry:
    """Plugins of one kind: ``name -> class``, remembering which plugin source provided each.

    ``base`` (when the core defines one for the kind, e.g. :class:`padt_core.decoder.Head` for ``heads``)
    is checked on :meth:`add`, so a plugin that returns the wrong kind of class fails at registration,
    naming its source, rather than deep inside a build.
    """

    kind: str
    base: type | None = None
    entries: dict[str, type] = field(default_factory=dict)  # name -> plugin class
    sources: dict[str, str] = field(default_factory=dict)  # name -> providing module/distribution

    def add(self, cls: type, source: str) -> None:
        what = _SINGULAR[self.kind]
        if not isinstance(cls, type):
            raise TypeError(f"{what} plugin from {source} returned {cls!r}, not a class")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} plugin {cls!r} from {source} has no string `name`")
        if self.base is not None and not issubclass(cls, self.base):
            raise TypeError(
                f"{what} plugin {name!r} ({cls.__module__}.{cls.__qualname__}) from {source} does not subclass "
                f"{self.base.__module__}.{self.base.__qualname__}"
            )
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, PluginConfig)):
            raise TypeError(
                f"{what} plugin {name!r} from {source} needs `Config`, a PluginConfig subclass (got {config!r})"
            )
        if name in self.entries and self.entries[name] is not cls:
            raise DuplicatePluginError(
                f"{what} name {name!r} is registered twice: by {self.sources[name]} and by {source}. "
                "Rename one of them."
            )
        self.entries[name] = cls
        self.sources[name] = source

    def get(self, name: str) -> type:
        """The class registered as ``name``; a miss names the closest match and lists what is registered."""
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "(none)"
            raise UnknownPluginError(
                f"Unknown {_SINGULAR[self.kind]} {name!r}{_did_you_mean(str(name), self.entries)}. "
                f"Registered {self.kind}: {known}."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self.entries if fnmatch.fnmatch(n, pattern))


class _State:
    manager: ClassVar[pluggy.PluginManager | None] = None
    registries: ClassVar[dict[str, Registry] | None] = None


def _manager() -> pluggy.PluginManager:
    if _State.manager is None:
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspec_module)
        _load_entry_points(pm)
        _check_hooks(pm)  # before the manager is kept: a broken plugin fails every lookup, the same way
        _State.manager = pm
    return _State.manager


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """``load_setuptools_entrypoints``, with an error naming the plugin package that failed to import."""
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except pluggy.PluginValidationError as err:  # a hookimpl whose arguments its hook does not pass
        raise PluginHookError(err.plugin, f"padt plugin {_entry_point_of(err.plugin)}: {_one_line(err)}") from None
    except Exception as err:
        broken = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception:
                package = ep.dist.metadata["name"] if ep.dist is not None else "?"
                broken.append(f"{ep.name} = {ep.value} (package {package})")
        raise ImportError(
            f"padt plugin(s) failed to import: {'; '.join(broken) or 'unknown'} — {type(err).__name__}: {err}. "
            "Reinstall or uninstall the package that provides them."
        ) from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())  # pluggy's messages span lines; padt's errors are one line


def _entry_point_of(plugin: Any) -> str:
    """``name = module (package dist)`` of the ``padt`` entry point that loaded ``plugin`` (a module)."""
    module = getattr(plugin, "__name__", None)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value == module:
            package = ep.dist.metadata["name"] if ep.dist is not None else "?"
            return f"{ep.name} = {ep.value} (package {package})"
    return repr(plugin)


def _check_hooks(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending`` (every ``@hookimpl`` names a hookspec), reporting every problem at once
    with the plugin, its package and the hook probably meant; also ``padt_*`` functions left unmarked."""
    specs = [name for name in vars(hookspec_module) if name.startswith("padt_")]
    problems: list[str] = []
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        for hook_name, caller in vars(pm.hook).items():
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    problems.append(
                        f"{_describe(pm, impl.plugin)} implements unknown hook {hook_name!r}"
                        f"{_did_you_mean(hook_name, specs)}"
                    )
    for _, plugin in pm.list_name_plugin():
        for attr, value in list(getattr(plugin, "__dict__", {}).items()):
            if attr in specs and inspect.isfunction(value) and pm.parse_hookimpl_opts(plugin, attr) is None:
                problems.append(
                    f"{_describe(pm, plugin)} defines {attr}() without @hookimpl (padt_core.plugins.hookimpl), "
                    "so padt never calls it"
                )
    if problems:
        raise PluginHookError(
            None,
            "padt plugin hooks do not match padt's: "
            + "; ".join(problems)
            + f". The hooks padt defines: {', '.join(specs)} (padt_core/hookspec.py).",
        )


def _describe(pm: pluggy.PluginManager, plugin: Any) -> str:
    """``'name' (package dist, module mod)`` for messages about a plugin."""
    where = [f"package {dist.project_name}" for plug, dist in pm.list_plugin_distinfo() if plug is plugin]
    module = getattr(plugin, "__name__", None)
    if isinstance(module, str) and module != pm.get_name(plugin):
        where.append(f"module {module}")
    name = pm.get_name(plugin) or repr(plugin)
    return f"{name!r}" + (f" ({', '.join(where)})" if where else "")


def _source_of(pm: pluggy.PluginManager, plugin: Any) -> str:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return f"{pm.get_name(plugin)} ({dist.project_name})"
    return pm.get_name(plugin) or repr(plugin)


def _build_registries() -> dict[str, Registry]:
    pm = _manager()
    registries = {kind: Registry(kind, _base(kind)) for kind in KINDS}
    for kind in KINDS:
        hook = getattr(pm.hook, f"padt_{kind}")
        for impl in hook.get_hookimpls():
            for cls in impl.function() or []:
                registries[kind].add(cls, _source_of(pm, impl.plugin))
    return registries


def _base(kind: str) -> type | None:
    if kind not in _BASES:
        return None
    module, attr = _BASES[kind].split(":")
    return getattr(importlib.import_module(module), attr)


def get_registry(kind: Kind | str) -> Registry:
    """The registry of one plugin kind (``backbones``, ``heads``, ...)."""
    if kind not in KINDS:
        raise UnknownPluginError(
            f"Unknown plugin kind {kind!r}{_did_you_mean(kind, KINDS)}. Kinds: {', '.join(KINDS)}."
        )
    if _State.registries is None:
        _State.registries = _build_registries()
    return _State.registries[kind]


@overload
def get_plugin(kind: Literal["backbones"], name: str) -> type[Backbone]: ...
@overload
def get_plugin(kind: Literal["trunks"], name: str) -> type[Trunk]: ...
@overload
def get_plugin(kind: Literal["heads"], name: str) -> type[Head]: ...
@overload
def get_plugin(kind: Literal["datasets"], name: str) -> type[DatasetReader]: ...
@overload
def get_plugin(kind: Literal["answer_formats"], name: str) -> type[AnswerFormat]: ...
@overload
def get_plugin(kind: Kind | str, name: str) -> type: ...
def get_plugin(kind: Kind | str, name: str) -> type:
    """Look up a plugin class; a miss names the closest match and lists what is registered.

    Typed by kind where the core defines the base class (``get_plugin("heads", "box")`` is a
    ``type[Head]``); metrics and logits processors are plain classes.

    Example::

        >>> get_plugin("heads", "box").name
        'box'
    """
    return get_registry(kind).get(name)


def list_plugins(kind: Kind | str | None = None) -> dict[str, list[str]]:
    """``{kind: [names]}`` of every registered plugin (or of one kind)."""
    kinds = KINDS if kind is None else (kind,)
    return {k: get_registry(k).names() for k in kinds}


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin module/object from Python (research code that is not packaged).

    Validation is the same as for entry-point plugins, and a failure leaves the registries as they were:
    hooks that :mod:`padt_core.hookspec` does not define raise :class:`PluginHookError`, a name another
    plugin of the kind already has raises :class:`DuplicatePluginError`.

    Args:
        plugin: a module or object with ``@hookimpl`` functions (``padt_heads``, ...).
        name: the name ``padt plugins`` shows (default: pluggy's, the module name or an id).

    Example::

        import my_heads
        register_plugin(my_heads)
        get_plugin("heads", "keypoints")
    """
    pm = _manager()
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as err:  # a hookimpl taking arguments its hook does not pass
        raise PluginHookError(plugin, f"padt plugin {name or plugin!r}: {_one_line(err)}") from None
    _State.registries = None
    try:
        _check_hooks(pm)
        _State.registries = _build_registries()
    except Exception:
        pm.unregister(plugin)
        _State.registries = None
        raise


def unregister_plugin(plugin: Any) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    _manager().unregister(plugin)
    _State.registries = None

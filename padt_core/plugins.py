"""Plugin system: pluggy hookspecs (the plugin author's manual), the manager and typed registries.

A plugin is a plain module (or object) with ``@hookimpl`` functions that return plugin *classes*.
Every plugin class carries a ``name`` and a pydantic ``Config`` model; recipes validate their
sections against that model. Built-in plugins are found through the ``padt`` entry-point group,
exactly like a third-party package's::

    [project.entry-points.padt]
    my_head = "my_package.my_head_module"
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pluggy
from pydantic import BaseModel, ConfigDict

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "DuplicatePluginError",
    "PluginConfig",
    "Registry",
    "UnknownPluginError",
    "get_plugin",
    "get_registry",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "register_plugin",
]

PROJECT_NAME = "padt"
ENTRY_POINT_GROUP = "padt"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class PluginConfig(BaseModel):
    """Base of every plugin's config model: the recipe section ``{name: ..., <options>}``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str


# ---------------------------------------------------------------------------------------------------
# Hook specifications. Each hook returns a list of plugin classes; a plugin implements only the
# hooks it needs. Kinds are the hook names without the ``padt_`` prefix.
# ---------------------------------------------------------------------------------------------------


class HookSpecs:
    """Namespace holding the hook specifications (registered once with ``add_hookspecs``)."""

    @hookspec
    def padt_backbones(self) -> list[type]:
        """Return backbone classes (subclasses of :class:`padt_core.backbone.Backbone`).

        A backbone wraps a multimodal LLM and its processor, and returns ``VisualFeatures`` per image
        in raster order.
        """

    @hookspec
    def padt_trunks(self) -> list[type]:
        """Return decoder trunk classes: per object, VRT hidden states + image features → query tokens."""

    @hookspec
    def padt_heads(self) -> list[type]:
        """Return decoder head classes (box, score, mask, ...): own query tokens, predict, loss, postprocess."""

    @hookspec
    def padt_datasets(self) -> list[type]:
        """Return dataset reader classes that turn an on-disk format into training/evaluation samples."""

    @hookspec
    def padt_metrics(self) -> list[type]:
        """Return evaluation metric classes (REC, RES, OVD, RIC, ...)."""

    @hookspec
    def padt_logits_processors(self) -> list[type]:
        """Return generation logits-processor classes enabled from a recipe's ``generation:`` section."""

    @hookspec
    def padt_answer_formats(self) -> list[type]:
        """Return answer-format classes: how objects are written in a completion and parsed back.

        Classes subclass :class:`padt_core.answer_format.AnswerFormat` (``name``, ``Config``, and the
        methods the core calls: ``check_recipe``, ``build_projection``, ``encode_answer``,
        ``read_completions``); a recipe selects one with ``answer_format: {name: ...}`` (default
        ``vrt``). Built-ins: ``vrt`` (PaDT) and ``text_box`` (Qwen2.5-VL-style text boxes).

        For third-party packages: register the module under the ``padt`` entry-point group; a format
        that writes objects as text needs only ``render`` and ``parse`` (``docs/answer-formats.md``).
        """


KINDS: tuple[str, ...] = tuple(name.removeprefix("padt_") for name in vars(HookSpecs) if name.startswith("padt_"))
_SINGULAR = {
    "backbones": "backbone",
    "trunks": "trunk",
    "heads": "head",
    "datasets": "dataset",
    "metrics": "metric",
    "logits_processors": "logits processor",
    "answer_formats": "answer format",
}


class UnknownPluginError(LookupError):
    """A recipe or call named a plugin that is not registered."""


class DuplicatePluginError(ValueError):
    """Two plugins of the same kind claim the same name."""


@dataclass
class Registry:
    """Plugins of one kind: ``name -> class``, remembering which plugin source provided each."""

    kind: str
    entries: dict[str, type] = field(default_factory=dict)  # name -> plugin class
    sources: dict[str, str] = field(default_factory=dict)  # name -> providing module/distribution

    def add(self, cls: type, source: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{_SINGULAR[self.kind]} plugin {cls!r} from {source} has no string `name`")
        if name in self.entries and self.entries[name] is not cls:
            raise DuplicatePluginError(
                f"{_SINGULAR[self.kind]} name {name!r} is registered twice: by {self.sources[name]} "
                f"and by {source}. Rename one of them."
            )
        self.entries[name] = cls
        self.sources[name] = source

    def get(self, name: str) -> type:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "(none)"
            raise UnknownPluginError(
                f"Unknown {_SINGULAR[self.kind]} {name!r}. Registered {self.kind}: {known}."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self.entries if fnmatch.fnmatch(n, pattern))


class _State:
    manager: ClassVar[pluggy.PluginManager | None] = None
    registries: ClassVar[dict[str, Registry] | None] = None


def _manager() -> pluggy.PluginManager:
    if _State.manager is None:
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(HookSpecs)
        _load_entry_points(pm)
        _State.manager = pm
    return _State.manager


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """``load_setuptools_entrypoints``, with an error naming the plugin package that failed to import."""
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as err:
        import importlib.metadata

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


def _source_of(pm: pluggy.PluginManager, plugin: Any) -> str:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return f"{pm.get_name(plugin)} ({dist.project_name})"
    return pm.get_name(plugin) or repr(plugin)


def _build_registries() -> dict[str, Registry]:
    pm = _manager()
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind in KINDS:
        hook = getattr(pm.hook, f"padt_{kind}")
        for impl in hook.get_hookimpls():
            for cls in impl.function() or []:
                registries[kind].add(cls, _source_of(pm, impl.plugin))
    return registries


def get_registry(kind: str) -> Registry:
    """The registry of one plugin kind (``backbones``, ``heads``, ...)."""
    if kind not in KINDS:
        raise UnknownPluginError(f"Unknown plugin kind {kind!r}. Kinds: {', '.join(KINDS)}.")
    if _State.registries is None:
        _State.registries = _build_registries()
    return _State.registries[kind]


def get_plugin(kind: str, name: str) -> type:
    """Look up a plugin class; a miss lists what is registered."""
    return get_registry(kind).get(name)


def list_plugins(kind: str | None = None) -> dict[str, list[str]]:
    """``{kind: [names]}`` of every registered plugin (or of one kind)."""
    kinds = KINDS if kind is None else (kind,)
    return {k: get_registry(k).names() for k in kinds}


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin module/object from Python (research code that is not packaged).

    Validation is the same as for entry-point plugins: duplicate names raise immediately.
    """
    pm = _manager()
    pm.register(plugin, name=name)
    _State.registries = None
    try:
        _State.registries = _build_registries()
    except Exception:
        pm.unregister(plugin)
        _State.registries = None
        raise


def unregister_plugin(plugin: Any) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    _manager().unregister(plugin)
    _State.registries = None

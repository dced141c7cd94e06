"""Plugin registry: entry-point discovery, typed kinds, duplicate names, friendly misses."""

from __future__ import annotations

import types
import typing

import pytest

import padt_core
from padt_core import hookspec as hookspec_module
from padt_core import plugins as plugins_module
from padt_core.cli import main as cli_main
from padt_core.plugins import (
    KINDS,
    DuplicatePluginError,
    Kind,
    PluginConfig,
    PluginHookError,
    UnknownPluginError,
    get_plugin,
    hookimpl,
    register_plugin,
    unregister_plugin,
)


def test_builtin_backbone_registered_through_entry_point():
    plugins = padt_core.list_plugins()
    assert "qwen2_5_vl" in plugins["backbones"]
    assert set(plugins) >= {"backbones", "trunks", "heads", "datasets", "metrics"}


def test_unknown_name_lists_registered():
    with pytest.raises(UnknownPluginError) as err:
        get_plugin("backbones", "qwen9")
    assert "Unknown backbone 'qwen9'" in str(err.value)
    assert "qwen2_5_vl" in str(err.value)


def _plugin_module(kind: str, name: str) -> types.SimpleNamespace:
    class Config(PluginConfig):
        pass

    cls = type(f"Plugin_{name}", (), {"name": name, "Config": Config})
    module = types.SimpleNamespace()

    @hookimpl
    def hook():
        return [cls]

    setattr(module, f"padt_{kind}", hook)
    return module, cls


def test_register_from_python_and_duplicate_rejected():
    module, cls = _plugin_module("metrics", "my_metric")
    register_plugin(module, name="my-metric-plugin")
    try:
        assert get_plugin("metrics", "my_metric") is cls
        assert "my_metric" in padt_core.list_plugins()["metrics"]
        clash, _ = _plugin_module("metrics", "my_metric")
        with pytest.raises(DuplicatePluginError, match="'my_metric' is registered twice"):
            register_plugin(clash, name="clash")
        # the failed registration leaves the registry as it was
        assert get_plugin("metrics", "my_metric") is cls
    finally:
        unregister_plugin(module)
    assert "my_metric" not in padt_core.list_plugins()["metrics"]


# --- hook checks (check_pending) and typed registries ------------------------------------------------


def _module(name: str, **functions) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    return module


def test_misspelt_hook_is_an_error_naming_plugin_and_hook():
    @hookimpl
    def padt_head():  # meant: padt_heads
        return []

    module = _module("my_heads", padt_head=padt_head)
    before = padt_core.list_plugins()
    with pytest.raises(PluginHookError) as err:
        register_plugin(module, name="my-heads")
    message = str(err.value)
    assert "'my-heads' (module my_heads) implements unknown hook 'padt_head' (did you mean 'padt_heads'?)" in message
    assert "The hooks padt defines: padt_backbones, padt_trunks, padt_heads" in message
    # refused as a whole: not left registered, the next lookup works and sees what it saw before
    assert padt_core.list_plugins() == before
    assert get_plugin("heads", "box").name == "box"


def test_hook_without_hookimpl_marker_is_an_error():
    module = _module("unmarked", padt_metrics=lambda: [])
    module.padt_metrics = types.FunctionType(module.padt_metrics.__code__, {}, "padt_metrics")
    with pytest.raises(PluginHookError, match=r"'unmarked' defines padt_metrics\(\) without @hookimpl"):
        register_plugin(module, name="unmarked")
    assert "unmarked" not in str(padt_core.list_plugins())


def test_hook_with_arguments_is_an_error():
    @hookimpl
    def padt_heads(config):
        return []

    with pytest.raises(PluginHookError, match=r"padt plugin 'with-args'.*padt_heads.*config"):
        register_plugin(_module("with_args", padt_heads=padt_heads), name="with-args")


def test_misspelt_hook_in_an_installed_package_names_the_package(tmp_path, monkeypatch):
    """An entry-point plugin with a misspelt hook: the first lookup fails, naming the distribution."""
    (tmp_path / "typo_plugin.py").write_text(
        "from padt_core.plugins import hookimpl\n\n@hookimpl\ndef padt_dataset():\n    return []\n"
    )
    info = tmp_path / "typo_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: typo-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[padt]\ntypo = typo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins_module._State, "manager", None)
    monkeypatch.setattr(plugins_module._State, "registries", None)
    with pytest.raises(PluginHookError) as err:
        padt_core.list_plugins()
    expected = "'typo' (package typo-dist, module typo_plugin) implements unknown hook 'padt_dataset'"
    assert expected + " (did you mean 'padt_datasets'?)" in str(err.value)
    code = cli_main(["plugins"])  # the command line reports it in one line, not a traceback
    assert code == 2


def test_plugin_of_the_wrong_base_class_is_refused():
    module, _ = _plugin_module("heads", "not_a_head")  # a plain class, not a padt_core.decoder.Head
    with pytest.raises(TypeError, match=r"head plugin 'not_a_head' .* does not subclass padt_core.decoder.Head"):
        register_plugin(module, name="wrong-base")
    assert "not_a_head" not in padt_core.list_plugins()["heads"]


def test_unknown_name_and_kind_suggest_the_closest():
    with pytest.raises(UnknownPluginError, match=r"Unknown head 'boxx' \(did you mean 'box'\?\)\. Registered heads: "):
        get_plugin("heads", "boxx")
    with pytest.raises(UnknownPluginError, match=r"Unknown plugin kind 'head' \(did you mean 'heads'\?\)"):
        get_plugin("head", "box")


def test_kinds_follow_the_hookspecs():
    assert tuple(typing.get_args(Kind)) == KINDS
    assert all(getattr(hookspec_module, f"padt_{kind}").__doc__ for kind in KINDS)

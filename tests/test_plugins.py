"""Plugin registry: entry-point discovery, typed kinds, duplicate names, friendly misses."""

from __future__ import annotations

import types

import pytest

import padt_core
from padt_core.plugins import (
    DuplicatePluginError,
    PluginConfig,
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

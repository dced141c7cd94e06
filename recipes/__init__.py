"""Bundled recipes (YAML); ``padt_core.build(recipe="<name>")`` finds them from any directory."""

"""``padt recipe validate | schema | params``."""

from __future__ import annotations

import argparse

from ._common import add_overrides, add_subcommand, print_json


def cmd_recipe_validate(args: argparse.Namespace) -> int:
    """Load, merge and validate a recipe; optionally print the resolved YAML."""
    from ..recipe import load_recipe

    recipe = load_recipe(args.file, args.overrides or None)
    print(f"OK {recipe.name}")
    if args.print:
        print(recipe.to_yaml(), end="")
    return 0


def cmd_recipe_schema(args: argparse.Namespace) -> int:
    """Print the recipe's JSON schema (plugin sections list the registered plugins' schemas)."""
    from ..recipe import recipe_schema

    print_json(recipe_schema())
    return 0


def cmd_recipe_params(args: argparse.Namespace) -> int:
    """Build a recipe (on the meta device with ``--meta``) and print its parameter counts by component as JSON."""
    import padt_core

    from ..sizes import parameter_counts

    weights = "meta" if args.meta else "pretrained"
    model = padt_core.build(recipe=args.file, overrides=args.overrides or None, weights=weights)
    print_json(parameter_counts(model))
    return 0


def _configure_recipe(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe_command", metavar="{validate,schema,params}", required=True)
    validate = add_subcommand(sub, "validate", "validate a recipe file or bundled recipe name")
    validate.add_argument("file", help="recipe YAML path or bundled recipe name (e.g. tiny_qwen)")
    add_overrides(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved recipe as YAML")
    validate.set_defaults(handler=cmd_recipe_validate)
    schema = add_subcommand(sub, "schema", "print the recipe JSON schema")
    schema.set_defaults(handler=cmd_recipe_schema)
    params = add_subcommand(sub, "params", "parameter counts by component (JSON)")
    params.add_argument("file", help="recipe YAML path or bundled recipe name (e.g. qwen_padt_pro)")
    add_overrides(params)
    params.add_argument("--meta", action="store_true", help="build on the meta device: no weights, no download")
    params.set_defaults(handler=cmd_recipe_params)

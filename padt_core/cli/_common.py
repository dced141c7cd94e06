"""What every ``padt`` verb shares: the ``Command`` record, common options, error kinds, model loading, JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dtypes import DTYPE_NAMES

EXIT_USAGE = 2  # argparse's own status for bad usage; bad input files/values are usage errors too
Handler = Callable[[argparse.Namespace], int]  # what `parser.set_defaults(handler=...)` stores


@dataclass(frozen=True)
class Command:
    """A top-level subcommand: ``configure(parser)`` adds arguments and sets ``handler`` defaults."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": reported in one line, not as a traceback."""
    from PIL.Image import DecompressionBombError

    from ..backbone import HubUnreachableError
    from ..plugins import PluginHookError, UnknownPluginError
    from ..recipe import RecipeError

    # RecipeError and the image loader's ImageError are ValueErrors; listed for clarity. HubUnreachableError
    # is an OSError. Permission and is-a-directory errors name the path the user gave (an --out, a data file).
    return (
        RecipeError,
        UnknownPluginError,
        PluginHookError,
        HubUnreachableError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        DecompressionBombError,
        ValueError,
    )


def _common_options() -> argparse.ArgumentParser:
    """Options every (sub)command accepts, so ``--traceback`` works before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subparser that did not see the flag must not reset what the main parser saw.
    common.add_argument(
        "--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
    )
    return common


def add_subcommand(subparsers: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A (nested) subcommand parser with the common options; use it for every new verb."""
    return subparsers.add_parser(name, help=help, description=help, parents=[_common_options()])


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="dotted recipe overrides, values parsed as YAML (e.g. vrt.rank=8 train.lr=1e-5)",
    )


def positive_int(text: str) -> int:
    """``argparse`` type of counts such as ``--batch-size``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def check_device(name: str) -> Any:
    """The ``torch.device`` ``--device`` names, checked before any model loads: an unknown device type,
    or a GPU this machine does not have, is a ``ValueError`` saying what is available."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA GPU is available here (torch sees none); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        available = getattr(torch, device.type, None)
        if available is None or not getattr(available, "is_available", lambda: False)():
            raise ValueError(f"--device {name}: no {device.type} device is available here; use --device cpu")
    return device


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 … (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPE_NAMES), help="cast the model (default: recipe's)")


def _check_model_source(source: str, overrides: Sequence[str]) -> None:
    """Fail fast on a directory that is not a saved model, before images or data are read."""
    from ..convert import is_released_checkpoint
    from ..model import META_NAME

    path = Path(source)
    if path.is_dir():
        if not (path / META_NAME).is_file() and not is_released_checkpoint(path):
            raise FileNotFoundError(
                f"{path} is a directory but neither a padt model (no {META_NAME}) nor a released PaDT checkpoint"
            )
        if overrides:
            raise ValueError("recipe overrides apply to recipes, not to a saved model directory")


def _is_released_hub_id(source: str) -> bool:
    """``org/name`` that is no file, no bundled recipe: a released checkpoint on the hub (``padt_core.load``)."""
    from ..convert import looks_like_hub_id
    from ..recipe import bundled_recipes

    return looks_like_hub_id(source) and source not in bundled_recipes()


def _build_or_load(source: str, overrides: Sequence[str]) -> Any:
    """A model from a padt model directory, a released PaDT checkpoint (directory or hub id), or a recipe."""
    import padt_core

    _check_model_source(source, overrides)
    if Path(source).is_dir() or (not overrides and _is_released_hub_id(source)):
        return padt_core.load(source)
    return padt_core.build(recipe=source, overrides=list(overrides) or None)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` if ``path`` exists and ``--overwrite`` was not given."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def _strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (standard JSON has no NaN) and numpy scalars as numbers."""
    import math

    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_result(result: dict[str, Any], output: str | None) -> None:
    text = json.dumps(result, indent=2)
    if output:
        from ..atomic import atomic_write_text

        atomic_write_text(output, text + "\n")
    print(text)

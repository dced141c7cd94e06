"""Reading a safetensors weights file into a module, with one clear error when it cannot be.

A saved model's ``model.safetensors`` can be empty, truncated (a copy or download cut short),
overwritten with something else, or no longer fit the recipe saved beside it (a width edited in
``recipe.yaml``). ``safetensors`` reports the first as a ``SafetensorError`` traceback and torch the
last as a size-mismatch dump of every tensor; :func:`load_weights` checks the file's header against
the module first and raises :class:`WeightsError` (a ``ValueError``: the CLI prints it as one
``padt: error:`` line) naming the file and what does not match.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["WeightsError", "load_weights", "tied_groups"]

_SHOWN = 5  # items listed per kind of mismatch; the rest are counted


class WeightsError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model; the message names the file."""


def tied_groups(module: nn.Module) -> dict[str, list[str]]:
    """The module's state-dict keys grouped by the tensor they share (tied weights): first key -> all keys."""
    groups: dict[int, list[str]] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    return {keys[0]: keys for keys in groups.values()}


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) from the file's header; ``WeightsError`` for a file that is not a whole safetensors."""
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes): an interrupted save or copy; save or download it again")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise WeightsError(
            f"{path} is not a complete safetensors file ({reason}): truncated or corrupted; save or download it again"
        ) from None


def load_weights(
    module: nn.Module,
    file: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    built_from: str | None = None,
    allow_missing: bool = False,
) -> list[str]:
    """Load every tensor of ``module`` from the safetensors ``file``; nothing is loaded if anything does not fit.

    Each group of tied parameters needs one of its names in the file (a file holding several must hold
    equal tensors). Keys the module lacks, tensors it needs that are absent, and shape mismatches are
    all reported in one :class:`WeightsError`. Returns the module tensors the file did not fill (empty
    unless ``allow_missing``).

    Args:
        module: the model to fill (its structure defines what is expected).
        file: the ``.safetensors`` file.
        device: where the tensors are read to.
        built_from: what the module was built from (e.g. the ``recipe.yaml`` beside the weights), named
            in the error so the reader knows which side to fix.

    Example:
        >>> load_weights(model, "runs/x/model.safetensors", built_from="runs/x/recipe.yaml")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    header = _header(path)
    expected = module.state_dict(keep_vars=True)
    groups = tied_groups(module)
    problems: list[str] = []
    missing = [owner for owner, keys in groups.items() if not any(k in header for k in keys)]
    unexpected = sorted(set(header) - set(expected))
    shapes = [
        f"{k} {list(header[k][0])} in the file, {list(expected[k].shape)} in the model"
        for k in header
        if k in expected and header[k][0] != tuple(expected[k].shape)
    ]
    for title, items in (
        ("tensors do not fit (shape)", shapes),
        ("model tensors are not in the file", [] if allow_missing else missing),
        ("file tensors are not in the model", unexpected),
    ):
        if items:
            problems.append(f"{len(items)} {title}: {_listed(items)}")
    if problems:
        source = f" built from {built_from}" if built_from else ""
        raise WeightsError(f"{path} does not match the model{source}: " + "; ".join(problems))
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:  # the header was whole, the data was not readable
        raise WeightsError(f"{path}: cannot read the tensors ({(str(err).splitlines() or [''])[0]})") from None
    _check_tied_copies(path, state, groups)
    module.load_state_dict(state, strict=False)
    return missing


def _check_tied_copies(path: Path, state: Mapping[str, torch.Tensor], groups: Mapping[str, list[str]]) -> None:
    """Several names of one tied tensor in the file: they must hold the same values (else which one wins?)."""
    for keys in groups.values():
        present = [k for k in keys if k in state]
        for other in present[1:]:
            if not torch.equal(state[present[0]], state[other]):
                raise WeightsError(f"{path}: {other} differs from {present[0]}, but the model ties them")

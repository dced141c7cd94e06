"""The floating-point dtypes a recipe or command line may name, in one table.

Recipes (``backbone.dtype``), ``--dtype`` flags and the benchmarks spell dtypes as torch does
(``float32``, ``bfloat16``, ``float16``); :func:`torch_dtype` maps a name to the ``torch.dtype``
and names the choices on a miss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "DTYPE_NAMES", "DTypeName", "torch_dtype"]

DTypeName = Literal["float32", "bfloat16", "float16"]  # for pydantic fields and argparse choices
DTYPE_NAMES: tuple[str, ...] = get_args(DTypeName)  # the names alone: `padt --help` must not import torch
DTYPES: dict[str, torch.dtype]  # name -> torch.dtype; declared here, built on first use by __getattr__


def _table() -> dict[str, torch.dtype]:
    import torch

    return dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # name -> torch.dtype, built on first use (PEP 562)
        globals()["DTYPES"] = table = _table()
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a dtype name; ``ValueError`` listing the names on a miss.

    Example:
        >>> torch_dtype("bfloat16")
        torch.bfloat16
    """
    try:
        return _table()[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}") from None

"""The floating-point dtypes a recipe or command line may name, in one table.

Recipes (``backbone.dtype``), ``--dtype`` flags and the benchmarks spell dtypes as torch does
(``float32``, ``bfloat16``, ``float16``); :func:`torch_dtype` maps a name to the ``torch.dtype``
and names the choices on a miss.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

__all__ = ["DTYPES", "DTypeName", "torch_dtype"]

DTypeName = Literal["float32", "bfloat16", "float16"]  # for pydantic fields and argparse choices
DTYPES: dict[str, torch.dtype] = dict(zip(get_args(DTypeName), (torch.float32, torch.bfloat16, torch.float16)))


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a dtype name; ``ValueError`` listing the names on a miss.

    Example:
        >>> torch_dtype("bfloat16")
        torch.bfloat16
    """
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None

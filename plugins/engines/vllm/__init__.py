"""PaDT on vLLM (``pip install 'padt[vllm]'``; see ``docs/vllm.md``).

``VLLMEngine`` (``engine.py``) generates in vLLM and decodes objects with padt's heads;
``export_for_vllm`` (``export.py``) writes a padt model as a directory vLLM loads; ``model.py`` holds the
vLLM model classes with the per-request VRT vocabulary; ``_runner.py`` is the only module touching vLLM
internals (and checks the vLLM version). :func:`register` is the ``vllm.general_plugins`` entry point.

This package's ``__init__`` imports nothing heavy: a ``.pth`` hook of the vLLM environment imports
``_torchvision_cpu`` from it in every process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VLLMEngine", "register"]

# vLLM architecture name -> "module:class" (imported by vLLM only when a model of that name is loaded)
MODEL_CLASSES = {
    "PaDTQwen2_5_VLForConditionalGeneration": "padt_plugins.engines.vllm.model:PaDTQwen2_5_VLForConditionalGeneration",
    "PaDTQwen3VLForConditionalGeneration": "padt_plugins.engines.vllm.model:PaDTQwen3VLForConditionalGeneration",
}


def register() -> None:
    """vLLM's plugin hook (entry point group ``vllm.general_plugins``): register padt's model classes."""
    from vllm import ModelRegistry

    for arch, target in MODEL_CLASSES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)


def __getattr__(name: str) -> Any:
    if name == "VLLMEngine":
        from .engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)

"""Parameter counts of a ``PaDTModel`` by component (works on meta-device builds: nothing is allocated).

Reference §5.2 gives the numbers to compare with: the decoder adds ≈ 98.0 M (3B) / ≈ 100.0 M (7B)
parameters, the prototype projection 0.27 M / 0.47 M.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .model import PaDTModel

__all__ = ["parameter_counts"]


def _count(modules: list[nn.Module], seen: set[int]) -> int:
    """Parameters of ``modules`` not already in ``seen`` (tied weights count once, where first met)."""
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def parameter_counts(model: PaDTModel) -> dict[str, int]:
    """``{component: parameters}``: ``total``, ``backbone.vision``, ``backbone.llm``, ``projection``,
    ``decoder`` with ``decoder.trunk`` and ``decoder.heads.<name>``. Tied weights count once."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    try:
        vision = list(model.backbone.vision_modules())
    except NotImplementedError:
        vision = []
    counts["backbone.vision"] = _count(vision, seen)
    counts["backbone.llm"] = _count([model.backbone], seen)  # the rest of the backbone: LLM, embeddings, head
    counts["projection"] = _count([model.projection], seen)
    if model.decoder is not None:
        counts["decoder.trunk"] = _count([model.decoder.trunk], seen)
        for name, head in model.decoder.heads.items():
            counts[f"decoder.heads.{name}"] = _count([head], seen)
        counts["decoder"] = counts["decoder.trunk"] + sum(
            v for k, v in counts.items() if k.startswith("decoder.heads.")
        )
    counts["other"] = _count([model], seen)  # anything a subclass adds; 0 for PaDTModel
    return {"total": sum(p.numel() for p in model.parameters()), **counts}

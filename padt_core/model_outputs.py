"""What ``PaDTModel``'s steps return (like Hugging Face's ``modeling_outputs``): ``Encoded`` (``encode``: the
vision side of a batch), ``PaDTOutput`` (``forward``) and ``Prediction`` (``predict``: text and objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .embedding import PrototypeBank
from .features import VisualFeatures
from .objects import PredictedObject

__all__ = ["Encoded", "PaDTOutput", "Prediction"]


@dataclass
class Encoded:
    """Everything the vision side produced for a batch (computed once, reused by generate/forward).

    A sample has 0..N images (``sample_images``); its VRT ``k`` numbers the concatenation of their
    cells in order (``docs/multi-image.md``): image 0's cells first, then image 1's, ...
    """

    features: list[VisualFeatures]  # one per image of the batch
    prototypes: list[torch.Tensor]  # one per image, [cells, D] (empty list: answer format without VRTs)
    bank: PrototypeBank | None  # per sample; None when the answer format uses no VRTs
    model_kwargs: dict[str, Any]  # what makes the backbone LLM reuse these features
    sample_images: list[list[int]]  # images of each sample (indices into features), in prompt order

    @property
    def image_index(self) -> list[int]:
        """The one image of each sample (``-1``: none); an error for a sample with several (use ``sample_images``)."""
        several = [b for b, own in enumerate(self.sample_images) if len(own) > 1]
        if several:
            raise ValueError(f"sample {several[0]} has {len(self.sample_images[several[0]])} images; use sample_images")
        return [own[0] if own else -1 for own in self.sample_images]

    def image_cells(self, sample: int) -> list[int]:
        """Cells of each of the sample's images, in order (VRT offsets are their running sums)."""
        return [self.features[i].num_cells for i in self.sample_images[sample]]

    def cells(self, sample: int) -> int:
        """The sample's VRT vocabulary: the cells of all its images."""
        return sum(self.image_cells(sample))


@dataclass
class PaDTOutput:
    logits: torch.Tensor  # [B, T, V + P]: text logits ++ VRT logits of the sample's own cells
    hidden_states: torch.Tensor | None  # [B, T, D] last LLM layer (after its final norm); None without VRTs
    encoded: Encoded


@dataclass
class Prediction:
    text: str
    objects: list[PredictedObject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    truncated: bool = False
    ids: list[int] = field(default_factory=list)

"""REC label accuracy: does the answer *name* the referred object's kind?

Acc@0.5 scores the box; a model can land it on the right colour and still call a star "the red
hexagon". ``rec_label_acc`` counts the REC samples whose answered object (:func:`select_object`) has
a label naming the same kind as the referring sentence. Kinds are the words of a ``vocabulary`` (the
dataset's category names: the eight shapes of the generated data); a sentence or label names the
vocabulary entry it contains as whole words (the longest when several match). Samples whose sentence
names no kind are left out and counted (``no_kind``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from padt_core.plugins import PluginConfig

from .base import Metric, ratio, select_object
from .rec import single_gt_object

__all__ = ["RECLabelMetric", "RECLabelMetricConfig", "named_kind"]


class RECLabelMetricConfig(PluginConfig):
    """Driver section for ``name: rec_label``."""

    name: Literal["rec_label"] = "rec_label"
    vocabulary: list[str] = Field(min_length=1, description="the kinds a label may name (category names)")


def named_kind(text: str, vocabulary: list[str]) -> str | None:
    """The vocabulary entry ``text`` names as whole words (the longest if several), case-insensitively.

    Example:
        >>> named_kind("The red Star, left", ["star", "circle"])
        'star'
    """
    words = f" {' '.join(re.findall(r'[a-z0-9]+', text.casefold()))} "
    found = [k for k in vocabulary if f" {' '.join(re.findall(r'[a-z0-9]+', k.casefold()))} " in words]
    return max(found, key=len) if found else None


class RECLabelMetric(Metric):
    """Share of REC answers whose label names the referred kind.

    ``compute()`` keys: ``rec_label_acc`` = named right / scored samples; ``label_hits``; ``no_kind``
    (sentences naming no vocabulary kind, not scored); ``no_label`` (answers without a kind in their
    label, scored as misses); plus the shared counts.
    """

    name: ClassVar[str] = "rec_label"
    Config: ClassVar[type[PluginConfig]] = RECLabelMetricConfig
    sample_tasks: ClassVar[tuple[str, ...]] = ("rec",)
    headline: ClassVar[tuple[str, ...]] = ("rec_label_acc",)

    def reset(self) -> None:
        super().reset()
        self.label_hits = self.no_kind = self.no_label = self.scored = 0

    def _update(self, sample: Any, prediction: Any, objects: list[Any]) -> None:
        vocabulary = self.config.vocabulary
        wanted = named_kind(single_gt_object(sample, self.name).label, vocabulary)
        if wanted is None:
            self.no_kind += 1
            return
        self.scored += 1
        chosen = select_object(objects)
        said = named_kind(getattr(chosen, "label", "") or "", vocabulary) if chosen is not None else None
        self.no_label += said is None
        self.label_hits += said == wanted

    def _compute(self) -> dict[str, float | int | dict]:
        return {
            "rec_label_acc": ratio(self.label_hits, self.scored),
            "label_hits": self.label_hits,
            "no_kind": self.no_kind,
            "no_label": self.no_label,
        }

"""The ``text_box`` answer format: boxes written as text in Qwen2.5-VL's grounding style.

The text-coordinate baseline of the PaDT paper (arXiv 2510.01954, issue 9): the same backbone
writes each object as JSON, ``{"bbox_2d": [x1, y1, x2, y2]}``, in integer pixels of the *resized*
image the processor hands the model (what Qwen2.5-VL's own grounding uses), and is trained with
plain next-token CE. No VRTs, prototype bank or decoder heads are involved. Answers per task:

* REC / RES: the recipe's ``data.templates.rec_answer`` with the JSON box in place of the object::

      The "the red star" refers to {"bbox_2d": [31, 20, 80, 74]} in this image.

* OVD: a JSON list of boxes with their category (``ovd_answer`` wraps it; ``[]`` when none)::

      [{"bbox_2d": [13, 10, 40, 37], "label": "square"}, {"bbox_2d": [60, 9, 104, 53], "label": "circle"}]

* RIC: the caption with each placeholder replaced by its JSON box::

      a small red square ({"bbox_2d": [13, 10, 40, 37]}) to the left of an orange circle ({"bbox_2d": [...]}).

Parsing reads every JSON object holding ``"bbox_2d"`` from left to right; its label is its own
``"label"``, else the last quoted text before it outside JSON (as the VRT parser does). Coordinates
are clipped to the resized image and mapped back to pixels of the original image. Malformed output
(truncated JSON, wrong types, reversed or out-of-image boxes) is reported in ``skipped``, never raised.
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from padt_core.answer_format import AnswerFormat, AnswerObject, ImageGeometry, ParsedAnswer
from padt_core.data.sample import Sample
from padt_core.plugins import PluginConfig

__all__ = ["BOX_KEY", "TextBoxFormat", "TextBoxFormatConfig", "box_json", "pixel_box"]

BOX_KEY = "bbox_2d"  # Qwen2.5-VL's grounding key
_QUOTED = re.compile(r'"([^"]*)"')
_SNIPPET = 60  # characters of a malformed box quoted in ``skipped``


class TextBoxFormatConfig(PluginConfig):
    """Recipe section ``answer_format: {name: text_box, ...}``."""

    name: Literal["text_box"] = "text_box"
    ovd_answer: str = Field(
        "{objects}",
        description="OVD answer; {objects} = JSON list of {bbox_2d, label} (e.g. '```json\\n{objects}\\n```')",
    )

    @field_validator("ovd_answer")
    @classmethod
    def _one_field(cls, value: str) -> str:
        try:
            used = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as err:
            raise ValueError(f"not a valid format string ({err}); write a literal brace as {{{{ or }}}}") from None
        if used != ["objects"]:
            raise ValueError(f"must use the field {{objects}} exactly once and no other; got {used or 'none'}")
        return value


def pixel_box(box: tuple[float, float, float, float], geometry: ImageGeometry) -> list[int]:
    """A normalised xyxy box as integer pixels of the resized image (rounded half up, inside the image)."""
    h, w = geometry.resized
    limits = (w, h, w, h)
    return [min(max(math.floor(v + 0.5), 0), lim) for v, lim in zip(geometry.to_resized(box), limits)]


def box_json(box: list[int], label: str | None = None) -> str:
    """``{"bbox_2d": [x1, y1, x2, y2]}`` (with ``"label"`` when given), standard ``json.dumps`` spacing."""
    item: dict[str, Any] = {BOX_KEY: box}
    if label is not None:
        item["label"] = label
    return json.dumps(item, ensure_ascii=False)


def _numbers(value: Any) -> list[float] | None:
    """Four finite numbers (JSON ints or floats, not booleans), else ``None``."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


class TextBoxFormat(AnswerFormat):
    """Objects as Qwen2.5-VL grounding JSON in resized-image pixels; plain next-token CE, no decoder."""

    name: ClassVar[str] = "text_box"
    Config: ClassVar[type[PluginConfig]] = TextBoxFormatConfig

    # --- writing --------------------------------------------------------------------------------
    def render(self, sample: Sample, geometry: ImageGeometry) -> str:
        if sample.task == "ovd":
            # The reference's OVD sentence groups objects by category; here the list carries the labels.
            items = [{BOX_KEY: pixel_box(o.box, geometry), "label": o.label} for o in sample.objects]
            return self.config.ovd_answer.format(objects=json.dumps(items, ensure_ascii=False))
        return sample.render([box_json(pixel_box(o.box, geometry)) for o in sample.objects])

    # --- reading --------------------------------------------------------------------------------
    def parse(self, text: str, geometry: ImageGeometry | None) -> ParsedAnswer:
        result = ParsedAnswer(text=text)
        decoder = json.JSONDecoder()
        label: str | None = None  # last quoted text outside JSON: the label of a box without its own
        pos = 0
        while pos < len(text):
            start = text.find("{", pos)
            quoted = _QUOTED.findall(text[pos : start if start >= 0 else len(text)])
            if quoted:
                label = quoted[-1].strip()
            if start < 0:
                break
            try:
                value, end = decoder.raw_decode(text, start)
            except json.JSONDecodeError as err:
                # Truncated or broken JSON: skip to the next "{" (the next object of a list still counts).
                following = text.find("{", start + 1)
                piece = text[start : following if following >= 0 else len(text)]
                if BOX_KEY in piece:
                    result.skipped.append(f"malformed box JSON at char {start}: {piece[:_SNIPPET]!r} ({err.msg})")
                pos = following if following >= 0 else len(text)
                continue
            pos = end
            if isinstance(value, dict) and BOX_KEY in value:
                self._add(value, label, start, geometry, result)
        return result

    @staticmethod
    def _add(
        value: dict[str, Any], label: str | None, start: int, geometry: ImageGeometry | None, result: ParsedAnswer
    ) -> None:
        """Validate, clip and map one ``{"bbox_2d": ...}`` object; note anything dropped in ``result.skipped``."""
        where = f"box at char {start}"
        numbers = _numbers(value[BOX_KEY])
        if numbers is None:
            result.skipped.append(f"{where}: {BOX_KEY} must be 4 numbers [x1, y1, x2, y2], got {value[BOX_KEY]!r}")
            return
        own = value.get("label")
        if own is not None and not isinstance(own, str):
            result.skipped.append(f"{where}: label must be a string, got {own!r}; using the quoted text before it")
            own = None
        if own is None and label is None:
            result.skipped.append(f'{where} has no label (no "label" key, no quoted text before it)')
        if geometry is None:
            result.skipped.append(f"{where}: the sample has no image to place the box in")
            return
        x1, y1, x2, y2 = numbers
        if x2 < x1 or y2 < y1:
            result.skipped.append(f"{where}: {numbers} is not x1 <= x2, y1 <= y2")
            return
        h, w = geometry.resized
        clipped = [min(max(v, 0.0), lim) for v, lim in zip(numbers, (w, h, w, h))]
        if clipped != numbers:
            if (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) <= 0:
                result.skipped.append(f"{where}: {numbers} lies outside the {w}x{h} image")
                return
            result.clipped += 1
        text_label = own if own is not None else label or ""
        result.objects.append(AnswerObject(label=text_label.strip(), box=geometry.resized_to_original(clipped)))

"""Prompt and answer templates per task, as data (reference §6.3–§6.5).

:class:`TaskTemplates` holds every sentence padt writes for a sample, with ``str.format`` fields
(``{label}``, ``{objects}``, ...). Its defaults are the reference's exact wording, so models
fine-tuned from released checkpoints see the text they were trained on; a recipe may change any
of them under ``data.templates``. Each field is checked to use exactly its documented fields, so a
typo in a recipe fails at load time, not mid-epoch.

The render functions below take a ``TaskTemplates`` and build the answer *templates* (with
``<|Obj_k|>`` placeholders, objects numbered in text order from 0).
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core.core_schema import ValidationInfo

from .sample import Sample, placeholder, placeholder_indices

__all__ = [
    "RIC_MARKER_RE",
    "TaskTemplates",
    "drop_objects",
    "ovd_answer",
    "ovd_prompt",
    "rec_answer",
    "rec_prompt",
    "ric_answer",
    "ric_marker",
    "ric_prompt",
]


class TaskTemplates(BaseModel):
    """Prompt/answer wording for every task (recipe section ``data.templates``).

    Defaults reproduce the reference (§6.3 OVD, §6.4 REC/RES, §6.5 RIC). Examples with defaults::

        There is 1 "person" (<|Obj_0|>) in this image.
        There are 3 "car" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>) in this image.
        In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).
        The "the red star" refers to <|Obj_0|> in this image.
    """

    model_config = ConfigDict(extra="forbid")

    ovd_prompt: str = Field(
        "Please carefully check the image and detect the following objects: {categories}.",
        description="fields: {categories} = JSON list of category names",
    )
    ovd_none: str = Field("No objects from the list are present in the image.", description="no fields")
    ovd_one: str = Field(
        'There is 1 "{label}" ({objects}) in this image.',
        description="one category with one object; fields: {label}, {objects}",
    )
    ovd_many: str = Field(
        'There are {count} "{label}" ({objects}) in this image.',
        description="one category with several objects; fields: {count}, {label}, {objects}",
    )
    ovd_several: str = Field("In this image, there are {groups}.", description="several categories; fields: {groups}")
    ovd_group: str = Field(
        '{count} "{label}" ({objects})',
        description="one category inside ovd_several; fields: {count}, {label}, {objects}",
    )
    group_separator: str = Field(", ", description="between groups of ovd_several")
    object_separator: str = Field(", ", description="between the placeholders of one group")
    rec_prompt: str = Field(
        'Please carefully check the image and detect the object this sentence describes: "{sentence}".',
        description="REC and RES; fields: {sentence}",
    )
    rec_answer: str = Field(
        'The "{sentence}" refers to {objects} in this image.', description="fields: {sentence}, {objects}"
    )
    ric_prompt: str = Field("Please describe this image.", description="no fields")

    @field_validator("*")
    @classmethod
    def _fields_match(cls, value: str, info: ValidationInfo) -> str:
        expected = _FIELDS.get(info.field_name)
        if expected is None:  # separators are plain text
            return value
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as err:
            raise ValueError(f"not a valid format string ({err}); write a literal brace as {{{{ or }}}}") from None
        if "" in used or any(name.isdigit() for name in used):
            raise ValueError("use named fields ({label}), not positional ones ({} or {0})")
        if used != expected:
            want = ", ".join(f"{{{n}}}" for n in sorted(expected)) or "none"
            got = ", ".join(f"{{{n}}}" for n in sorted(used)) or "none"
            raise ValueError(f"fields must be exactly {want}; got {got}")
        return value


_FIELDS: dict[str, set[str]] = {
    "ovd_prompt": {"categories"},
    "ovd_none": set(),
    "ovd_one": {"label", "objects"},
    "ovd_many": {"count", "label", "objects"},
    "ovd_several": {"groups"},
    "ovd_group": {"count", "label", "objects"},
    "rec_prompt": {"sentence"},
    "rec_answer": {"sentence", "objects"},
    "ric_prompt": set(),
}

DEFAULT_TEMPLATES = TaskTemplates()


# ---------------------------------------------------------------------------------------------------
# OVD
# ---------------------------------------------------------------------------------------------------


def ovd_prompt(categories: Sequence[str], templates: TaskTemplates = DEFAULT_TEMPLATES) -> str:
    """Detection prompt listing ``categories`` as a JSON list (standard ``json.dumps``, as the reference)."""
    return templates.ovd_prompt.format(categories=json.dumps(list(categories)))


def ovd_answer(groups: Sequence[tuple[str, int]], templates: TaskTemplates = DEFAULT_TEMPLATES) -> str:
    """Answer template for ``groups`` = ``[(label, count), ...]`` in prompt order.

    Objects are numbered consecutively through the groups: the objects of group 0 are
    ``<|Obj_0|> … <|Obj_{c0-1}|>``, and so on, so ``Sample.objects`` must list them in that order.
    Groups with a count of 0 are left out.
    """
    groups = [(label, int(count)) for label, count in groups if count > 0]
    if not groups:
        return templates.ovd_none
    start, rendered = 0, []
    for label, count in groups:
        objects = templates.object_separator.join(placeholder(start + i) for i in range(count))
        rendered.append((label, count, objects))
        start += count
    if len(rendered) == 1:
        label, count, objects = rendered[0]
        if count == 1:
            return templates.ovd_one.format(label=label, objects=objects)
        return templates.ovd_many.format(count=count, label=label, objects=objects)
    parts = [templates.ovd_group.format(count=c, label=lab, objects=o) for lab, c, o in rendered]
    return templates.ovd_several.format(groups=templates.group_separator.join(parts))


# ---------------------------------------------------------------------------------------------------
# REC / RES
# ---------------------------------------------------------------------------------------------------


def rec_prompt(sentence: str, templates: TaskTemplates = DEFAULT_TEMPLATES) -> str:
    """Referring prompt: the sentence in quotes, verbatim."""
    return templates.rec_prompt.format(sentence=sentence)


def rec_answer(sentence: str, templates: TaskTemplates = DEFAULT_TEMPLATES, index: int = 0) -> str:
    """Referring answer: the sentence repeated in quotes (the reference's evaluation keys on it) and one object."""
    return templates.rec_answer.format(sentence=sentence, objects=placeholder(index))


# ---------------------------------------------------------------------------------------------------
# RIC
# ---------------------------------------------------------------------------------------------------

#: A caption marker ``<box_id: 12/>``, tolerant to the malformed spellings seen in RIC data
#: (missing space or slash, spaces inside the brackets).
RIC_MARKER_RE = re.compile(r"<\s*box_id\s*:\s*(\d+)\s*/?\s*>")
# Anything that looks like a marker, valid or not (``<box_id: abc/>`` is removed like a missing one).
_MARKERISH = r"<\s*box_id[^<>]*>"
# One pass, left to right, over either a parenthesised group of markers or a bare comma-separated run.
_MENTION_RE = re.compile(
    rf"(?P<group>\s*\(\s*{_MARKERISH}(?:\s*,?\s*{_MARKERISH})*\s*,?\s*\))|(?P<run>\s*{_MARKERISH}(?:\s*,\s*{_MARKERISH})*)"
)


def ric_marker(ann_id: int) -> str:
    """The caption marker for annotation ``ann_id``: ``<box_id: 12/>`` (reference §6.5)."""
    return f"<box_id: {ann_id}/>"


def ric_prompt(templates: TaskTemplates = DEFAULT_TEMPLATES) -> str:
    """The RIC prompt (a fixed instruction)."""
    return templates.ric_prompt


def ric_answer(
    caption: str, resolve: Callable[[int], bool], templates: TaskTemplates = DEFAULT_TEMPLATES
) -> tuple[str, list[int]]:
    """Turn a marker caption into an answer template.

    Every marker ``<box_id: N/>`` whose annotation ``resolve(N)`` accepts becomes ``<|Obj_k|>`` (``k``
    counts accepted markers in text order; a repeated annotation gets a new ``k`` each time, so each
    placeholder appears exactly once). Rejected or malformed markers are deleted with their
    separating comma; a parenthesised group left empty is deleted with its parentheses and leading
    space (reference §6.5).

    Returns:
        ``(template, ann_ids)`` with ``ann_ids[k]`` the annotation of ``<|Obj_k|>``.
    """
    ann_ids: list[int] = []

    def mention(match: re.Match[str]) -> str:
        text = match.group(0)
        lead = text[: len(text) - len(text.lstrip())]
        kept = []
        for item in re.findall(_MARKERISH, text):
            marker = RIC_MARKER_RE.fullmatch(item)
            if marker is not None and resolve(int(marker.group(1))):
                ann_ids.append(int(marker.group(1)))
                kept.append(placeholder(len(ann_ids) - 1))
        if not kept:
            return ""
        joined = templates.object_separator.join(kept)
        return f"{lead}({joined})" if match.group("group") else f"{lead}{joined}"

    # A deleted mention takes its leading whitespace with it, so the rest of the caption is untouched.
    return _MENTION_RE.sub(mention, caption).strip(), ann_ids


# ---------------------------------------------------------------------------------------------------
# Dropping objects late (on the processor grid)
# ---------------------------------------------------------------------------------------------------


def drop_objects(sample: Sample, keep: Sequence[bool], templates: TaskTemplates = DEFAULT_TEMPLATES) -> Sample | None:
    """The sample without the objects whose ``keep`` is false, its answer rewritten; ``None`` if unusable.

    The reference drops objects that cover no VRT cell before writing the answer (§6.2). padt only
    knows the cells once the processor grid is known (in the collator), so it drops them there:

    * ``ovd``: the answer is re-rendered from the kept objects' labels (a category whose objects
      are all dropped leaves the answer, as in the reference; the prompt is unchanged);
    * ``ric``: the dropped placeholders are removed with their comma or parentheses, like markers
      of missing annotations (:func:`ric_answer`);
    * ``rec`` / ``res``: the sample is about its one object, so dropping it gives ``None``.

    ``templates`` must be the ones the sample was written with (the recipe's ``data.templates``).
    """
    if len(keep) != len(sample.objects):
        raise ValueError(f"sample {sample.id}: {len(keep)} keep flags for {len(sample.objects)} objects")
    if all(keep):
        return sample
    if sample.task in ("rec", "res"):
        return None
    if sample.task == "ovd":
        objects = [o for o, k in zip(sample.objects, keep) if k]
        groups: list[tuple[str, int]] = []
        for obj in objects:  # objects are stored group by group, in answer order
            if groups and groups[-1][0] == obj.label:
                groups[-1] = (obj.label, groups[-1][1] + 1)
            else:
                groups.append((obj.label, 1))
        answer = ovd_answer(groups, templates)
    else:
        order = placeholder_indices(sample.answer)
        if len(set(order)) != len(order):
            raise ValueError(f"sample {sample.id}: a placeholder appears twice in {sample.answer!r}")
        # Placeholders back to markers (marker id = object index), then the RIC marker rules apply.
        as_markers = re.sub(r"<\|Obj_(\d+)\|>", lambda m: ric_marker(int(m.group(1))), sample.answer)
        answer, kept = ric_answer(as_markers, lambda k: bool(keep[k]), templates)
        objects = [sample.objects[k] for k in kept]
    return dataclasses.replace(sample, answer=answer, objects=objects)

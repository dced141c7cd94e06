"""The language of the synthetic shapes world: its vocabulary, referring expressions and captions.

:func:`refer_expressions` writes the *minimal* unambiguous description of an object among the
others of its image, trying in order: shape (``the star``), colour + shape, size + shape, size +
colour + shape, then the same with a spatial word when attributes do not suffice (``the red star on
the left`` between two candidates, ``the leftmost red star`` among more). A spatial word is only used
when the object's centre is at least :data:`SPATIAL_GAP` px beyond every other candidate along that
axis. :func:`resolve_expression` reads an expression back independently, so tests can check that
each one denotes exactly its object. :func:`caption` names every object once with RIC
``<box_id: N/>`` markers (reference §6.5).

Objects are plain dicts: ``shape``, ``colour``, ``size`` and ``centre`` ``(x, y)`` in px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from padt_core.data.templates import ric_marker

__all__ = ["COLOURS", "SHAPES", "SIZES", "SPATIAL_GAP", "caption", "refer_expressions", "resolve_expression"]

SHAPES: tuple[str, ...] = ("circle", "ellipse", "square", "triangle", "star", "hexagon", "cross", "diamond")
_PLURAL = {s: s + ("es" if s.endswith(("s", "x")) or s == "cross" else "s") for s in SHAPES}
#: Saturated colours, far from the muted backgrounds and from each other.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (240, 220, 35),
    "green": (35, 160, 55),
    "blue": (35, 85, 225),
    "purple": (145, 50, 195),
}
#: Extent (bounding size) ranges in px at 224 px; they scale with the image's shorter side.
SIZES: dict[str, tuple[int, int]] = {"small": (30, 46), "large": (66, 90)}
#: Minimum centre separation (px at 224) along an axis for a spatial word to be unambiguous.
SPATIAL_GAP = 12
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


# ---------------------------------------------------------------------------------------------------
# Referring expressions
# ---------------------------------------------------------------------------------------------------

_ATTRIBUTE_SETS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
)
_SUPERLATIVE = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
_RELATIVE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


def _noun_phrase(obj: dict[str, Any], attrs: Sequence[str]) -> str:
    return " ".join(obj[a] for a in ("size", "colour", "shape") if a in attrs)


def _matching(objects: Sequence[dict[str, Any]], target: int, attrs: Sequence[str]) -> list[int]:
    return [j for j, o in enumerate(objects) if all(o[a] == objects[target][a] for a in attrs)]


def _extreme(objects: Sequence[dict[str, Any]], target: int, candidates: Sequence[int], gap: float) -> str | None:
    """The direction in which ``target`` is beyond every other candidate by ``gap`` (largest margin)."""
    best, best_margin = None, gap
    for direction in ("left", "right", "top", "bottom"):
        axis = 0 if direction in ("left", "right") else 1
        sign = 1.0 if direction in ("left", "top") else -1.0
        value = sign * objects[target]["centre"][axis]
        margin = min(sign * objects[j]["centre"][axis] for j in candidates if j != target) - value
        if margin >= best_margin:
            best, best_margin = direction, margin
    return best


def _spatial_phrase(noun: str, direction: str, n_candidates: int) -> str:
    if n_candidates == 2:
        return f"the {noun} {_RELATIVE[direction]}"
    return f"the {_SUPERLATIVE[direction]} {noun}"


def refer_expressions(
    objects: Sequence[dict[str, Any]], target: int, difficulty: str = "full", gap: float = SPATIAL_GAP
) -> list[str]:
    """Unambiguous referring expressions for ``objects[target]``, minimal first (empty if none exists).

    ``objects`` are dicts with ``shape``, ``colour``, ``size`` and ``centre`` ``(x, y)`` in px.
    """
    if difficulty == "easy":
        attrs = ("colour", "shape")
        unique = len(_matching(objects, target, attrs)) == 1
        return [f"the {_noun_phrase(objects[target], attrs)}"] if unique else []
    found: list[str] = []
    for attrs in _ATTRIBUTE_SETS:
        if len(_matching(objects, target, attrs)) == 1:
            found.append(f"the {_noun_phrase(objects[target], attrs)}")
            break
    if not found:
        for attrs in _ATTRIBUTE_SETS:
            candidates = _matching(objects, target, attrs)
            direction = _extreme(objects, target, candidates, gap)
            if direction is not None:
                found.append(_spatial_phrase(_noun_phrase(objects[target], attrs), direction, len(candidates)))
                break
    if not found:
        return []
    # The most specific description as a second sentence: it teaches every attribute word.
    full = _ATTRIBUTE_SETS[-1]
    candidates = _matching(objects, target, full)
    if len(candidates) == 1:
        specific = f"the {_noun_phrase(objects[target], full)}"
    else:
        direction = _extreme(objects, target, candidates, gap)
        specific = (
            None
            if direction is None
            else _spatial_phrase(_noun_phrase(objects[target], full), direction, len(candidates))
        )
    if specific is not None and specific not in found:
        found.append(specific)
    return found


def resolve_expression(expression: str, objects: Sequence[dict[str, Any]], gap: float = SPATIAL_GAP) -> list[int]:
    """The objects an expression produced by :func:`refer_expressions` can denote.

    An independent reading of the grammar (attribute words filter; a spatial word picks the extreme
    candidate only if it is ``gap`` px clear of the others), used to check that every expression
    denotes exactly one object. Returns all candidates when the expression is ambiguous.
    """
    words = expression.split()
    if not words or words[0] != "the":
        raise ValueError(f"not a shapes expression: {expression!r}")
    words = words[1:]
    direction = None
    for d, phrase in _RELATIVE.items():
        if expression.endswith(" " + phrase):
            direction, words = d, words[: -len(phrase.split())]
    if words and words[0] in _SUPERLATIVE.values():
        direction = next(d for d, s in _SUPERLATIVE.items() if s == words[0])
        words = words[1:]
    filters = {}
    for word in words:
        key = "shape" if word in SHAPES else "colour" if word in COLOURS else "size" if word in SIZES else None
        if key is None or key in filters:
            raise ValueError(f"not a shapes expression: {expression!r} (word {word!r})")
        filters[key] = word
    candidates = [j for j, o in enumerate(objects) if all(o[k] == v for k, v in filters.items())]
    if direction is None or len(candidates) < 2:
        return candidates
    relative = expression.endswith(" " + _RELATIVE[direction])
    if relative and len(candidates) != 2:  # "on the left" is only clear between two
        return candidates
    axis = 0 if direction in ("left", "right") else 1
    sign = 1.0 if direction in ("left", "top") else -1.0
    ranked = sorted(candidates, key=lambda j: sign * objects[j]["centre"][axis])
    first, second = (sign * objects[j]["centre"][axis] for j in ranked[:2])
    return [ranked[0]] if second - first >= gap else candidates


# ---------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(objects: Sequence[dict[str, Any]], ann_ids: Sequence[int], background: str, difficulty: str) -> str:
    """A caption naming every object once, with ``<box_id: N/>`` markers (reference §6.5 format)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for j, o in enumerate(objects):
        groups.setdefault((o["colour"], o["shape"]), []).append(j)
    ordered = sorted(groups.values(), key=lambda members: min(objects[j]["centre"][0] for j in members))
    mentions, centres = [], []
    for members in ordered:
        first = objects[members[0]]
        markers = ", ".join(ric_marker(ann_ids[j]) for j in members)
        if len(members) == 1:
            noun = _noun_phrase(first, ("colour", "shape") if difficulty == "easy" else ("size", "colour", "shape"))
            mentions.append(f"{_article(noun)} {noun} ({markers})")
        else:
            mentions.append(f"{_NUMBERS[len(members)]} {first['colour']} {_PLURAL[first['shape']]} ({markers})")
        centres.append(np.mean([objects[j]["centre"] for j in members], axis=0))
    if len(mentions) == 1:
        return f"{mentions[0]} on a {background} background."
    if len(mentions) == 2:
        (ax, ay), (bx, by) = centres
        if abs(bx - ax) >= abs(by - ay):  # groups are sorted by x, so the first is on the left
            return f"{mentions[0]} to the left of {mentions[1]}."
        top, bottom = (0, 1) if ay <= by else (1, 0)
        return f"{mentions[top]} above {mentions[bottom]}."
    return f"{', '.join(mentions[:-1])} and {mentions[-1]}."

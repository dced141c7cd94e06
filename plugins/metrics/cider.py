"""CIDEr-D in pure Python, as the coco-caption toolkit's ``pycocoevalcap/cider/cider_scorer.py`` computes it.

For a candidate ``c`` with references ``R = {r_1..r_m}`` of its image, n-gram orders ``n = 1..4``:

* ``g_n(s)``: TF-IDF vector of the n-grams of sentence ``s``: term count × ``(log N − log max(1, df))``,
  ``N`` = number of reference *sets* (images) in the split, ``df`` = number of those sets whose
  references contain the n-gram (n-grams unseen in the references get ``df = 1``);
* ``sim_n(c, r) = Σ_k min(g_n(c)_k, g_n(r)_k) · g_n(r)_k / (‖g_n(c)‖ ‖g_n(r)‖) · exp(−δ² / 2σ²)`` with
  clipping (the ``min``), ``σ = 6`` and ``δ`` = the length difference, where the toolkit's "length" is
  the number of *bigrams* (its ``if n == 1`` counts order index 1); 0 when either norm is 0;
* ``CIDEr-D(c, R) = 10 · mean_n (1/m) Σ_j sim_n(c, r_j)``; the corpus score is the mean over candidates.

Tokenisation (the toolkit runs the Java PTB tokenizer first; we do not ship Java): lower-case,
special tokens ``<|...|>`` (VRTs, placeholders) removed, then words are maximal runs of letters/digits,
keeping internal hyphens and apostrophes (``t-shirt``, ``man's``) and decimal numbers (``3.5``); all
other punctuation, quotes and brackets are dropped. PTB would also split clitics (``man 's``,
``do n't``), so scores can differ slightly from the toolkit's on text with clitics.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import chain

__all__ = ["CIDER_N", "CIDER_SIGMA", "cider_d", "ngrams", "tokenize"]

CIDER_N = 4
CIDER_SIGMA = 6.0

_SPECIAL = re.compile(r"<\|[^|<>]*\|>")  # <|VRT_12|>, <|Obj_0|>, <|im_end|>
_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:[-'][^\W_]+)*")

NGrams = Counter[tuple[str, ...]]


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` with special tokens, quotes and punctuation removed."""
    return _WORD.findall(_SPECIAL.sub(" ", text).lower())


def ngrams(tokens: Sequence[str], n: int = CIDER_N) -> NGrams:
    """Counts of every 1..n-gram of ``tokens`` (the toolkit's ``precook``)."""
    counts: NGrams = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def _vector(counts: NGrams, df: Counter, log_n: float, n: int) -> tuple[list[dict], list[float], int]:
    """TF-IDF vector per order, its norms, and the toolkit's length (number of bigrams)."""
    vec: list[dict] = [{} for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        order = len(gram) - 1
        weight = tf * (log_n - math.log(max(1.0, df[gram])))
        vec[order][gram] = weight
        norm[order] += weight * weight
        if order == 1:  # the toolkit's quirk, kept for parity: "length" counts bigrams
            length += tf
    return vec, [math.sqrt(v) for v in norm], length


def _similarity(hyp: tuple, ref: tuple, n: int, sigma: float) -> list[float]:
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
    out = []
    for k in range(n):
        dot = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
        denom = norm_h[k] * norm_r[k]
        out.append((dot / denom if denom else 0.0) * penalty)
    return out


def cider_d(
    candidates: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    candidate_refs: Sequence[int] | None = None,
    n: int = CIDER_N,
    sigma: float = CIDER_SIGMA,
) -> tuple[float, list[float]]:
    """Corpus CIDEr-D and per-candidate scores.

    Args:
        candidates: tokenised candidate sentences.
        references: tokenised reference sentences, one list per reference set (image). Document
            frequencies and ``N`` come from these sets, each counted once.
        candidate_refs: index into ``references`` of each candidate's reference set; default
            ``range(len(candidates))`` (one candidate per image, the toolkit's layout). Several
            candidates may share a set (several samples of one image) without inflating ``df``.
        n: highest n-gram order.
        sigma: standard deviation of the length penalty.

    Returns:
        ``(mean over candidates, [score per candidate])``; ``(nan, [])`` without candidates.
    """
    if candidate_refs is None:
        candidate_refs = range(len(candidates))
    candidate_refs = list(candidate_refs)
    if len(candidate_refs) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(candidate_refs)} reference indices")
    if not candidates:
        return math.nan, []
    ref_counts = [[ngrams(r, n) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_counts:
        df.update(set(chain.from_iterable(refs)))
    log_n = math.log(float(len(references)))
    ref_vecs = [[_vector(c, df, log_n, n) for c in refs] for refs in ref_counts]
    scores = []
    for tokens, index in zip(candidates, candidate_refs):
        refs = ref_vecs[index]
        if not refs:
            raise ValueError(f"reference set {index} is empty")
        hyp = _vector(ngrams(tokens, n), df, log_n, n)
        total = [0.0] * n
        for ref in refs:
            total = [a + b for a, b in zip(total, _similarity(hyp, ref, n, sigma))]
        scores.append(10.0 * (sum(total) / n) / len(refs))
    return sum(scores) / len(scores), scores

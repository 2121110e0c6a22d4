"""Similarity of generated text to the true continuation, on token sequences.

The metrics used to grade free-running extraction and whole-document reconstruction:

- normalised token-level Levenshtein distance and its verdicts (Merullo et al. 2025): over ``L``
  tokens at edit distance ``d``, *strict* extraction is ``d = 0`` and *loose* extraction is
  ``1 - d / L >= 0.75``;
- ROUGE-L F1 (Lin 2004), sentence BLEU (Papineni et al. 2002), Jaccard similarity of the token
  sets and :class:`difflib.SequenceMatcher`'s ratio: the metrics of Ma et al. 2025 ("Memorization:
  A Close Look at Books").

Every function takes two sequences of hashable items (token ids, or words) and compares them as
sequences of symbols; no text is re-tokenised. Well-kept libraries do the work: rapidfuzz
(Levenshtein), rouge-score (LCS), sacrebleu (BLEU). Each metric declares its direction in
:data:`METRICS`.

Example:
    >>> similarity_scores([5, 6, 7, 8], [5, 6, 9, 8])["levenshtein"]
    0.25
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

__all__ = [
    "LOOSE_THRESHOLD",
    "METRICS",
    "Metric",
    "bleu_score",
    "jaccard_score",
    "levenshtein_distance",
    "levenshtein_similarity",
    "loose_verdict",
    "rouge_l_score",
    "sequence_matcher_ratio",
    "similarity_scores",
    "strict_verdict",
]

#: Merullo et al.'s loose extraction threshold on 1 - d / L.
LOOSE_THRESHOLD = 0.75


def levenshtein_distance(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """Token edit distance divided by the longer length (0 = identical, 1 = nothing shared).

    Lower is better. With equal lengths (a suffix and its greedy continuation) this is Merullo et
    al.'s d / L. Two empty sequences are at distance 0.
    """
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(list(generated), list(reference)))


def levenshtein_similarity(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """``1 - levenshtein_distance``; higher is better."""
    return 1.0 - levenshtein_distance(generated, reference)


class _SymbolTokenizer:
    """rouge-score tokenizer for text that is already a space-joined symbol sequence."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _symbols(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> tuple[str, str]:
    # Map every distinct item to a word-like symbol so libraries that split on spaces see exactly
    # one symbol per item, whatever the items are (ids, words with spaces, punctuation).
    ids: dict[Hashable, int] = {}
    a = " ".join(f"t{ids.setdefault(x, len(ids))}" for x in generated)
    b = " ".join(f"t{ids.setdefault(x, len(ids))}" for x in reference)
    return a, b


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_SymbolTokenizer())


def rouge_l_score(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """ROUGE-L F1 (longest common subsequence); higher is better; 0 when either is empty."""
    if not generated or not reference:
        return 0.0
    gen, ref = _symbols(generated, reference)
    return float(_rouge_scorer().score(ref, gen)["rougeL"].fmeasure)


@functools.lru_cache(maxsize=1)
def _bleu():
    from sacrebleu.metrics import BLEU

    # The symbols are already tokens: no further tokenisation; effective order so that short
    # sequences are not scored 0 for lacking 4-grams.
    return BLEU(tokenize="none", effective_order=True)


def bleu_score(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """Sentence BLEU in [0, 1] (sacrebleu, exponential smoothing); higher is better."""
    if not generated or not reference:
        return 0.0
    gen, ref = _symbols(generated, reference)
    return float(_bleu().sentence_score(gen, [ref]).score) / 100.0


def jaccard_score(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """|A ∩ B| / |A ∪ B| of the item sets; higher is better; 1 for two empty sequences."""
    a, b = set(generated), set(reference)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def sequence_matcher_ratio(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """difflib's ``2 * matches / (len(a) + len(b))``, without the junk heuristic; higher is better."""
    return difflib.SequenceMatcher(None, list(generated), list(reference), autojunk=False).ratio()


def strict_verdict(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> bool:
    """Merullo et al.'s strict extraction: the sequences are identical."""
    return list(generated) == list(reference)


def loose_verdict(
    generated: Sequence[Hashable],
    reference: Sequence[Hashable],
    threshold: float = LOOSE_THRESHOLD,
) -> bool:
    """Merullo et al.'s loose extraction: ``1 - d / L >= threshold`` (0.75)."""
    return levenshtein_similarity(generated, reference) >= threshold


@dataclass(frozen=True)
class Metric:
    """A per-example metric and its direction (so reports sort and flag correctly)."""

    name: str
    fn: Callable[[Sequence[Hashable], Sequence[Hashable]], float]
    higher_is_better: bool


#: Every similarity metric by the column name it gets in results.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("levenshtein", levenshtein_distance, higher_is_better=False),
        Metric("rouge_l", rouge_l_score, higher_is_better=True),
        Metric("bleu", bleu_score, higher_is_better=True),
        Metric("jaccard", jaccard_score, higher_is_better=True),
        Metric("seq_ratio", sequence_matcher_ratio, higher_is_better=True),
        Metric("strict", strict_verdict, higher_is_better=True),
        Metric("loose", loose_verdict, higher_is_better=True),
    )
}


def similarity_scores(
    generated: Sequence[Hashable], reference: Sequence[Hashable]
) -> dict[str, float | bool]:
    """All of :data:`METRICS` for one (generated, reference) pair, keyed by metric name."""
    return {name: m.fn(generated, reference) for name, m in METRICS.items()}

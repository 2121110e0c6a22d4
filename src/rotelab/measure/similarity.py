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
(Levenshtein), rouge-score (LCS), sacrebleu (BLEU).

Each metric is registered once, with :func:`register_similarity`, in
:data:`rotelab.registry.SIMILARITY`: its level (``"token"`` compares token sequences, ``"text"``
the decoded strings), whether it is a verdict (a bool, summarised as a rate with a confidence
interval) and its direction, which also goes to :data:`rotelab.registry.METRICS` (higher is
better = closer to the true text, i.e. more memorized). The result rows and the summaries of
extraction and reconstruction take their columns from the registry, so a registered metric
reaches both without a list of its own.

Example:
    >>> similarity_scores([5, 6, 7, 8], [5, 6, 9, 8])["levenshtein"]
    0.25
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Hashable, Sequence

from rotelab.registry import SIMILARITY, register_metric

__all__ = [
    "LOOSE_THRESHOLD",
    "bleu_score",
    "jaccard_score",
    "levenshtein_distance",
    "levenshtein_similarity",
    "loose_verdict",
    "register_similarity",
    "rouge_l_score",
    "sequence_matcher_ratio",
    "similarity_names",
    "similarity_scores",
    "strict_verdict",
]

#: Merullo et al.'s loose extraction threshold on 1 - d / L.
LOOSE_THRESHOLD = 0.75


def register_similarity(
    name: str, *, level: str = "token", higher_is_better: bool, verdict: bool = False
) -> Callable[[Callable], Callable]:
    """Decorator: register a similarity metric ``fn(generated, reference)`` under ``name``.

    Args:
        name: its column in result rows (``mean_<name>``, or ``<name>_rate`` for a verdict, in
            summaries).
        level: ``"token"`` (given token sequences) or ``"text"`` (given the decoded strings).
        higher_is_better: higher = closer to the true text; recorded in ``METRICS`` too.
        verdict: the metric returns a bool, summarised as a rate with a confidence interval.

    Example:
        >>> @register_similarity("same_len", higher_is_better=True, verdict=True)  # doctest: +SKIP
        ... def same_len(generated, reference):
        ...     return len(generated) == len(reference)
    """
    if level not in ("token", "text"):
        raise ValueError(f"similarity level must be 'token' or 'text', got {level!r}")

    def deco(fn: Callable) -> Callable:
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        register_metric(
            name, higher_is_better=higher_is_better, description=summary, scope="similarity"
        )
        SIMILARITY.add(name, fn, level=level, higher_is_better=higher_is_better, verdict=verdict)
        return fn

    return deco


@register_similarity("levenshtein", higher_is_better=False)
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


@register_similarity("rouge_l", higher_is_better=True)
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


@register_similarity("bleu", higher_is_better=True)
def bleu_score(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """Sentence BLEU in [0, 1] (sacrebleu, exponential smoothing); higher is better."""
    if not generated or not reference:
        return 0.0
    gen, ref = _symbols(generated, reference)
    return float(_bleu().sentence_score(gen, [ref]).score) / 100.0


@register_similarity("jaccard", higher_is_better=True)
def jaccard_score(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """|A ∩ B| / |A ∪ B| of the item sets; higher is better; 1 for two empty sequences."""
    a, b = set(generated), set(reference)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@register_similarity("seq_ratio", higher_is_better=True)
def sequence_matcher_ratio(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """difflib's ``2 * matches / (len(a) + len(b))``, no junk heuristic; higher is better."""
    return difflib.SequenceMatcher(None, list(generated), list(reference), autojunk=False).ratio()


@register_similarity("strict", higher_is_better=True, verdict=True)
def strict_verdict(generated: Sequence[Hashable], reference: Sequence[Hashable]) -> bool:
    """Merullo et al.'s strict extraction: the sequences are identical."""
    return list(generated) == list(reference)


@register_similarity("loose", higher_is_better=True, verdict=True)
def loose_verdict(
    generated: Sequence[Hashable],
    reference: Sequence[Hashable],
    threshold: float = LOOSE_THRESHOLD,
) -> bool:
    """Merullo et al.'s loose extraction: ``1 - d / L >= threshold`` (0.75)."""
    return levenshtein_similarity(generated, reference) >= threshold


def similarity_names(*, verdict: bool | None = None) -> list[str]:
    """The registered metrics' names (their result columns) in registration order; ``verdict``
    True or False keeps only the verdicts or only the scores."""
    if verdict is None:
        return SIMILARITY.names()
    return [e.name for e in SIMILARITY if e.meta.get("verdict", False) == verdict]


def similarity_scores(
    generated: Sequence[Hashable],
    reference: Sequence[Hashable],
    *,
    decode: Callable[[Sequence[Hashable]], str] | None = None,
) -> dict[str, float | bool]:
    """Every registered metric for one (generated, reference) pair, keyed by metric name.

    ``decode`` turns a token sequence into text (``lm.decode``) for the text-level metrics.
    """
    out: dict[str, float | bool] = {}
    texts: tuple[str, str] | None = None
    for entry in SIMILARITY:
        if entry.meta.get("level") == "text":
            if decode is None:
                raise ValueError(f"similarity metric {entry.name!r} compares text; pass decode")
            texts = texts or (decode(generated), decode(reference))
            out[entry.name] = entry.fn(*texts)
        else:
            out[entry.name] = entry.fn(generated, reference)
    return out

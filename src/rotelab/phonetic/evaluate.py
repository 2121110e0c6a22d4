"""APT variants against the filters (Roh et al. 2025, "Bob's Confetti"), and the defence's cost.

Three numbers, each a rate with a Wilson 95% interval (:func:`rotelab.stats.rate_with_ci`):

- ``apt_pass_rate``: of the best variants (rank 1 of each protected line the search can read),
  the share that is an APT variant in the paper's sense (phonetic similarity >=
  ``min_similarity``) **and** passes all three text filters
  (:class:`~rotelab.phonetic.filters.TextFilters`);
- ``apt_line_pass_rate``: of those lines, the share with such a variant among their first
  ``top`` (an attacker picks the one that passes);
- ``phonetic_catch_rate``: of all variants (every rank) with similarity >= ``min_similarity``,
  the share the :class:`~rotelab.phonetic.filters.PhoneticFilter` blocks;
- ``apt_pass_by_filter``: per text filter, the share of the best variants it lets through;
- ``phonetic_false_positive_rate``: of unrelated lines (not from the protected songs), the share
  it blocks.

The filters index the protected lines plus any ``filler`` lines (a stand-in catalogue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.phonetic.filters import PHONETIC_THRESHOLD, PhoneticFilter, TextFilters
from rotelab.phonetic.search import AptSearch
from rotelab.stats import rate_with_ci

__all__ = ["DefenceResult", "evaluate_defence"]


@dataclass
class DefenceResult:
    """Per-variant and per-unrelated-line filter answers, and the rates (with CIs)."""

    variants: pd.DataFrame
    unrelated: pd.DataFrame
    rates: dict[str, Any]


def evaluate_defence(
    search: AptSearch,
    protected: Sequence[str],
    unrelated: Sequence[str],
    *,
    filler: Sequence[str] = (),
    top: int = 10,
    min_similarity: float = PHONETIC_THRESHOLD,
    threshold: float = PHONETIC_THRESHOLD,
) -> DefenceResult:
    """Search APT variants of the protected lines and run every filter on them and on
    unrelated lines (see the module docstring for the rates).

    Args:
        search: the APT search.
        protected: lines the filters protect (variants are made of these).
        unrelated: lines from other songs (for the false-positive rate).
        filler: more lines for the filters' index (a larger catalogue).
        top: variants per protected line.
        min_similarity: the similarity a variant needs to count as an APT variant.
        threshold: the phonetic filter's blocking threshold.
    """
    if not protected or not unrelated:
        raise RotelabError("the defence needs protected lines and unrelated lines")
    rows = []
    for n, line in enumerate(protected):
        try:
            cands = search.candidates(line, top=top)
        except RotelabError:  # an unknown word or no content word: no variant to test
            continue
        rows += [{"line": n, "original": line, "rank": r, "variant": c.text, "score": c.score}
                 for r, c in enumerate(cands, 1)]  # fmt: skip
    variants = pd.DataFrame(rows, columns=["line", "original", "rank", "variant", "score"])
    index = [*protected, *filler]
    text, phon = TextFilters(index), PhoneticFilter(index, threshold=threshold)
    queries = variants["variant"].tolist()
    variants = pd.concat([variants, text.check(queries), phon.check(queries)], axis=1)
    variants["apt"] = variants["score"] >= min_similarity
    others = pd.DataFrame({"line": list(unrelated)})
    others = pd.concat([others, text.check(others["line"].tolist()),
                        phon.check(others["line"].tolist())], axis=1)  # fmt: skip
    apt = variants[variants["apt"]]
    evading = variants["apt"] & variants["passes_text"]
    first = variants[variants["rank"] == 1]
    rates = {
        **rate_with_ci(evading[variants["rank"] == 1].tolist()).as_dict(
            "apt_pass_rate", "apt_passing", "lines_with_variants"),
        **rate_with_ci(evading.groupby(variants["line"]).any().tolist()).as_dict(
            "apt_line_pass_rate", "lines_passing", "lines_with_variants"),
        **rate_with_ci(apt["blocked_phonetic"].tolist()).as_dict(
            "phonetic_catch_rate", "apt_caught", "apt_variants"),
        **rate_with_ci(others["blocked_phonetic"].tolist()).as_dict(
            "phonetic_false_positive_rate", "unrelated_blocked", "unrelated_lines"),
        **rate_with_ci((~others["passes_text"]).tolist()).as_dict(
            "text_false_positive_rate", "unrelated_text_blocked", "unrelated_lines"),
        # which filter stops the best variants: the share of them each one lets through
        "apt_pass_by_filter": {
            f: float((~first[f"blocked_{f}"]).mean()) for f in ("exact", "ngram", "fuzzy")
        },
        "index_lines": len(index), "min_similarity": min_similarity, "threshold": threshold,
    }  # fmt: skip
    return DefenceResult(variants, others, rates)

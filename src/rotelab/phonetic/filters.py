"""Text filters that guard generators against reproducing protected lyrics, and a phonetic one.

Roh et al. 2025 ("Bob's Confetti") show that APT variants pass the text filters services use;
the phonetic filter here is the defence the paper does not provide. Every filter takes the
protected lines once (an index) and then answers, for each query line, whether it is blocked.

The text filters, at the thresholds used here (fixed before any evaluation):

- **exact** (:class:`ExactFilter`): the query, normalized (lower case, words only), equals a
  protected line or a run of whole words inside one, or holds a whole protected line;
- **n-gram** (:class:`NgramFilter`): at least :data:`NGRAM_THRESHOLD` (50%) of the query's word
  3-grams (all its words if it has fewer than 3) occur in the protected text; 3-grams because
  lyric lines are short (document-level deduplication uses 8- to 13-grams);
- **fuzzy** (:class:`FuzzyFilter`): rapidfuzz ``fuzz.ratio`` of the normalized query and some
  protected line >= :data:`FUZZY_THRESHOLD` (80 of 100, the usual near-duplicate cut-off).

The **phonetic** filter (:class:`PhoneticFilter`) matches on phoneme sequences: protected lines
are indexed under sound keys (:func:`sound_keys`: the vowel skeleton; the syllable count with the
rhyme, with the first and with the last three vowels), the lines sharing most keys with a query are
shortlisted, and the query is blocked when its phonetic similarity to a shortlisted line is at
least the threshold (0.7 by default: the bar a variant must reach to count as an APT variant, so
the defence uses the attack's own notion of sounding alike). The keys are what a sung line keeps
(its vowels, meter and rhyme) and what APT's substitutions keep; a variant that changes its
syllable count *and* its rhyme *and* its outer vowels is not shortlisted (an adaptive attacker
could aim there, at a cost in similarity; that attack is not measured here). Words not in the
dictionary are left out of the sound; a query with no known word cannot be heard and is not
blocked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from rapidfuzz import fuzz, process

from rotelab.errors import RotelabError
from rotelab.phonetic.dictionary import Pronunciation, pronounce_word, tokenize
from rotelab.phonetic.similarity import similarity_score

__all__ = [
    "FUZZY_THRESHOLD",
    "NGRAM_THRESHOLD",
    "PHONETIC_THRESHOLD",
    "ExactFilter",
    "FuzzyFilter",
    "NgramFilter",
    "PhoneticFilter",
    "TextFilters",
    "normalize",
    "sound",
    "sound_keys",
]

NGRAM_THRESHOLD = 0.5
FUZZY_THRESHOLD = 80.0
PHONETIC_THRESHOLD = 0.7
_N = 3


def normalize(text: str) -> str:
    """Lower-cased words joined by single spaces (punctuation dropped)."""
    return " ".join(tokenize(text))


def sound(text: str) -> Pronunciation | None:
    """The known words' pronunciation of ``text`` (``None`` if no word is known)."""
    words = tokenize(text)
    arpabet = tuple(p for p in map(pronounce_word, words) if p is not None)
    return Pronunciation(tuple(words), arpabet) if arpabet else None


def sound_keys(s: Pronunciation) -> tuple[tuple, ...]:
    """The phonetic filter's index keys of a line: its vowel skeleton; its syllable count with
    its rhyme, with its first three vowels, and with its last three vowels."""
    n = s.syllables
    return (("v", s.vowels), ("r", n, s.rhyme), ("f", n, s.vowels[:3]), ("l", n, s.vowels[-3:]))


def _protected(lines: Iterable[str]) -> list[str]:
    norm = [n for n in map(normalize, lines) if n]
    if not norm:
        raise RotelabError("no protected line has a word; give the lyrics to protect")
    return norm


class ExactFilter:
    """Blocks a query equal to, inside (as whole words), or holding a protected line."""

    name = "exact"

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = _protected(lines)
        self._text = "\n" + "\n".join(f" {n} " for n in self.lines) + "\n"

    def blocked(self, query: str) -> bool:
        q = normalize(query)
        if not q:
            return False
        return f" {q} " in self._text or any(f" {n} " in f" {q} " for n in self.lines)


class NgramFilter:
    """Blocks a query whose word 3-grams are mostly (>= ``threshold``) in the protected text."""

    name = "ngram"

    def __init__(self, lines: Iterable[str], threshold: float = NGRAM_THRESHOLD) -> None:
        self.threshold = threshold
        self.grams: set[tuple[str, ...]] = set()
        for line in _protected(lines):
            words = line.split()
            for n in range(1, _N + 1):  # short queries are matched on all their words
                self.grams.update(zip(*(words[i:] for i in range(n))))

    def overlap(self, query: str) -> float:
        """Fraction of the query's n-grams found in the protected text."""
        words = normalize(query).split()
        if not words:
            return 0.0
        n = min(_N, len(words))
        grams = list(zip(*(words[i:] for i in range(n))))
        return sum(g in self.grams for g in grams) / len(grams)

    def blocked(self, query: str) -> bool:
        return self.overlap(query) >= self.threshold


class FuzzyFilter:
    """Blocks a query whose ``fuzz.ratio`` to some protected line is >= ``threshold``."""

    name = "fuzzy"

    def __init__(self, lines: Iterable[str], threshold: float = FUZZY_THRESHOLD) -> None:
        self.lines = _protected(lines)
        self.threshold = threshold

    def best(self, query: str) -> float:
        """The highest ratio to a protected line (0-100)."""
        hit = process.extractOne(normalize(query), self.lines, scorer=fuzz.ratio)
        return float(hit[1]) if hit else 0.0

    def blocked(self, query: str) -> bool:
        return self.best(query) >= self.threshold


class TextFilters:
    """The three text filters over the same protected lines."""

    def __init__(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        self.filters = (ExactFilter(lines), NgramFilter(lines), FuzzyFilter(lines))

    def check(self, queries: Sequence[str]) -> pd.DataFrame:
        """Per query: ``blocked_<name>`` for each filter and ``passes_text`` (none blocked)."""
        frame = pd.DataFrame(
            {f"blocked_{f.name}": [f.blocked(q) for q in queries] for f in self.filters}
        )
        frame["passes_text"] = ~frame.any(axis=1)
        return frame


class PhoneticFilter:
    """Blocks queries that sound like a protected line (see the module docstring).

    Args:
        lines: the protected lines.
        threshold: the phonetic similarity at which a query is blocked.
        shortlist: lines per query verified with the full similarity (those sharing the most
            sound keys with it).
        max_postings: a sound key shared by more lines than this is skipped (it tells little
            and would make every query slow).
    """

    def __init__(
        self,
        lines: Iterable[str],
        threshold: float = PHONETIC_THRESHOLD,
        shortlist: int = 3,
        max_postings: int = 200,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise RotelabError(f"the phonetic threshold must be in (0, 1], got {threshold}")
        if shortlist < 1 or max_postings < 1:
            raise RotelabError("shortlist and max_postings must each be >= 1")
        self.threshold, self.shortlist, self.max_postings = threshold, shortlist, max_postings
        self.lines: list[str] = []
        self.sounds: list[Pronunciation] = []
        self._postings: dict[tuple, list[int]] = {}
        for line in lines:
            s = sound(line)
            if s is None:
                continue
            for key in sound_keys(s):
                self._postings.setdefault(key, []).append(len(self.lines))
            self.lines.append(line)
            self.sounds.append(s)
        if not self.sounds:
            raise RotelabError("no protected line has a word of the CMU Pronouncing Dictionary")

    def match(self, query: str) -> tuple[float, str]:
        """The best similarity of ``query`` to a shortlisted protected line, and that line
        (``(nan, "")`` when the query has no known word or shares no key)."""
        s = sound(query)
        if s is None:
            return float("nan"), ""
        votes: Counter[int] = Counter()
        for key in sound_keys(s):
            post = self._postings.get(key)
            if post is not None and len(post) <= self.max_postings:
                votes.update(post)
        best, best_line = float("nan"), ""
        for j, _ in votes.most_common(self.shortlist):
            v = similarity_score(s, self.sounds[j])
            if not v <= best:  # also replaces the initial nan
                best, best_line = v, self.lines[j]
        return best, best_line

    def check(self, queries: Sequence[str]) -> pd.DataFrame:
        """Per query: ``blocked_phonetic``, the best ``phonetic_match`` (a protected line or ``""``)
        and its ``phonetic_similarity`` (NaN if the query has no known word or no shared key)."""
        found = [self.match(q) for q in queries]
        sim = np.array([f[0] for f in found], dtype=float)
        return pd.DataFrame({
            "blocked_phonetic": sim >= self.threshold,  # nan compares False: not blocked
            "phonetic_match": [f[1] for f in found],
            "phonetic_similarity": sim,
        })  # fmt: skip

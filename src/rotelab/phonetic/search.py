"""Adversarial PhoneTic Prompting (APT) search (Roh et al. 2025, "Bob's Confetti").

For a phrase or each line of a lyric, find word sequences that sound like it but mean something
else: every content word is replaced, alone or with its neighbour, by a dictionary word (or one
word by two) chosen for :func:`~rotelab.phonetic.similarity.phonetic_similarity`; function words
(:data:`FUNCTION_WORDS`) may stay. Candidates are ranked by their phonetic similarity to the
whole original line.

Meaning divergence is defined lexically (no semantic model is used, so this is a proxy):
a candidate shares no content word with the original line, none of its words has the stem
(:func:`stem`) of an original content word, and none is a respelling of one: the same consonant
letters in the same order (:func:`consonant_letters`: ``mum's`` for ``mom's``, ``color`` for
``colour``; ``tom's`` differs from ``mom's`` and is a new word). Similarity of whole lines in
spelling is left to the text filters, whose pass rate is what is measured;
no word is inside an original content word or holds one (``quaintance``, ``acquaintance``);
and no replaced span is an exact homophone of what it replaces (``lamme`` for ``lamb`` is a
respelling: the same sound is not a new sound-alike).

Speed comes from indexes built once over the vocabulary (all of CMUdict by default): words by
meter and assonance (stress pattern, hence syllable count, and vowel skeleton) and by rhyme; a
span's candidates are the words of its meter and rhyme buckets (so a replacement keeps the
span's vowels and stresses, or its rhyme), pre-ranked by phoneme edit similarity in rapidfuzz's
C code, then fully scored.
A beam over the line's positions joins the spans.

Two modes. The plain search (``max_fuzzy=None``) ranks by sound alone, so its best variants keep
much of the original's spelling (``tom's spaghetti``) and a fuzzy text filter catches many. The
**filter-aware** mode (``max_fuzzy=FUZZY_THRESHOLD``, ``rotelab apt --evade``) is the attack the
paper describes, one meant to get past text filters: it maximizes phonetic similarity subject to
spelling divergence, keeping only variants whose rapidfuzz ``fuzz.ratio`` to the original line
(normalized text) is below ``max_fuzzy``; because that discards the spelling-close variants the
plain ranking prefers, it keeps :data:`EVADE_BEAM` times the beam (fixed before any measurement).

Example:
    >>> apt = AptSearch()
    >>> [c.text for c in apt.candidates("mom's spaghetti", top=3)]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from rotelab.errors import RotelabError
from rotelab.phonetic.dictionary import (
    PHONE_CHAR,
    Pronunciation,
    cmu_dict,
    encode_word,
    pronounce,
    rhyme_of,
    tokenize,
)
from rotelab.phonetic.similarity import COMPONENTS, Similarity, similarity_of, similarity_score

__all__ = [
    "EVADE_BEAM",
    "FUNCTION_WORDS",
    "AptCandidate",
    "AptSearch",
    "consonant_letters",
    "content_words",
    "diverges",
    "stem",
]

#: Words that carry grammar rather than meaning; they may stay unchanged in a variant.
FUNCTION_WORDS = frozenset(
    """a an the and or but nor so yet if then than as at by for from in into of off on onto out
    over to up upon with without about above after before below between through under until
    i me my mine we us our ours you your yours he him his she her hers it its they them their
    theirs this that these those who whom whose which what when where why how there here
    am is are was were be been being do does did done have has had having will would shall
    should can could may might must not no nor all any each every some such own same too very
    just only also again once oh o o'er ye thee thou thy thine 'tis i'm i'll i've i'd you're
    you'll we're we'll they're it's that's there's don't won't can't let let's""".split()
)
#: The filter-aware mode's beam, as a multiple of the plain beam.
EVADE_BEAM = 4
_VOWEL_LETTERS = str.maketrans("", "", "aeiouy")
_VOWELS_ONLY = str.maketrans("", "", "".join(c for c in PHONE_CHAR.values() if c.islower()))
_ALPHA = re.compile(r"^[a-z]+(?:'[a-z]+)?$")
_SUFFIXES = ("'s", "s'", "ies", "es", "s", "ed", "ing", "ly", "er", "est")


def stem(word: str) -> str:
    """A crude stem: the word without its common inflections (``'s``, ``-ies`` -> ``-y``, ``-es``,
    ``-s``, ``-ed``, ``-ing``, ``-ly``, ``-er``, ``-est``, stripped while one ends it), never
    shorter than 3 letters (``togethers`` and ``together`` share ``togeth``)."""
    while True:
        for suf in _SUFFIXES:
            if word.endswith(suf) and len(word) - len(suf) >= 3:
                word = word[: -len(suf)] + ("y" if suf == "ies" else "")
                break
        else:
            return word


def consonant_letters(word: str) -> str:
    """The word's spelling without vowel letters (a, e, i, o, u, y): respellings share it."""
    return word.translate(_VOWEL_LETTERS)


def content_words(words: Iterable[str]) -> list[str]:
    """The words of ``words`` that are not :data:`FUNCTION_WORDS`."""
    return [w for w in words if w not in FUNCTION_WORDS]


def diverges(word: str, original_content: Sequence[str]) -> bool:
    """Whether ``word`` may replace content in a line whose content words are given: not one of
    them, not of the same stem, not a respelling (:func:`consonant_letters`), not inside one or
    holding one (4+ letters: ``quaintance`` in ``acquaintance``)."""
    s, c = stem(word), consonant_letters(word)
    for o in original_content:
        if word == o or s == stem(o) or c == consonant_letters(o):
            return False
        if min(len(word), len(o)) >= 4 and (word in o or o in word):
            return False
    return True


@dataclass(frozen=True)
class AptCandidate:
    """One phonetic variant of a line: its text, which words replaced which, its similarity."""

    text: str
    replacements: tuple[tuple[str, str], ...]
    similarity: Similarity

    @property
    def score(self) -> float:
        return self.similarity.score


@dataclass
class _Piece:
    """A span's replacement: the words put in and their similarity to the span."""

    words: tuple[str, ...]
    score: float


@dataclass(order=True)
class _Hyp:
    key: float
    pos: int = field(compare=False)
    pieces: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = field(compare=False)


class _Index:
    """The vocabulary's pronunciations and the meter and rhyme buckets over them."""

    def __init__(self, vocabulary: Iterable[str] | None) -> None:
        d = cmu_dict()
        words = d if vocabulary is None else {w: d[w] for w in vocabulary if w in d}
        self.words: list[str] = []
        self.arpabet: list[tuple[str, ...]] = []
        self.codes: list[str] = []
        self.syllables: list[int] = []
        self._pron: dict[int, Pronunciation] = {}
        meter: dict[tuple[int, str, str], list[int]] = {}
        rhyme: dict[str, list[int]] = {}
        for w, arpabet in words.items():
            # letters-only words of 2+ letters (CMUdict also lists letter names and abbreviations)
            if (len(w) < 2 and w not in ("a", "i")) or not _ALPHA.match(w):
                continue
            code, stress = encode_word(arpabet)
            i = len(self.words)
            self.words.append(w)
            self.arpabet.append(arpabet)
            self.codes.append(code)
            self.syllables.append(len(stress))
            meter.setdefault((stress, code.translate(_VOWELS_ONLY)), []).append(i)
            rhyme.setdefault(rhyme_of(code, stress), []).append(i)
        self.meter = {k: (v, [self.codes[i] for i in v]) for k, v in meter.items()}
        self.rhyme = rhyme
        self.by_syllables: dict[int, list[int]] = {}
        for i, n in enumerate(self.syllables):
            self.by_syllables.setdefault(n, []).append(i)

    def pron(self, i: int) -> Pronunciation:
        """Word ``i``'s pronunciation (made when first scored)."""
        p = self._pron.get(i)
        if p is None:
            p = self._pron[i] = Pronunciation((self.words[i],), (self.arpabet[i],))
        return p

    def pool(self, target: Pronunciation) -> tuple[list[int], list[str]]:
        """Words of the target's meter and vowels, plus words of its rhyme within one
        syllable."""
        ids, codes = self.meter.get((target.stress, target.vowels), ([], []))
        seen = set(ids)
        extra = [
            i for i in self.rhyme.get(target.rhyme, ())
            if i not in seen and abs(self.syllables[i] - target.syllables) <= 1
        ]  # fmt: skip
        return ids + extra, codes + [self.codes[i] for i in extra]


@functools.cache
def _default_index() -> _Index:
    return _Index(None)


def _split(p: Pronunciation) -> list[tuple[Pronunciation, Pronunciation]]:
    """The ways to cut a pronunciation in two at syllable boundaries (consonants between two
    vowels go half left, the larger half right, as English syllables prefer onsets)."""
    flat = [ph for w in p.arpabet for ph in w]
    vowels = [i for i, ph in enumerate(flat) if ph[-1].isdigit()]
    cuts = []
    for a, b in zip(vowels, vowels[1:]):
        cut = a + 1 + (b - a - 1) // 2
        left, right = tuple(flat[:cut]), tuple(flat[cut:])
        cuts.append((Pronunciation(("",), (left,)), Pronunciation(("",), (right,))))
    return cuts


class AptSearch:
    """APT candidates for phrases and lyrics (the indexes are built once per vocabulary).

    Args:
        vocabulary: words the variants may use (default: every letters-only CMUdict word);
            e.g. a list of common words for more natural variants.
        per_span: replacement candidates kept per span (and per split of a word in two).
        pool: candidates pre-ranked by phoneme edit similarity before full scoring.
        beam: partial variants kept while joining spans.
        max_fuzzy: the filter-aware mode: keep only variants whose ``fuzz.ratio`` to the
            original line is below this (``FUZZY_THRESHOLD``: what the fuzzy filter lets
            through); ``None`` (default): rank by sound alone.
    """

    def __init__(
        self,
        vocabulary: Iterable[str] | None = None,
        *,
        per_span: int = 12,
        pool: int = 60,
        beam: int = 64,
        max_fuzzy: float | None = None,
    ) -> None:
        if min(per_span, pool, beam) < 1:
            raise RotelabError("per_span, pool and beam must each be >= 1")
        if max_fuzzy is not None and not 0 < max_fuzzy <= 100:
            raise RotelabError(f"max_fuzzy must be in (0, 100], got {max_fuzzy}")
        self.max_fuzzy = max_fuzzy
        beam = beam * EVADE_BEAM if max_fuzzy is not None else beam
        self.index = _default_index() if vocabulary is None else _Index(vocabulary)
        if not self.index.words:
            raise RotelabError("the vocabulary has no word of the CMU Pronouncing Dictionary")
        self.per_span, self.pool, self.beam = per_span, pool, beam
        self._cache: dict[tuple, list[_Piece]] = {}

    # ------------------------------------------------------------------ one span
    def _single(self, target: Pronunciation, content: tuple[str, ...]) -> list[_Piece]:
        key = ("1", target.arpabet, content)
        if key in self._cache:
            return self._cache[key]
        ids, codes = self.index.pool(target)
        ranked = process.extract(
            target.code, codes, scorer=Levenshtein.normalized_similarity,
            limit=min(len(codes), self.pool * 4),
        )  # fmt: skip
        scored = []
        for _, _, j in ranked:
            i = ids[j]
            w = self.index.words[i]
            if diverges(w, content) and codes[j] != target.code:
                scored.append(_Piece((w,), similarity_score(target, self.index.pron(i))))
            if len(scored) >= self.pool:
                break
        out = heapq.nlargest(self.per_span, scored, key=lambda c: c.score)
        self._cache[key] = out
        return out

    def _pieces(self, words: Sequence[str], content: tuple[str, ...]) -> list[_Piece]:
        """Replacements for a span of original words: one word, or two for one word."""
        key = ("span", tuple(words), content)
        if key in self._cache:
            return self._cache[key]
        target = pronounce(words, strict=True)
        pieces = self._single(target, content)
        if len(words) == 1 and target.syllables >= 2:
            for left, right in _split(target):
                lc, rc = self._single(left, content)[:4], self._single(right, content)[:4]
                for a in lc:
                    for b in rc:
                        joined = pronounce((*a.words, *b.words))
                        if joined.code == target.code:
                            continue
                        pieces.append(_Piece((*a.words, *b.words),
                                             similarity_score(target, joined)))  # fmt: skip
            pieces = heapq.nlargest(self.per_span * 2, pieces, key=lambda c: c.score)
        self._cache[key] = pieces
        return pieces

    # ------------------------------------------------------------------ one line
    def candidates(self, line: str, *, top: int = 10) -> list[AptCandidate]:
        """Ranked APT variants of one line (best first; at most ``top``).

        Raises:
            RotelabError: the line has no words, or a word not in the dictionary (see
                :mod:`rotelab.phonetic.dictionary`'s policy), or no content word to replace.
        """
        original = pronounce(line, strict=True)
        words = original.words
        content = tuple(dict.fromkeys(content_words(words)))
        if not content:
            raise RotelabError(f"{line[:60]!r} has only function words; nothing to replace")
        syll = [pronounce((w,)).syllables for w in words]
        beam = [_Hyp(0.0, 0, ())]
        finished: list[_Hyp] = []
        while beam:
            nxt: list[_Hyp] = []
            for h in beam:
                if h.pos == len(words):
                    finished.append(h)
                    continue
                w = words[h.pos]
                if w in FUNCTION_WORDS:
                    nxt.append(_Hyp(h.key - syll[h.pos], h.pos + 1,
                                    (*h.pieces, ((w,), (w,)))))  # fmt: skip
                for span in (1, 2):
                    span_words = tuple(words[h.pos : h.pos + span])
                    if len(span_words) < span or not content_words(span_words):
                        continue
                    n = sum(syll[h.pos : h.pos + span])
                    for piece in self._pieces(span_words, content):
                        nxt.append(_Hyp(h.key - n * piece.score, h.pos + span,
                                        (*h.pieces, (span_words, piece.words))))  # fmt: skip
            # every hypothesis in nxt may sit at another position: rank by score per syllable
            # covered so far, so short and long prefixes compare fairly
            beam = heapq.nsmallest(self.beam, nxt, key=lambda h: h.key / max(sum(syll[: h.pos]), 1))
        return self._rank(original, finished, content, top)

    def _rank(self, original: Pronunciation, finished: list[_Hyp], content, top: int):
        seen, out = set(), []
        spelled = " ".join(original.words)
        for h in finished:
            new_words = tuple(x for _, new in h.pieces for x in new)
            if new_words in seen or any(w in content for w in new_words):
                continue
            if self.max_fuzzy is not None and (
                fuzz.ratio(" ".join(new_words), spelled) >= self.max_fuzzy
            ):  # the filter-aware mode: spelled too close to pass the fuzzy filter
                continue
            seen.add(new_words)
            reps = tuple((" ".join(o), " ".join(n)) for o, n in h.pieces if o != n)
            sim = similarity_of(original, pronounce(new_words))
            out.append(AptCandidate(" ".join(new_words), reps, sim))
        out.sort(key=lambda c: (-c.score, c.text))
        return out[:top]

    # ------------------------------------------------------------------ a lyric
    def lyric(self, lines: Iterable[str], *, top: int = 10) -> pd.DataFrame:
        """Candidates for every line of a lyric, as a frame: ``line`` (0-based), ``original``,
        ``rank`` (1 = best), ``variant``, ``replacements``, ``score`` and every component.

        Lines with an unknown word or without content words get one row with ``rank`` 0, an
        empty variant and the ``skipped`` reason (so the table says why nothing was offered).
        """
        rows = []
        for n, line in enumerate(lines):
            if not tokenize(line):
                continue
            try:
                cands = self.candidates(line, top=top)
            except RotelabError as exc:
                rows.append({"line": n, "original": line, "rank": 0, "variant": "",
                             "replacements": "", "score": float("nan"),
                             **{c: float("nan") for c in COMPONENTS},
                             "skipped": str(exc)})  # fmt: skip
                continue
            for r, c in enumerate(cands, 1):
                rows.append({"line": n, "original": line, "rank": r, "variant": c.text,
                             "replacements": "; ".join(f"{o} -> {x}" for o, x in c.replacements),
                             "score": c.score, **{k: getattr(c.similarity, k) for k in COMPONENTS},
                             "skipped": ""})  # fmt: skip
        return pd.DataFrame(rows)

    def rank_of(
        self, line: str, variant: str, *, depth: int = 1000
    ) -> tuple[float, int | None, int]:
        """Where a given variant stands: its similarity to ``line``, its rank among the search's
        first ``depth`` candidates (``None`` if the search did not produce it) and how many of
        those score higher (a lower bound on its rank when it was not produced)."""
        score = similarity_of(pronounce(line, strict=True), pronounce(variant, strict=True)).score
        cands = self.candidates(line, top=depth)
        texts = [c.text for c in cands]
        target = " ".join(tokenize(variant))
        rank = texts.index(target) + 1 if target in texts else None
        return score, rank, sum(c.score > score + 1e-12 for c in cands)

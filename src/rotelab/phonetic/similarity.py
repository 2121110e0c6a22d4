"""Phonetic similarity of two phrases, component by component (Roh et al. 2025, APT scoring).

The paper scores homophonic substitutions by phoneme-sequence match, rhyme of the last phonemes,
syllable count, stress pattern and vowel overlap; there is no official code, so each component is
defined here and reported on its own, and the combination is a fixed, documented weighted mean.

Components, each in [0, 1], 1 = the same:

- ``phonemes``: 1 - Levenshtein(phonemes) / max(lengths) (stress ignored);
- ``rhyme``: the same edit similarity on the rhymes (last stressed vowel onward);
- ``syllables``: 1 - |n_a - n_b| / max(n_a, n_b);
- ``stress``: edit similarity of the stress patterns (one ``0``/``1`` per syllable);
- ``vowels``: edit similarity of the vowel skeletons;
- ``cv``: edit similarity of the consonant-vowel skeletons.

Combination (:data:`WEIGHTS`): 0.35 phonemes + 0.20 rhyme + 0.10 syllables + 0.10 stress +
0.15 vowels + 0.10 cv. The full phoneme match carries the most weight; rhyme and vowels, which a
sung line keeps audible, come next; syllables, stress and the CV skeleton are the meter. The
weights are a design choice, not fitted to anything (every component is returned, so another
weighting is a one-liner).

Example:
    >>> s = phonetic_similarity("mom's spaghetti", "bob's confetti")
    >>> round(s.score, 2), s.rhyme, s.syllables
    (0.79, 1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rapidfuzz.distance import Levenshtein

from rotelab.phonetic.dictionary import Pronunciation, pronounce

__all__ = [
    "COMPONENTS",
    "WEIGHTS",
    "Similarity",
    "phonetic_similarity",
    "similarity_of",
    "similarity_score",
]

#: Weight of each component in :attr:`Similarity.score` (they sum to 1).
WEIGHTS: dict[str, float] = {
    "phonemes": 0.35, "rhyme": 0.20, "syllables": 0.10, "stress": 0.10, "vowels": 0.15, "cv": 0.10,
}  # fmt: skip
COMPONENTS: tuple[str, ...] = tuple(WEIGHTS)

_sim = Levenshtein.normalized_similarity


@dataclass(frozen=True)
class Similarity:
    """Every component of the phonetic similarity of two phrases, and their weighted mean."""

    phonemes: float
    rhyme: float
    syllables: float
    stress: float
    vowels: float
    cv: float

    @property
    def score(self) -> float:
        """The combined similarity, :data:`WEIGHTS`' weighted mean of the components."""
        return sum(w * getattr(self, k) for k, w in WEIGHTS.items())

    def as_dict(self) -> dict[str, float]:
        """The components and ``score``."""
        return {**asdict(self), "score": self.score}


def _components(a: Pronunciation, b: Pronunciation) -> tuple[float, ...]:
    """The components in :data:`COMPONENTS` order."""
    na, nb = a.syllables, b.syllables
    return (
        _sim(a.code, b.code),
        _sim(a.rhyme, b.rhyme),
        1.0 - abs(na - nb) / max(na, nb, 1),
        _sim(a.stress, b.stress),
        _sim(a.vowels, b.vowels),
        _sim(a.cv, b.cv),
    )


_W = tuple(WEIGHTS.values())


def similarity_of(a: Pronunciation, b: Pronunciation) -> Similarity:
    """The components for two pronunciations (known words only; see :func:`pronounce`)."""
    return Similarity(*_components(a, b))


def similarity_score(a: Pronunciation, b: Pronunciation) -> float:
    """:attr:`Similarity.score` of two pronunciations, without building the components' object
    (the filters call this per candidate line)."""
    c = _components(a, b)
    return c[0] * _W[0] + c[1] * _W[1] + c[2] * _W[2] + c[3] * _W[3] + c[4] * _W[4] + c[5] * _W[5]


def phonetic_similarity(a: str | Pronunciation, b: str | Pronunciation) -> Similarity:
    """Phonetic similarity of two phrases (strings are pronounced with :func:`pronounce`;
    unknown words are left out of the sound, as that function's policy says)."""
    pa = a if isinstance(a, Pronunciation) else pronounce(a)
    pb = b if isinstance(b, Pronunciation) else pronounce(b)
    return similarity_of(pa, pb)

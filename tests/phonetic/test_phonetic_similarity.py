"""rotelab.phonetic.similarity: each component against a brute-force edit distance."""

from __future__ import annotations

import math

import pytest

from rotelab.phonetic.dictionary import pronounce
from rotelab.phonetic.similarity import (
    COMPONENTS,
    WEIGHTS,
    phonetic_similarity,
    similarity_score,
)


def _lev(a, b) -> int:
    """Textbook dynamic-programming Levenshtein distance over any two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _sim(a, b) -> float:
    return 1 - _lev(a, b) / max(len(a), len(b), 1)


PAIRS = [
    ("mom's spaghetti", "bob's confetti"),
    ("twinkle twinkle little star", "sprinkle wrinkle brittle car"),
    ("the cat sat on the mat", "a dog ran to the park"),
    ("amazing grace", "a raisin race"),
]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_components_match_a_brute_force_reference(a, b):
    pa, pb = pronounce(a), pronounce(b)
    s = phonetic_similarity(a, b)
    assert math.isclose(s.phonemes, _sim(pa.phones, pb.phones))
    vowels_a = [x for x in pa.phones if x[0] in "AEIOU"]
    vowels_b = [x for x in pb.phones if x[0] in "AEIOU"]
    assert math.isclose(s.vowels, _sim(vowels_a, vowels_b))
    assert math.isclose(s.stress, _sim(pa.stress, pb.stress))
    assert math.isclose(
        s.syllables, 1 - abs(pa.syllables - pb.syllables) / max(pa.syllables, pb.syllables)
    )
    assert math.isclose(s.rhyme, _sim(pa.rhyme, pb.rhyme))
    assert math.isclose(s.score, sum(WEIGHTS[k] * getattr(s, k) for k in COMPONENTS))
    assert math.isclose(s.score, similarity_score(pa, pb))
    # symmetric
    assert phonetic_similarity(b, a).as_dict() == pytest.approx(s.as_dict())


def test_identity_is_one_and_sound_alikes_beat_unrelated_lines():
    assert phonetic_similarity("mom's spaghetti", "mom's spaghetti").score == pytest.approx(1.0)
    assert math.isclose(sum(WEIGHTS.values()), 1.0)
    alike = phonetic_similarity("mom's spaghetti", "bob's confetti")
    unrelated = phonetic_similarity("mom's spaghetti", "the cat sat on the mat")
    assert alike.rhyme == 1.0 and alike.syllables == 1.0 and alike.stress == 1.0
    assert alike.score > 0.7 > unrelated.score

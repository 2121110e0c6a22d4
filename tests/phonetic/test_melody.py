"""rotelab.phonetic.melody: the note vocabulary, the two similarities (DTW against brute force)
and the syllable melodies."""

from __future__ import annotations

import itertools
import random

import pytest

from rotelab.errors import RotelabError
from rotelab.phonetic.melody import (
    MELODY_TOKENS,
    Note,
    format_melody,
    melody_tokens,
    midi,
    note_edit_similarity,
    notes_from_tokens,
    parse_melody,
    pitch_dtw_similarity,
    syllable_melody,
)


def test_vocabulary_is_small_and_parses_both_ways():
    assert len(MELODY_TOKENS) == 45 and len(set(MELODY_TOKENS)) == 45
    notes = parse_melody("C4:4 F#4:8. R:2 B5:16")
    assert notes == (Note("C4", "d4"), Note("F#4", "d8."), Note("R", "d2"), Note("B5", "d16"))
    assert parse_melody(format_melody(notes)) == notes
    assert midi("C4") == 60 and midi("A4") == 69 and midi("R") is None


@pytest.mark.parametrize("bad", ["C4", "H4:4", "C4:3", "C9:4", "Bb4:4", "c4:4", "C4:4:4"])
def test_unknown_tokens_are_refused(bad):
    with pytest.raises(RotelabError, match="unknown token"):
        parse_melody(f"C4:4 {bad}")


def test_generated_tokens_end_at_the_first_non_melody_token():
    toks = ["C4", "d4", "D4", "d8", "E4", "d2", "<eos>", "G4", "d4"]
    assert notes_from_tokens(toks) == parse_melody("C4:4 D4:8 E4:2")
    # a pitch without its duration and a stray duration are not notes
    assert notes_from_tokens(["C4", "D4", "d4", "d8", "E4"]) == parse_melody("D4:4")


def test_edit_similarity():
    a = parse_melody("C4:4 D4:4 E4:4 F4:4")
    assert note_edit_similarity(a, a) == 1.0
    assert note_edit_similarity(a, parse_melody("C4:4 D4:4 E4:8 F4:4")) == pytest.approx(0.75)
    assert note_edit_similarity(a, parse_melody("C4:4 D4:4")) == pytest.approx(0.5)
    assert note_edit_similarity((), ()) == 1.0 and note_edit_similarity(a, ()) == 0.0


def _brute_dtw(x: list[int], y: list[int]) -> float:
    """The symmetric DTW by enumerating every monotone warping path."""
    best = float("inf")
    n, m = len(x), len(y)

    def walk(i, j, acc):
        nonlocal best
        if i == n - 1 and j == m - 1:
            best = min(best, acc)
            return
        if i + 1 < n:
            walk(i + 1, j, acc + min(abs(x[i + 1] - y[j]), 12) / 12)
        if j + 1 < m:
            walk(i, j + 1, acc + min(abs(x[i] - y[j + 1]), 12) / 12)
        if i + 1 < n and j + 1 < m:
            walk(i + 1, j + 1, acc + 2 * min(abs(x[i + 1] - y[j + 1]), 12) / 12)

    # the first cell counts twice, as a diagonal step from the origin
    walk(0, 0, 2 * min(abs(x[0] - y[0]), 12) / 12)
    return 1 - best / (n + m)


def test_dtw_equals_brute_force():
    rng = random.Random(0)
    names = ["C4", "D4", "E4", "G4", "A4", "C5", "E5", "C3"]
    for _ in range(25):
        a = [rng.choice(names) for _ in range(rng.randint(1, 5))]
        b = [rng.choice(names) for _ in range(rng.randint(1, 5))]
        notes_a = tuple(Note(p, "d4") for p in a)
        notes_b = tuple(Note(p, "d8") for p in b)
        want = _brute_dtw([midi(p) for p in a], [midi(p) for p in b])
        assert pitch_dtw_similarity(notes_a, notes_b) == pytest.approx(want)


def test_dtw_forgives_repeats_and_rhythm_but_not_pitch():
    a = parse_melody("C4:4 E4:4 G4:4")
    assert pitch_dtw_similarity(a, parse_melody("C4:8 C4:8 E4:2 G4:4 G4:4")) == 1.0
    assert pitch_dtw_similarity(parse_melody("C3:4 E3:4 G3:4"), parse_melody("C5:4 G5:4")) == 0.0
    assert 0 < pitch_dtw_similarity(a, parse_melody("C5:4 E5:4 G5:4")) < 0.5
    assert pitch_dtw_similarity(a, parse_melody("R:4")) == 0.0


def test_syllable_melodies_are_reproducible_and_aligned():
    for n in (1, 4, 9, 17):
        m = syllable_melody("Mary had a little lamb", n, seed=3)
        assert len(m) == n and m[-1].duration == "d2"
        assert m == syllable_melody("Mary had a little lamb", n, seed=3)
        assert all(60 <= midi(x.pitch) <= 79 for x in m)
        assert all(abs(midi(a.pitch) - midi(b.pitch)) <= 4 for a, b in itertools.pairwise(m))
    assert syllable_melody("a line", 8, seed=0) != syllable_melody("a line", 8, seed=1)
    assert melody_tokens(parse_melody("C4:4 D4:8")) == ["C4", "d4", "D4", "d8"]

"""Melodies as note tokens, melodic similarity, and syllable-aligned melodies for lyric lines.

Roh et al. 2025 ("Bob's Confetti: Phonetic Memorization Attacks in Music and Video Generation")
hear lyrics-to-song models regenerate a memorized melody when prompted with sound-alike lyrics
(APT) and judge it by melodic similarity. This module is the symbolic side of that measurement:
a small documented token vocabulary for melodies, two melodic similarities, and reproducible
melodies for lyric lines (real melodies cannot ship).

**The vocabulary** (:data:`PITCHES`, :data:`DURATIONS`): a note is two tokens, a pitch and a
duration. Pitches are ``C3`` .. ``B5`` in sharps (``C#4``; 36 pitches) and ``R`` (a rest);
durations are ``d1`` (whole), ``d2``, ``d4``, ``d8``, ``d16`` and dotted ``d2.``, ``d4.``, ``d8.``.
45 tokens in all. In a melody file a note is written ``PITCH:DURATION`` (``C4:4``, ``F#4:8.``,
``R:2``), notes separated by spaces; anything else is an unknown token and is refused
(:func:`parse_melody`).

**Similarities** (both in [0, 1], 1 = the same melody):

- :func:`note_edit_similarity`: ``1 - Levenshtein / max(len)`` over the note sequences, a note
  being its (pitch, duration) pair (the note-sequence edit distance the paper's melodic
  comparison rests on);
- :func:`pitch_dtw_similarity`: dynamic time warping over the pitch contours (MIDI numbers, rests
  dropped), local cost ``min(|a - b|, 12) / 12`` (an octave or more is as wrong as it gets), the
  symmetric step weights of Sakoe and Chiba (a diagonal step counts its cost twice), normalized by
  ``len(a) + len(b)``; it forgives rhythm and repeated notes, and scores the contour.

**Melodies for lyrics** (:func:`syllable_melody`): one note per syllable, as in a syllabic song
setting; a seeded random walk on the C-major scale from C4 to G5 in steps of at most a third,
durations drawn from eighth to half notes, the last note held (a half note). The melody is a
pure function of the line and the seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

from rotelab.errors import RotelabError

__all__ = [
    "DURATIONS",
    "MELODY_TOKENS",
    "PITCHES",
    "REST",
    "Note",
    "format_melody",
    "melody_tokens",
    "midi",
    "note_edit_similarity",
    "notes_from_tokens",
    "parse_melody",
    "pitch_dtw_similarity",
    "syllable_melody",
]

_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: Pitch tokens: C3 .. B5 (sharps), then the rest.
REST = "R"
PITCHES: tuple[str, ...] = (*(f"{n}{o}" for o in (3, 4, 5) for n in _NAMES), REST)
#: Duration tokens (1 = whole note; a trailing dot adds half).
DURATIONS: tuple[str, ...] = ("d1", "d2", "d4", "d8", "d16", "d2.", "d4.", "d8.")
#: Every melody token, pitches first.
MELODY_TOKENS: tuple[str, ...] = (*PITCHES, *DURATIONS)
_PITCH_SET, _DUR_SET = frozenset(PITCHES), frozenset(DURATIONS)
_MIDI = {p: 12 * (int(p[-1]) + 1) + _NAMES.index(p[:-1]) for p in PITCHES if p != REST}
# C major from C4 (MIDI 60) to G5 (79): the range of the generated melodies
_SCALE = [60, 62, 64, 65, 67, 69, 71, 72, 74, 76, 77, 79]
_STEPS, _STEP_P = (-2, -1, 0, 1, 2), (0.15, 0.3, 0.1, 0.3, 0.15)
_BODY_DURS, _BODY_P = ("d8", "d4", "d4.", "d2"), (0.3, 0.45, 0.1, 0.15)


@dataclass(frozen=True)
class Note:
    """A pitch token (``C4``, ``R``) and a duration token (``d4``)."""

    pitch: str
    duration: str

    def __str__(self) -> str:
        return f"{self.pitch}:{self.duration[1:]}"


def midi(pitch: str) -> int | None:
    """The MIDI number of a pitch token (``C4`` = 60); ``None`` for a rest."""
    return _MIDI.get(pitch)


def parse_melody(text: str, *, where: str = "melody") -> tuple[Note, ...]:
    """Notes written ``PITCH:DURATION`` separated by spaces (``"C4:4 D4:8 R:2"``).

    Raises:
        RotelabError: no note, or a token that is not a note of the vocabulary (named, with the
            vocabulary it must come from).
    """
    notes = []
    for tok in text.split():
        pitch, sep, dur = tok.partition(":")
        if not sep or pitch not in _PITCH_SET or f"d{dur}" not in _DUR_SET:
            raise RotelabError(
                f"{where}: unknown token {tok[:20]!r}; a note is PITCH:DURATION with PITCH in "
                f"C3..B5 (sharps, e.g. F#4) or R and DURATION in 1 2 4 8 16 2. 4. 8."
            )
        notes.append(Note(pitch, f"d{dur}"))
    if not notes:
        raise RotelabError(f"{where}: no notes; write notes as PITCH:DURATION (C4:4 D4:8)")
    return tuple(notes)


def format_melody(notes: Sequence[Note]) -> str:
    """The file spelling of ``notes`` (inverse of :func:`parse_melody`)."""
    return " ".join(map(str, notes))


def melody_tokens(notes: Sequence[Note]) -> list[str]:
    """The model's tokens of ``notes``: pitch, duration, pitch, duration, ..."""
    return [t for n in notes for t in (n.pitch, n.duration)]


def notes_from_tokens(tokens: Sequence[str]) -> tuple[Note, ...]:
    """Notes read from generated tokens: up to the first token that is not a melody token (the
    end of the melody), pairing each pitch with the duration that follows it; a pitch without a
    duration, or a duration without a pitch, is dropped (a malformed note is not a note)."""
    notes, pitch = [], None
    for t in tokens:
        if t in _PITCH_SET:
            pitch = t
        elif t in _DUR_SET:
            if pitch is not None:
                notes.append(Note(pitch, t))
            pitch = None
        else:
            break
    return tuple(notes)


def note_edit_similarity(a: Sequence[Note], b: Sequence[Note]) -> float:
    """``1 - Levenshtein(a, b) / max(len(a), len(b))`` over notes (1.0 for two empty melodies)."""
    if not a and not b:
        return 1.0
    return float(Levenshtein.normalized_similarity(list(a), list(b)))


def pitch_dtw_similarity(a: Sequence[Note], b: Sequence[Note]) -> float:
    """``1 - DTW / (len(a) + len(b))`` over the pitch contours (rests dropped; see the module
    docstring); 1.0 for two melodies without pitches, 0.0 when only one has none."""
    x = np.array([m for n in a if (m := midi(n.pitch)) is not None], dtype=np.float64)
    y = np.array([m for n in b if (m := midi(n.pitch)) is not None], dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        return float(len(x) == len(y))
    cost = np.minimum(np.abs(x[:, None] - y[None, :]), 12.0) / 12.0  # (len x, len y)
    acc = np.full((len(x) + 1, len(y) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            c = cost[i - 1, j - 1]
            acc[i, j] = min(acc[i - 1, j] + c, acc[i, j - 1] + c, acc[i - 1, j - 1] + 2 * c)
    return float(1.0 - acc[-1, -1] / (len(x) + len(y)))


def _rng(line: str, seed: int) -> random.Random:
    # a digest, not hash(): Python salts str hashes per process
    digest = hashlib.sha256(f"{seed}\x00{line}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def syllable_melody(line: str, syllables: int, *, seed: int = 0) -> tuple[Note, ...]:
    """A reproducible melody for a lyric line: one note per syllable (see the module docstring).

    Raises:
        ValueError: fewer than one syllable.
    """
    if syllables < 1:
        raise ValueError("a melody needs at least one syllable")
    rng = _rng(line, seed)
    deg = rng.choice((0, 2, 4))
    notes = []
    for k in range(syllables):
        if k:
            deg = min(max(deg + rng.choices(_STEPS, _STEP_P)[0], 0), len(_SCALE) - 1)
        dur = "d2" if k == syllables - 1 else rng.choices(_BODY_DURS, _BODY_P)[0]
        m = _SCALE[deg]
        notes.append(Note(f"{_NAMES[m % 12]}{m // 12 - 1}", dur))
    return tuple(notes)

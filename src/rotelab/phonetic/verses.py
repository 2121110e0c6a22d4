"""A small set of public-domain verses shipped as package data (``verses/public_domain.txt``).

Nursery rhymes, hymns, songs and poems first published before 1929 (titles, authors and years
in the file), used by ``rotelab apt``'s examples, its filter evaluation and the tests. They stand
in for the copyrighted lyrics of Roh et al. 2025, which cannot ship.

Example:
    >>> verses = public_domain_verses()
    >>> verses[0].title, verses[0].lines[0]
    ('Twinkle, Twinkle, Little Star', 'Twinkle, twinkle, little star,')
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

__all__ = ["Verse", "parse_verses", "public_domain_verses", "synthetic_lines"]


@dataclass(frozen=True)
class Verse:
    """One song or poem excerpt: where it comes from and its lines."""

    title: str
    author: str
    year: int
    lines: tuple[str, ...]


def parse_verses(text: str) -> list[Verse]:
    """Verses from text: a ``# title | author | year`` header, then lines, blank lines between."""
    verses, head, lines = [], None, []
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if line.startswith("#"):
            head = [part.strip() for part in line[1:].split("|")]
        elif line:
            lines.append(line)
        elif head is not None and lines:
            verses.append(Verse(head[0], head[1], int(head[2]), tuple(lines)))
            head, lines = None, []
    return verses


@functools.cache
def public_domain_verses() -> tuple[Verse, ...]:
    """The shipped verses, in file order."""
    text = resources.files("rotelab.phonetic").joinpath("verses/public_domain.txt").read_text()
    return tuple(parse_verses(text))


def synthetic_lines(source: Iterable[str], n: int, *, seed: int = 0) -> list[str]:
    """``n`` lyric-like lines from a word-bigram chain over ``source`` lines (seeded).

    They fill a filter's index out to the size of a real catalogue (1,000 songs) when real songs
    cannot ship: same words and rhythm of speech as the source, new word orders. Lines are 4 to
    10 words long; a chain that reaches a word with no successor restarts from a line start.
    """
    import random

    from rotelab.phonetic.dictionary import tokenize

    rng = random.Random(seed)
    starts, nxt = [], {}
    for line in source:
        words = tokenize(line)
        if words:
            starts.append(words[0])
            for a, b in zip(words, words[1:]):
                nxt.setdefault(a, []).append(b)
    if not starts:
        raise ValueError("synthetic_lines needs source lines with words")
    out = []
    for _ in range(n):
        length = rng.randint(4, 10)
        words = [rng.choice(starts)]
        while len(words) < length:
            follow = nxt.get(words[-1])
            words.append(rng.choice(follow) if follow else rng.choice(starts))
        out.append(" ".join(words))
    return out

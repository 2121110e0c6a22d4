"""rotelab.phonetic.verses: the shipped public-domain verses and the synthetic catalogue."""

from __future__ import annotations

from rotelab.phonetic.dictionary import tokenize
from rotelab.phonetic.verses import parse_verses, public_domain_verses, synthetic_lines


def test_the_shipped_verses_are_public_domain_and_whole():
    verses = public_domain_verses()
    assert len(verses) >= 20
    for v in verses:
        assert v.year < 1929, v.title  # published before 1929: public domain in the US
        assert v.title and v.author and len(v.lines) >= 4


def test_parse_verses_reads_headers_and_blocks():
    text = "# A | B | 1900\none\ntwo\n\n# C | D | 1901\nthree\n"
    got = parse_verses(text)
    assert [(v.title, v.year, v.lines) for v in got] == [
        ("A", 1900, ("one", "two")),
        ("C", 1901, ("three",)),
    ]


def test_synthetic_lines_are_seeded_and_made_of_the_source_words():
    source = [line for v in public_domain_verses()[:4] for line in v.lines]
    words = {w for line in source for w in tokenize(line)}
    a, b = synthetic_lines(source, 50, seed=3), synthetic_lines(source, 50, seed=3)
    assert a == b and a != synthetic_lines(source, 50, seed=4)
    assert all(4 <= len(line.split()) <= 10 and set(line.split()) <= words for line in a)

"""rotelab.phonetic.dictionary: CMUdict pronunciations, the suffix rule, explicit unknowns."""

from __future__ import annotations

import pytest

from rotelab.errors import RotelabError
from rotelab.phonetic.dictionary import (
    PHONE_CHAR,
    cmu_dict,
    pronounce,
    pronounce_word,
    rhyme_of,
    tokenize,
)


def test_a_phrase_is_its_words_phonemes_in_order():
    p = pronounce("Mom’s spaghetti!")  # typographic apostrophe, punctuation, capitals
    assert p.words == ("mom's", "spaghetti")
    assert p.phones == ("M", "AA", "M", "Z", "S", "P", "AH", "G", "EH", "T", "IY")
    assert p.stress == "1010" and p.syllables == 4
    assert p.vowels == "".join(PHONE_CHAR[v] for v in ("AA", "AH", "EH", "IY"))
    assert p.cv == "CVCCCCVCVCV"
    # the rhyme runs from the last stressed vowel (EH of -ghetti) to the end
    assert p.rhyme == "".join(PHONE_CHAR[x] for x in ("EH", "T", "IY"))
    assert p.code == "".join(PHONE_CHAR[x] for x in p.phones) and p.known


def test_rhyme_without_a_stressed_vowel_starts_at_the_last_vowel():
    a, e = PHONE_CHAR["AH"], PHONE_CHAR["IY"]
    code = f"{a}t{e}"  # two unstressed vowels
    assert rhyme_of(code, "00") == f"{e}"
    assert rhyme_of(code, "10") == code
    assert rhyme_of("s", "") == "s"


def test_the_suffix_rule_follows_english_voicing():
    d = cmu_dict()
    for word, base, tail in [
        ("confetti's", "confetti", ("Z",)),  # after a vowel: Z
        ("spaghettis", "spaghetti", ("Z",)),
        ("quagmire's", "quagmire", ("Z",)),
    ]:
        if word in d:
            pytest.skip(f"{word} is in this CMUdict; the rule is not needed")
        assert pronounce_word(word) == (*d[base], *tail)
    # after a sibilant the suffix is a syllable (IH0 Z), after a voiceless stop it is S
    sib = next(w for w, p in d.items() if p[-1] == "SH" and w.isalpha() and w + "'s" not in d)
    stop = next(w for w, p in d.items() if p[-1] == "K" and w.isalpha() and w + "'s" not in d)
    assert pronounce_word(sib + "'s")[-2:] == ("IH0", "Z")
    assert pronounce_word(stop + "'s")[-1] == "S"


def test_unknown_words_are_listed_not_guessed():
    p = pronounce("the zqxv cat")
    assert p.unknown == ("zqxv",) and not p.known
    assert p.phones == pronounce("the cat").phones  # left out of the sound
    with pytest.raises(RotelabError, match="'zqxv' is not in the CMU"):
        pronounce("the zqxv cat", strict=True)


@pytest.mark.parametrize(
    ("text", "message"), [("", "has no words"), ("?! ...", "has no words"),
                          ("zqxv brrkt", "no word of")],
)  # fmt: skip
def test_phrases_that_cannot_be_heard_are_refused(text, message):
    with pytest.raises(RotelabError, match=message):
        pronounce(text)


def test_tokenize_keeps_inner_apostrophes_only():
    assert tokenize("Don't stop -- 'twas O'er the hills!") == [
        "don't", "stop", "twas", "o'er", "the", "hills"
    ]  # fmt: skip

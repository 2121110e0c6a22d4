"""Phonetics for memorization attacks and defences (Roh et al. 2025, "Bob's Confetti: Phonetic
Memorization Attacks in Music and Video Generation").

- :mod:`~rotelab.phonetic.dictionary`: CMUdict lookup and the out-of-dictionary policy;
- :mod:`~rotelab.phonetic.similarity`: phonetic similarity of two phrases, by component;
- :mod:`~rotelab.phonetic.search`: the APT search (sound-alike, meaning-divergent variants);
- :mod:`~rotelab.phonetic.filters`: the text filters services use, and a phonetic filter;
- :mod:`~rotelab.phonetic.evaluate`: APT variants against the filters;
- :mod:`~rotelab.phonetic.verses`: public-domain verses shipped for examples and tests;
- :mod:`~rotelab.phonetic.melody`: melodies as note tokens and melodic similarity;
- :mod:`~rotelab.phonetic.melody_organism`: lyric -> melody models and melody recovery from APT
  prompts (imports torch; not re-exported here);
- :mod:`~rotelab.phonetic.recall`: next-line recall of a language model from APT prompts.
"""

from rotelab.phonetic.dictionary import Pronunciation, cmu_dict, pronounce, tokenize
from rotelab.phonetic.evaluate import DefenceResult, evaluate_defence
from rotelab.phonetic.filters import (
    FUZZY_THRESHOLD,
    NGRAM_THRESHOLD,
    PHONETIC_THRESHOLD,
    ExactFilter,
    FuzzyFilter,
    NgramFilter,
    PhoneticFilter,
    TextFilters,
)
from rotelab.phonetic.melody import (
    Note,
    note_edit_similarity,
    parse_melody,
    pitch_dtw_similarity,
    syllable_melody,
)
from rotelab.phonetic.search import AptCandidate, AptSearch
from rotelab.phonetic.similarity import WEIGHTS, Similarity, phonetic_similarity, similarity_of
from rotelab.phonetic.verses import Verse, public_domain_verses, synthetic_lines

__all__ = [
    "FUZZY_THRESHOLD",
    "NGRAM_THRESHOLD",
    "PHONETIC_THRESHOLD",
    "WEIGHTS",
    "AptCandidate",
    "AptSearch",
    "DefenceResult",
    "ExactFilter",
    "FuzzyFilter",
    "NgramFilter",
    "Note",
    "PhoneticFilter",
    "Pronunciation",
    "Similarity",
    "TextFilters",
    "Verse",
    "cmu_dict",
    "evaluate_defence",
    "note_edit_similarity",
    "parse_melody",
    "phonetic_similarity",
    "pitch_dtw_similarity",
    "pronounce",
    "public_domain_verses",
    "similarity_of",
    "syllable_melody",
    "synthetic_lines",
    "tokenize",
]

"""rotelab.phonetic.filters: the text filters at their thresholds, the phonetic filter against
brute force, and the defence's rates against their frames."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rotelab.errors import RotelabError
from rotelab.phonetic.evaluate import evaluate_defence
from rotelab.phonetic.filters import (
    ExactFilter,
    FuzzyFilter,
    NgramFilter,
    PhoneticFilter,
    TextFilters,
    sound,
)
from rotelab.phonetic.search import AptSearch
from rotelab.phonetic.similarity import similarity_score
from rotelab.phonetic.verses import public_domain_verses, synthetic_lines

PROTECTED = ["Twinkle, twinkle, little star,", "How I wonder what you are!"]


def test_exact_filter_matches_whole_words_only():
    f = ExactFilter(PROTECTED)
    assert f.blocked("twinkle TWINKLE little star")
    assert f.blocked("little star")  # a run of whole words inside a protected line
    assert f.blocked("oh twinkle twinkle little star, yes")  # holds a protected line
    assert not f.blocked("le star")  # not whole words
    assert not f.blocked("dinkel dinkel bittel skaar")


def test_ngram_filter_counts_trigrams():
    f = NgramFilter(PROTECTED)
    # 4 words -> 2 trigrams, one of them protected
    assert f.overlap("twinkle twinkle little car") == 0.5
    assert f.blocked("twinkle twinkle little car")
    assert f.overlap("sprinkle twinkle little car") == 0.0
    assert f.overlap("little star") == 1.0  # short queries use all their words
    assert not f.blocked("wonder about the stars tonight")


def test_fuzzy_filter_threshold_is_80():
    f = FuzzyFilter(PROTECTED)
    assert f.best("twinkle twinkle little star") == 100.0
    assert f.blocked("twinkle twinkle litle star")  # a typo
    assert not f.blocked("dinkel dinkel bittel skaar")
    queries = ["twinkle twinkle little star", "dinkel dinkel bittel skaar"]
    frame = TextFilters(PROTECTED).check(queries)
    assert list(frame["passes_text"]) == [False, True]


@pytest.fixture(scope="module")
def catalogue():
    verses = public_domain_verses()
    lines = [line for v in verses[0::2] for line in v.lines]
    return lines, lines + synthetic_lines(lines, 3000, seed=0)


def test_phonetic_filter_never_beats_brute_force_and_finds_protected_lines(catalogue):
    protected, index = catalogue
    f = PhoneticFilter(index)
    queries = protected[:15] + synthetic_lines(protected, 15, seed=7)
    frame = f.check(queries)
    for q, got in zip(queries, frame["phonetic_similarity"]):
        s = sound(q)
        brute = max(similarity_score(s, t) for t in f.sounds)
        assert got <= brute + 1e-12
    # a protected line is its own best match
    assert np.allclose(frame["phonetic_similarity"][:15], 1.0)
    assert frame["blocked_phonetic"][:15].all()
    unknown = f.check(["zqxv brrkt"])
    assert not unknown["blocked_phonetic"][0] and math.isnan(unknown["phonetic_similarity"][0])
    with pytest.raises(RotelabError, match="threshold"):
        PhoneticFilter(index, threshold=0)


def test_defence_rates_are_the_frames_counts(catalogue):
    protected, index = catalogue
    verses = public_domain_verses()
    unrelated = [line for v in verses[1::2] for line in v.lines][:20]
    search = AptSearch()
    r = evaluate_defence(search, protected[:8], unrelated, filler=index[len(protected) :], top=3)
    v = r.variants
    first = v[v["rank"] == 1]
    assert r.rates["lines_with_variants"] == len(first)
    assert r.rates["apt_passing"] == int(((first["score"] >= 0.7) & first["passes_text"]).sum())
    apt = v[v["score"] >= 0.7]
    assert r.rates["apt_variants"] == len(apt)
    assert r.rates["apt_caught"] == int(apt["blocked_phonetic"].sum())
    assert r.rates["unrelated_blocked"] == int(r.unrelated["blocked_phonetic"].sum())
    lo, hi = r.rates["phonetic_catch_rate_ci"]
    assert lo <= r.rates["phonetic_catch_rate"] <= hi
    # a variant caught is caught for sounding like its own line (not a random one)
    caught = apt[apt["blocked_phonetic"]]
    assert (caught["phonetic_similarity"] >= 0.7).all()

"""rotelab.phonetic.search: APT variants sound alike, share no content, are ranked by score."""

from __future__ import annotations

import pytest

from rotelab.errors import RotelabError
from rotelab.phonetic.dictionary import cmu_dict, pronounce
from rotelab.phonetic.search import AptSearch, content_words, diverges, stem
from rotelab.phonetic.similarity import phonetic_similarity

#: A small vocabulary: fast to index, and it holds the paper's example and its rivals.
VOCAB = (
    "bob's tom's bombs palms psalms calm confetti machete betty petty sweaty jetty yeti "
    "lamb ram jam lam slam clam ham little brittle whittle skittle star car far bar jar are "
    "twinkle sprinkle wrinkle crinkle tinkle spa ghetti get tea and the a of mom mom's moms mum's "
    "spaghetti lamme"
).split()


@pytest.fixture(scope="module")
def small() -> AptSearch:
    return AptSearch(VOCAB, per_span=40, beam=2000)  # wide: the small space searched whole


def test_variants_share_no_content_and_are_ranked_by_their_own_similarity(small):
    line = "twinkle twinkle little star"
    cands = small.candidates(line, top=20)
    assert cands, "no candidate"
    originals = content_words(pronounce(line).words)
    for c in cands:
        words = c.text.split()
        assert not set(words) & set(originals)
        assert all(diverges(w, originals) for w in content_words(words))
        # the score is the similarity of the whole variant to the whole line
        assert c.score == pytest.approx(phonetic_similarity(line, c.text).score)
        assert [o for o, _ in c.replacements]  # something was replaced
    scores = [c.score for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert len({c.text for c in cands}) == len(cands)


def test_bobs_confetti_is_found_and_ranked_by_sound(small):
    cands = {c.text: c.score for c in small.candidates("mom's spaghetti", top=2000)}
    assert "bob's confetti" in cands
    # tom's is one phoneme nearer to mom's than bob's is: it must rank higher
    assert cands["tom's confetti"] > cands["bob's confetti"]
    # spellings and forms of the original's words never appear
    for text in cands:
        assert not {"mom", "moms", "mum's", "spaghetti", "mom's"} & set(text.split())
    score, rank, better = small.rank_of("mom's spaghetti", "bob's confetti", depth=2000)
    assert rank == better + 1 + sum(  # ties ahead of it sort by text
        1 for t, s in cands.items() if abs(s - score) < 1e-12 and t < "bob's confetti"
    )


def test_exact_homophones_are_not_variants(small):
    # "lamme" sounds exactly like "lamb" in CMUdict: a respelling, not a sound-alike
    assert cmu_dict()["lamme"] == cmu_dict()["lamb"]
    texts = [c.text for c in small.candidates("lamb", top=50)]
    assert texts and "lamme" not in texts


def test_divergence_rules():
    assert not diverges("mum's", ["mom's"])  # a respelling
    assert not diverges("color", ["colour"])
    assert diverges("tom's", ["mom's"])  # another word
    assert not diverges("moms", ["mom's"])  # same stem
    assert not diverges("mom's", ["mom's"])
    assert diverges("bob's", ["mom's"])
    assert stem("parties") == "party" and stem("jumped") == "jump" and stem("cat") == "cat"
    assert stem("togethers") == stem("together")
    assert not diverges("quaintance", ["acquaintance"])


def test_lines_that_cannot_be_searched(small):
    with pytest.raises(RotelabError, match="not in the CMU"):
        small.candidates("twinkle zqxv star")
    with pytest.raises(RotelabError, match="only function words"):
        small.candidates("and the of")
    frame = small.lyric(["twinkle twinkle little star", "", "twinkle zqxv star"], top=3)
    skipped = frame[frame["rank"] == 0]
    assert list(skipped["line"]) == [2] and "zqxv" in skipped["skipped"].iloc[0]
    assert list(frame[frame["rank"] > 0]["rank"]) == [1, 2, 3]


def test_the_full_dictionary_search_is_deterministic():
    a, b = AptSearch(VOCAB), AptSearch(list(reversed(VOCAB)))
    line = "mom's spaghetti"
    assert [c.text for c in a.candidates(line)] == [c.text for c in b.candidates(line)]

"""Each similarity metric against a case computed by hand."""

from __future__ import annotations

import pytest

from rotelab.measure.similarity import (
    bleu_score,
    jaccard_score,
    levenshtein_distance,
    loose_verdict,
    register_similarity,
    rouge_l_score,
    sequence_matcher_ratio,
    similarity_names,
    similarity_scores,
    strict_verdict,
)
from rotelab.registry import METRICS, SIMILARITY, direction

REF = [1, 2, 3, 4, 5, 6, 7, 8]
GEN = [1, 2, 3, 4, 9, 6, 7, 8]  # one substitution


def test_levenshtein_normalised_by_length():
    assert levenshtein_distance(GEN, REF) == pytest.approx(1 / 8)
    # one deletion and one insertion: [1,3,4,x] vs [1,2,3,4] -> d = 2 over max length 4
    assert levenshtein_distance([1, 3, 4, 9], [1, 2, 3, 4]) == pytest.approx(2 / 4)
    assert levenshtein_distance([], []) == 0.0


def test_rouge_l_is_lcs_f1():
    # LCS of [1,2,3,4] and [1,3,2,4] has length 3: P = R = 3/4, F1 = 3/4
    assert rouge_l_score([1, 3, 2, 4], [1, 2, 3, 4]) == pytest.approx(0.75)
    # different lengths: gen [1,2] vs ref [1,2,3,4]: P = 1, R = 1/2, F1 = 2/3
    assert rouge_l_score([1, 2], [1, 2, 3, 4]) == pytest.approx(2 / 3)


def test_bleu_geometric_mean_of_ngram_precisions():
    # precisions 7/8, 5/7, 3/6, 1/5, brevity penalty 1 -> (7/8*5/7*1/2*1/5)^(1/4) = 0.5
    assert bleu_score(GEN, REF) == pytest.approx(0.5, abs=1e-9)
    assert bleu_score(REF, REF) == pytest.approx(1.0)


def test_jaccard_and_sequence_matcher():
    # sets {1..8} vs {1,2,3,4,6,7,8,9}: 7 shared of 9
    assert jaccard_score(GEN, REF) == pytest.approx(7 / 9)
    # 7 matching items: 2*7/16
    assert sequence_matcher_ratio(GEN, REF) == pytest.approx(14 / 16)


def test_strict_and_loose_verdicts():
    assert strict_verdict(REF, REF) and not strict_verdict(GEN, REF)
    assert loose_verdict(GEN, REF)  # 1 - 1/8 >= 0.75
    three_wrong = [1, 2, 3, 0, 0, 0, 7, 8]  # 1 - 3/8 = 0.625
    assert not loose_verdict(three_wrong, REF)
    assert loose_verdict([1, 2, 0, 0, 5, 6, 7, 8], REF)  # exactly 0.75


def test_works_on_words_and_declares_directions():
    words = "the cat sat on the mat".split()
    other = "the cat sat on a mat".split()
    s = similarity_scores(other, words)
    assert s["levenshtein"] == pytest.approx(1 / 6)
    assert list(s) == SIMILARITY.names() == similarity_names()
    assert similarity_names(verdict=True) == ["strict", "loose"]
    assert direction("levenshtein", "similarity") is False
    assert all(
        direction(m, "similarity") for m in ("rouge_l", "bleu", "jaccard", "seq_ratio", "strict")
    )
    assert SIMILARITY["levenshtein"].fn is levenshtein_distance
    assert {e.meta["level"] for e in SIMILARITY} == {"token"}


@pytest.fixture
def toy_text_metric():
    """A text-level metric, registered for one test and removed after it."""

    @register_similarity("toy_chars", level="text", higher_is_better=True)
    def toy_chars(generated: str, reference: str) -> float:
        """Characters the two texts share at the same position, over the reference's length."""
        return sum(a == b for a, b in zip(generated, reference)) / max(len(reference), 1)

    yield "toy_chars"
    SIMILARITY.remove("toy_chars")
    METRICS.remove("similarity.toy_chars")


def test_a_registered_text_metric_is_given_decoded_text(toy_text_metric):
    decode = "".join  # items are characters here
    s = similarity_scores(list("abcd"), list("abxd"), decode=decode)
    assert s[toy_text_metric] == 0.75 and s["levenshtein"] == 0.25
    assert direction(toy_text_metric, "similarity") is True
    with pytest.raises(ValueError, match="pass decode"):
        similarity_scores([1, 2], [1, 2])


def test_register_refuses_a_bad_level_and_a_second_direction():
    with pytest.raises(ValueError, match="level"):
        register_similarity("x", level="chars", higher_is_better=True)
    with pytest.raises(ValueError, match="both directions"):
        register_similarity("levenshtein", higher_is_better=True)(lambda g, r: 0.0)

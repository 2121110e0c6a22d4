"""Pass@k(m) against brute force: the mean over every k-subset of the n samples."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from rotelab.errors import RotelabError
from rotelab.measure.passk import (
    PassCounts,
    check_km,
    pass_at_k,
    pass_at_k_table,
    problem_set,
)
from rotelab.registry import direction


def brute_force(n: int, c: int, k: int, m: int) -> Fraction:
    """The share of all k-subsets of n samples (the first c passing) with >= m passes."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    good = sum(sum(outcomes[i] for i in s) >= m for s in subsets)
    return Fraction(good, len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_equals_enumeration_of_all_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            for m in range(1, k + 1):
                exact = brute_force(n, c, k, m)
                assert pass_at_k(n, c, k, m) == pytest.approx(float(exact), abs=1e-15), (n, c, k, m)


def test_plain_pass_at_k_is_the_codex_formula():
    # Chen et al. 2021's numerically stable form: 1 - prod_{i=n-c+1}^{n} (1 - k / i)
    for n, c, k in [(20, 3, 5), (200, 17, 10), (100, 0, 1), (50, 50, 7)]:
        codex = 1.0 if n - c < k else 1 - float(np.prod(1 - k / np.arange(n - c + 1, n + 1)))
        assert pass_at_k(n, c, k) == pytest.approx(codex, rel=1e-12)


def test_large_n_is_exact_where_floats_would_fail():
    # C(2000, 1000) overflows a float; the exact sum is still correctly rounded
    n, c, k, m = 2000, 1000, 1000, 500
    value = pass_at_k(n, c, k, m)
    terms = sum(math.comb(c, j) * math.comb(n - c, k - j) for j in range(m, k + 1))
    assert value == float(Fraction(terms, math.comb(n, k)))
    assert 0.5 < value < 1.0  # symmetric around 500: a little over half
    # a tiny probability keeps its digits: every draw must be one of the c passing ones
    assert pass_at_k(200, 100, 100, 100) == pytest.approx(1 / math.comb(200, 100), rel=1e-12)
    assert pass_at_k(1000, 999, 999, 999) == pytest.approx(1 / 1000, rel=1e-12)


def test_monotone_in_m_and_in_c():
    for m in range(1, 5):
        assert pass_at_k(10, 4, 5, m) >= pass_at_k(10, 4, 5, m + 1)
    for c in range(10):
        assert pass_at_k(10, c, 5, 3) <= pass_at_k(10, c + 1, 5, 3)


def test_table_means_over_problems_with_different_n():
    counts = PassCounts.from_samples(
        ["a"] * 5 + ["b"] * 8, [1, 1, 0, 0, 1] + [0, 0, 0, 1, 0, 0, 0, 0]
    )
    assert counts.problems == ["a", "b"] and list(counts.n) == [5, 8] and list(counts.c) == [3, 1]
    table, per = pass_at_k_table(counts, [1, 3], [1, 2], n_boot=200, seed=1)
    assert list(zip(table.k, table.m)) == [(1, 1), (3, 1), (3, 2)]  # (1, 2) is impossible
    row = table.set_index(["k", "m"]).loc[(3, 2)]
    expected = (float(brute_force(5, 3, 3, 2)) + float(brute_force(8, 1, 3, 2))) / 2
    assert row.pass_at_k == pytest.approx(expected)
    assert row.ci_low <= row.pass_at_k <= row.ci_high
    assert per["pass@1(1)"].tolist() == pytest.approx([3 / 5, 1 / 8])


def test_bootstrap_ci_is_seeded_and_shrinks_with_more_problems():
    rng = np.random.default_rng(0)

    def counts(p):
        c = rng.integers(0, 11, size=p)
        return PassCounts.from_counts([f"t/{i}" for i in range(p)], [10] * p, c)

    small, large = counts(20), counts(500)
    t1, _ = pass_at_k_table(small, [5], [3], seed=3)
    t2, _ = pass_at_k_table(small, [5], [3], seed=3)
    assert t1.equals(t2)
    t3, _ = pass_at_k_table(large, [5], [3], seed=3)
    assert (t3.ci_high - t3.ci_low)[0] < (t1.ci_high - t1.ci_low)[0]


def test_bad_k_m_and_counts():
    counts = PassCounts.from_counts(["x", "y"], [4, 10], [1, 2])
    with pytest.raises(RotelabError, match="larger than every --k"):
        check_km([2], [3])
    with pytest.raises(RotelabError, match="'x'"):
        check_km([5], [1], counts)  # k = 5 > n = 4 of problem x
    with pytest.raises(RotelabError, match="k must be >= 1"):
        check_km([0], [1])
    with pytest.raises(RotelabError, match="m must be >= 1"):
        check_km([3], [-1])
    with pytest.raises(RotelabError, match="0 <= c <= n"):
        PassCounts.from_counts(["x"], [3], [4])
    with pytest.raises(RotelabError, match="0 <= c <= n"):
        PassCounts.from_counts(["x"], [-3], [0])
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4, 1)


def test_problem_sets_and_direction():
    assert problem_set("HumanEval/12") == "HumanEval"
    assert problem_set("Mbpp/3") == "Mbpp"
    assert problem_set("a/b/7") == "a/b"
    assert problem_set("17") == ""
    assert direction("pass_at_k") is True


def test_sample_completions_batches_the_n_samples_of_a_problem(tiny_lm, monkeypatch):
    from rotelab.lm import GREEDY, Sampler
    from rotelab.measure.passk import sample_completions

    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    batches = []
    decode = type(tiny_lm)._decode

    def spy(self, ids, *args, **kwargs):
        batches.append(ids.tolist())
        return decode(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(tiny_lm), "_decode", spy)
    out = sample_completions(tiny_lm, prompts, 3, 5, sampler=Sampler(temperature=1.0), seed=2,
                             batch_size=7)  # fmt: skip
    assert [len(o) for o in out] == [3, 3, 3, 3] and all(len(s) == 5 for o in out for s in o)
    # batch 7 rounds down to 6 = two problems; a problem's 3 copies are rows of one batch
    assert [len(b) for b in batches] == [6, 6]
    for rows in batches:
        real = [tuple(t for t in r if t != tiny_lm.pad_id) for r in rows]
        assert real[0] == real[1] == real[2] and real[3] == real[4] == real[5]
    again = sample_completions(tiny_lm, prompts, 3, 5, sampler=Sampler(temperature=1.0), seed=2,
                               batch_size=7)  # fmt: skip
    assert again == out
    assert any(len({tuple(s) for s in o}) > 1 for o in out)  # samples of a problem differ
    # greedy: every sample is the prompt's own unbatched greedy continuation
    monkeypatch.setattr(type(tiny_lm), "_decode", decode)
    greedy = sample_completions(tiny_lm, prompts, 2, 5, sampler=GREEDY)
    for p, o in zip(prompts, greedy):
        alone = tiny_lm.generate([p], 5)[0]
        assert o == [alone, alone]

"""Bounds of Kim, Moon and Yun 2025: values, regimes, monotonicity, validation."""

from __future__ import annotations

import math

import pytest

from rotelab.errors import RotelabError
from rotelab.theory import (
    UPPER_CONSTANT,
    lower_bound,
    non_robust_order,
    upper_bound,
    upper_regime,
)


def test_lower_bound_matches_theorem_3_1_by_hand():
    # N=100, d=4, rho=0.6: (0.36*4 + 1)*4 + min(1/0.8, 2)*10 = 9.76 + 12.5
    assert lower_bound(100, 4, 0.6) == pytest.approx(9.76 + 12.5)
    # min{N, d} and min{1/sqrt(1-rho^2), sqrt(d)} switch sides: N=3 < d=16, rho=0.999
    expected = (0.999**2 * 3 + 1) * 16 + min(1 / math.sqrt(1 - 0.999**2), 4.0) * math.sqrt(3)
    assert lower_bound(3, 16, 0.999) == pytest.approx(expected)
    assert lower_bound(100, 4, 0.6, constant=3.0) == pytest.approx(3 * (9.76 + 12.5))


def test_lower_bound_grows_with_rho():
    values = [lower_bound(200, 8, r) for r in (0.01, 0.2, 0.5, 0.8, 0.99)]
    assert values == sorted(values) and values[-1] > 2 * values[0]


def test_regimes_and_their_boundaries():
    n, d = 100, 4
    small_end, moderate_end = 1 / (5 * n * 2), 1 / (5 * 2)
    assert upper_regime(n, d, small_end).name == "small"
    assert upper_regime(n, d, small_end * 1.01).name == "moderate"
    assert upper_regime(n, d, moderate_end).name == "moderate"
    assert upper_regime(n, d, moderate_end * 1.01).name == "large"
    # small rho: the non-robust cost; the moderate order meets sqrt(N) at its lower boundary
    assert upper_bound(n, d, small_end / 2) == pytest.approx(non_robust_order(n, d))
    mid_start = upper_bound(n, d, small_end * (1 + 1e-12)) - d
    assert mid_start == pytest.approx(math.sqrt(n) / math.sqrt(5), rel=1e-6)
    # largest regime reaches N d^2 as rho -> 1
    assert upper_bound(n, d, 0.999999) == pytest.approx(d + n * d**2, rel=1e-5)


def test_regimes_name_the_parts_of_theorem_4_2():
    """The paper states the upper bound as one theorem in three parts; only part (ii) allows an
    arbitrarily small robust-memorization error (its ReLU construction is continuous)."""
    n, d = 100, 4
    small, moderate, large = (upper_regime(n, d, r) for r in (1e-5, 0.05, 0.5))
    assert [r.theorem.split(",")[0] for r in (small, moderate, large)] == [
        "Thm 4.2(i)",
        "Thm 4.2(ii)",
        "Thm 4.2(iii)",
    ]
    assert (small.exact, moderate.exact, large.exact) == (True, False, True)
    # the intervals tile (0, 1): each regime starts where the previous one ends
    assert small.rho_high == moderate.rho_low and moderate.rho_high == large.rho_low
    assert (small.rho_low, large.rho_high) == (0.0, 1.0)


def test_smallest_regime_is_tight_as_the_paper_says():
    """Theorem 4.2(i) matches Theorem 3.1 for rho <= 1/(5 N sqrt(d)) (the paper's conclusion):
    with both bare expressions the ratio is 1 up to the lower bound's rho-dependent terms, which
    vanish there; a wrong small-regime order (e.g. N instead of sqrt(N)) fails this."""
    for n in (2, 50, 10**4, 10**6):
        for d in (1, 16, 10**4):
            edge = 1 / (5 * n * math.sqrt(d))
            for rho in (edge * 1e-3, edge / 2, edge):
                ratio = upper_bound(n, d, rho) / lower_bound(n, d, rho)
                assert 0.98 < ratio <= 1.0  # rho <= 0.1 here, so 1/sqrt(1 - rho^2) < 1.006


def test_upper_bound_increases_within_each_regime():
    n, d = 100, 4
    for lo, hi in ((1e-4, 0.1), (0.11, 0.99)):
        grid = [lo + (hi - lo) * k / 20 for k in range(21)]
        vals = [upper_bound(n, d, r) for r in grid]
        assert vals == sorted(vals)


def _grid():
    """N up to 10^6, d up to 10^4, rho log-spaced plus both regime boundaries and just above."""
    for n in (1, 2, 7, 50, 584, 3_000, 10**5, 10**6):
        for d in (1, 2, 3, 16, 64, 1_000, 10**4):
            edges = (1 / (5 * n * math.sqrt(d)), 1 / (5 * math.sqrt(d)))
            rhos = [10 ** (-8 + 8 * k / 60) * 0.9999 for k in range(61)]
            rhos += [e * f for e in edges for f in (1.0, 1 + 1e-9, 1.01)]
            for rho in rhos:
                if 0 < rho < 1:
                    yield n, d, rho


def test_upper_bound_never_below_lower_bound_with_the_documented_constants():
    """As orders the upper bound must dominate the lower one: their ratio (both constant 1)
    stays under a fixed constant, here 16 (UPPER_CONSTANT), on a wide grid. A wrong exponent
    fails this as N or d grows (e.g. rho instead of rho^(1/2) in the moderate regime gives
    lower / upper ~ sqrt(N) at its lower boundary)."""
    worst = 0.0
    for n, d, rho in _grid():
        low = lower_bound(n, d, rho)
        assert upper_bound(n, d, rho, constant=UPPER_CONSTANT) >= low
        worst = max(worst, low / upper_bound(n, d, rho))
    # the documented supremum (13.03, at d = 1, N = 584 just above rho = 1/(5 sqrt d)) is hit
    assert 12.5 < worst <= 13.1


def test_adjacent_regimes_meet_in_order_at_their_boundaries():
    """sqrt(N) where moderate starts, N where it hands over to large: the ratios of the two
    sides are constants independent of N and d (the same order), not growing with them."""
    ratios_low, ratios_high = set(), set()
    for n in (10, 1_000, 10**6):
        for d in (1, 16, 10**4):
            b0, b1 = 1 / (5 * n * math.sqrt(d)), 1 / (5 * math.sqrt(d))
            small = upper_bound(n, d, b0) - d
            moderate_start = upper_bound(n, d, b0 * (1 + 1e-12)) - d
            moderate_end = upper_bound(n, d, b1) - d
            large_start = upper_bound(n, d, b1 * (1 + 1e-12)) - d
            ratios_low.add(round(moderate_start / small, 6))
            ratios_high.add(round(moderate_end / large_start, 3))
            assert moderate_end == pytest.approx(n / math.sqrt(5))
    assert ratios_low == {round(1 / math.sqrt(5), 6)}  # sqrt(N/5) against sqrt(N)
    assert ratios_high == {round(625 / math.sqrt(5), 3)}  # N/sqrt(5) against N/625


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5, float("nan"), "abc"])
def test_rho_outside_open_interval_is_refused(rho):
    with pytest.raises(RotelabError, match="rho"):
        lower_bound(10, 2, rho)
    with pytest.raises(RotelabError, match="rho"):
        upper_bound(10, 2, rho)


@pytest.mark.parametrize(
    ("n", "d", "match"), [(0, 2, "N"), (-3, 2, "N"), (5, 0, "d"), (5, -1, "d")]
)
def test_n_and_d_must_be_positive(n, d, match):
    with pytest.raises(RotelabError, match=match):
        lower_bound(n, d, 0.5)


def test_classes_below_two_refused():
    with pytest.raises(RotelabError, match="classes"):
        upper_bound(10, 2, 0.5, classes=1)

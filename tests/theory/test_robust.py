"""Bounds of Kim, Moon and Yun 2025: values, regimes, monotonicity, validation."""

from __future__ import annotations

import math

import pytest

from rotelab.errors import RotelabError
from rotelab.theory import lower_bound, non_robust_order, upper_bound, upper_regime


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


def test_upper_bound_increases_within_each_regime():
    n, d = 100, 4
    for lo, hi in ((1e-4, 0.1), (0.11, 0.99)):
        grid = [lo + (hi - lo) * k / 20 for k in range(21)]
        vals = [upper_bound(n, d, r) for r in grid]
        assert vals == sorted(vals)


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

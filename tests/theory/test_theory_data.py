"""Epsilon-separated datasets: exact epsilon, seeded draws, digits, bad data."""

from __future__ import annotations

import numpy as np
import pytest

from rotelab.errors import RotelabError
from rotelab.theory import digits, epsilon, synthetic


def test_epsilon_is_half_the_closest_cross_label_distance():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 4.0], [0.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    # same-label pair (0,1) at 0.1 is ignored; closest cross pair: (0,3) at 1.0 and (1,3)
    brute = min(np.linalg.norm(x[i] - x[j]) for i in range(4) for j in range(4) if y[i] != y[j])
    assert epsilon(x, y) == pytest.approx(brute / 2) == pytest.approx(0.5)


def test_identical_points_with_different_labels_refused():
    x = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    with pytest.raises(RotelabError, match="identical points"):
        epsilon(x, np.array([0, 1, 0]))
    # the same duplicate under one label is fine
    assert epsilon(x, np.array([0, 0, 1])) > 0


def test_single_label_refused():
    with pytest.raises(RotelabError, match="single label"):
        epsilon(np.zeros((3, 2)), np.zeros(3, dtype=int))


def test_synthetic_is_seeded_and_separated():
    a = synthetic(80, 3, classes=3, separation=0.05, seed=7)
    b = synthetic(80, 3, classes=3, separation=0.05, seed=7)
    c = synthetic(80, 3, classes=3, separation=0.05, seed=8)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.epsilon >= 0.05 and set(a.y.tolist()) == {0, 1, 2}
    assert a.epsilon == epsilon(a.x, a.y)
    assert (a.n, a.d, a.classes) == (80, 3, 3)


def test_synthetic_impossible_separation_refused():
    with pytest.raises(RotelabError, match="separation"):
        synthetic(50, 1, separation=1.5, seed=0)  # gap 3 > the cube's width


def test_digits_subset():
    ds = digits(100, classes=3, seed=0)
    assert ds.x.shape == (100, 64) and ds.x.max() <= 1.0 and set(ds.y.tolist()) <= {0, 1, 2}
    assert ds.epsilon == pytest.approx(epsilon(ds.x, ds.y)) and ds.epsilon > 0


def _brute_epsilon(x, y):
    from scipy.spatial.distance import cdist

    dist = cdist(x, x)  # exact differences, independent of epsilon()'s chunked blocks
    return float(dist[y[:, None] != y[None, :]].min()) / 2


def test_all_digits_epsilon_is_exact_against_brute_force():
    full = digits()
    assert full.x.shape == (1797, 64) and full.classes == 10  # every pixel, no projection
    assert full.epsilon == pytest.approx(_brute_epsilon(full.x, full.y), rel=1e-12)


def test_digit_pair_subset():
    pair = digits(labels=(3, 8))
    assert pair.name.startswith("digits-3v8") and set(pair.y.tolist()) == {0, 1}
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert (pair.y == 0).sum() == (target == 3).sum() and (pair.y == 1).sum() == (target == 8).sum()
    assert pair.epsilon == pytest.approx(_brute_epsilon(pair.x, pair.y), rel=1e-12)
    # a pair is a subset of all digits: its closest cross pair can only be farther
    assert pair.epsilon >= digits().epsilon
    sub = digits(40, labels=(3, 8), seed=1)
    assert sub.n == 40 and sub.epsilon >= pair.epsilon


@pytest.mark.parametrize("labels", [(3,), (3, 3), (3, 11), (-1, 2)])
def test_bad_digit_subsets_refused(labels):
    with pytest.raises(RotelabError, match="distinct 0..9"):
        digits(labels=labels)

"""Blind baseline: silent on a fair split, flags a shifted one."""

from __future__ import annotations

import numpy as np
import pytest

from rotelab.errors import RotelabError
from rotelab.measure.blind import BlindBaseline

WORDS = "cat dog bird park mat sang ran sat river hill town road bell lamp".split()


def _sentences(rng, n, extra=None):
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, 8))
        if extra is not None:
            words.insert(int(rng.integers(8)), extra(rng))
        out.append(" ".join(words) + ".")
    return out


def test_fair_split_is_not_flagged():
    rng = np.random.default_rng(0)
    texts = _sentences(rng, 120)
    y = np.arange(120) % 2 == 0  # labels independent of the text
    bb = BlindBaseline(n_boot=300, seed=0).fit(texts, y)
    assert not bb.flagged_
    assert bb.auc_ci_[0] < 0.5  # out-of-fold AUC on noise may even sit below 0.5
    assert bb.oof_scores_.shape == (120,)


def test_shifted_split_is_flagged_with_warning():
    rng = np.random.default_rng(0)
    members = _sentences(rng, 60, lambda r: f"in {int(r.integers(1990, 2000))}")
    nonmembers = _sentences(rng, 60, lambda r: f"in {int(r.integers(2021, 2025))}")
    y = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    bb = BlindBaseline(n_boot=300, seed=0).fit(members + nonmembers, y)
    assert bb.flagged_ and bb.auc_ > 0.95
    assert "distribution shift" in bb.warning()
    assert bb.summary()["flagged"] is True
    # the features it found are the shifted ones (the 199x years)
    assert any("199" in name for name, _ in bb.top_features_)


def test_seeded_and_needs_both_classes():
    rng = np.random.default_rng(1)
    texts = _sentences(rng, 40)
    y = np.arange(40) < 20
    a = BlindBaseline(n_boot=100, seed=3).fit(texts, y)
    b = BlindBaseline(n_boot=100, seed=3).fit(texts, y)
    assert np.array_equal(a.oof_scores_, b.oof_scores_) and a.auc_ci_ == b.auc_ci_
    with pytest.raises(RotelabError, match="at least 2 members and 2 non-members"):
        BlindBaseline().fit(texts[:5], [True, False, False, False, False])

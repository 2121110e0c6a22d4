"""Binomial intervals against closed forms and scipy; breakdowns by group; ROC AUC against
scikit-learn, TPR at low FPR by hand, bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, binomtest

from rotelab.errors import RotelabError
from rotelab.stats import (
    auc_score,
    bootstrap_auc,
    bootstrap_tpr_at_fpr,
    breakdown,
    breakdown_dict,
    clopper_pearson,
    min_nonmembers,
    rate_with_ci,
    roc_points,
    tpr_at_fpr,
    wilson_interval,
)


def test_wilson_matches_hand_computed_value():
    # k=18, n=20, z=1.959964: centre = (0.9 + z^2/40) / (1 + z^2/20), half-width by hand.
    z = 1.959963984540054
    p, n = 0.9, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = wilson_interval(18, 20)
    assert lo == pytest.approx(centre - half, abs=1e-12)
    assert hi == pytest.approx(centre + half, abs=1e-12)
    assert lo == pytest.approx(0.69897, abs=1e-4)
    # statsmodels-free cross-check: scipy's binomtest implements the Wilson interval too
    ref = binomtest(18, 20).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_clopper_pearson_matches_beta_quantiles_and_edges():
    lo, hi = clopper_pearson(3, 10, alpha=0.1)
    assert lo == pytest.approx(beta.ppf(0.05, 3, 8))
    assert hi == pytest.approx(beta.ppf(0.95, 4, 7))
    assert clopper_pearson(0, 10)[0] == 0.0
    assert clopper_pearson(10, 10)[1] == 1.0
    # exact interval is wider than Wilson at small n
    w = wilson_interval(3, 10)
    c = clopper_pearson(3, 10)
    assert c[0] < w[0] and c[1] > w[1]


def test_empty_and_invalid_counts():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    r = rate_with_ci(0, 0)
    assert math.isnan(r.rate) and r.n == 0
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    with pytest.raises(RotelabError):
        rate_with_ci(1, 2, method="bayes")


def test_rate_from_booleans_drops_nan():
    r = rate_with_ci([True, False, float("nan"), True])
    assert (r.k, r.n, r.rate) == (2, 3, pytest.approx(2 / 3))
    d = r.as_dict("extraction_rate", count="extracted", total="windows")
    assert d["windows"] == 3 and d["extracted"] == 2 and d["extraction_rate_ci"] == r.ci


def test_breakdown_by_single_and_joint_groups():
    df = pd.DataFrame({
        "count": [0, 0, 4, 4, 4, 64], "kind": ["a", "b", "a", "a", "b", "b"],
        "hit": [False, False, True, False, True, True], "m": [0, 1, 2, 3, 4, 5],
    })  # fmt: skip
    t = breakdown(df, "count", rates=["hit"], means=["m"])
    assert t["count"].tolist() == [0, 4, 64]
    assert t["hit_k"].tolist() == [0, 2, 1] and t["n"].tolist() == [2, 3, 1]
    assert t["m_mean"].tolist() == [0.5, 3.0, 5.0]
    assert t.loc[1, "hit_ci_lo"] == pytest.approx(wilson_interval(2, 3)[0])
    joint = breakdown_dict(df, ["kind+count"], lambda part: {"n": len(part)})
    assert joint["kind+count"] == {"a|0": {"n": 1}, "a|4": {"n": 2}, "b|0": {"n": 1},
                                   "b|4": {"n": 1}, "b|64": {"n": 1}}  # fmt: skip
    with pytest.raises(RotelabError, match="no such metadata column"):
        breakdown(df, "source", rates=["hit"])


# ------------------------------------------------------------------------------------------ ROC
def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)
    y = rng.random(60) < 0.4
    assert auc_score(s, y) == pytest.approx(roc_auc_score(y, s))
    assert auc_score(-s, y) == pytest.approx(1 - roc_auc_score(y, s))


def test_tpr_at_fpr_hand_example():
    neg = np.arange(100, dtype=float)  # 100 non-members 0..99
    pos = np.array([99.5, 98.5, 97.5, 50.0])
    s, y = np.r_[pos, neg], np.r_[np.ones(4, bool), np.zeros(100, bool)]
    # FPR 1%: one non-member (99) may exceed the threshold (98): members 99.5, 98.5 pass
    assert tpr_at_fpr(s, y, 0.01) == pytest.approx(0.5)
    assert tpr_at_fpr(s, y, 0.001) == pytest.approx(0.25)  # threshold above 99
    assert tpr_at_fpr(s, y, 0.03) == pytest.approx(0.75)


def test_tpr_refused_with_too_few_nonmembers():
    rng = np.random.default_rng(1)
    s = rng.normal(size=300)
    y = np.r_[np.ones(100, bool), np.zeros(200, bool)]
    ok = bootstrap_tpr_at_fpr(s, y, 0.01, n_boot=50, min_false_positives=2)
    assert ok["value"] == pytest.approx(tpr_at_fpr(s, y, 0.01)) and ok["reason"] is None
    assert ok["ci"][0] <= ok["ci"][1]
    refused = bootstrap_tpr_at_fpr(s, y, 0.001, n_boot=50, min_false_positives=2)
    assert refused["value"] is None and refused["ci"] is None
    assert "2000" in refused["reason"] and "200" in refused["reason"]
    assert min_nonmembers(0.01, 5) == 500


def test_bootstrap_ci_brackets_and_is_seeded():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(80, bool), np.zeros(80, bool)]
    s = rng.normal(size=160) + 0.8 * y
    auc, ci = bootstrap_auc(s, y, n_boot=500, seed=3)
    assert ci[0] < auc < ci[1]
    assert 0.05 < ci[1] - ci[0] < 0.3
    assert bootstrap_auc(s, y, n_boot=500, seed=3)[1] == ci
    assert bootstrap_auc(s, y, n_boot=0) == (auc, None)
    # a coin-flip score's CI contains 0.5
    _, ci0 = bootstrap_auc(rng.normal(size=160), y, n_boot=500)
    assert ci0[0] < 0.5 < ci0[1]


def test_roc_points_and_bad_scores():
    from sklearn.metrics import auc

    rng = np.random.default_rng(4)
    y = rng.random(50) < 0.5
    s = rng.normal(size=50) + y
    roc = roc_points(s, y)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert auc(roc["fpr"], roc["tpr"]) == pytest.approx(auc_score(s, y))
    with pytest.raises(RotelabError, match="not finite"):
        auc_score(np.r_[s[:-1], np.nan], y)

"""Rates with binomial confidence intervals, group-by breakdowns, ROC metrics with bootstrap CIs.

Every rate rotelab reports (extraction, membership true-positive rates, probe accuracy) is a
binomial proportion k/n over a finite set of items, often small (20 items per duplication count on
the organism). The interval says how much that count supports:

- Wilson score interval (Wilson 1927): the default; good coverage at small n and never outside
  [0, 1].
- Clopper-Pearson (Clopper & Pearson 1934): the exact interval from beta quantiles; conservative
  (coverage >= 1 - alpha), for when a guarantee matters more than width.

Scores that rank positives above negatives (membership-inference attacks, the blind baseline) are
judged as Carlini et al. 2022 ("Membership inference attacks from first principles") advise: ROC
AUC with a stratified percentile-bootstrap CI, and TPR at a low FPR with a CI, refused when too
few negatives exist to resolve that FPR (:func:`bootstrap_tpr_at_fpr`).

Example:
    >>> wilson_interval(18, 20)  # doctest: +ELLIPSIS
    (0.699..., 0.972...)
    >>> rate_with_ci([True, False, True, True]).rate
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError

__all__ = [
    "CIMethod",
    "Rate",
    "auc_score",
    "check_group_by",
    "binomial_interval",
    "bootstrap_auc",
    "bootstrap_tpr_at_fpr",
    "breakdown",
    "breakdown_dict",
    "clopper_pearson",
    "mean_with_ci",
    "min_nonmembers",
    "rate_with_ci",
    "roc_points",
    "spearman_with_ci",
    "tpr_at_fpr",
    "wilson_interval",
]


class CIMethod(str, Enum):
    wilson = "wilson"
    clopper_pearson = "clopper_pearson"


def _check_counts(k: int, n: int, alpha: float) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` at level ``1 - alpha``.

    Returns ``(nan, nan)`` for ``n == 0``: no items support no rate.
    """
    _check_counts(k, n, alpha)
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 or k = n the closed form touches the bound only up to rounding; pin it exactly.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for ``k / n`` from beta quantiles; ``(nan, nan)`` at
    n = 0."""
    _check_counts(k, n, alpha)
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def binomial_interval(
    k: int, n: int, *, method: CIMethod | str = CIMethod.wilson, alpha: float = 0.05
) -> tuple[float, float]:
    """The interval of ``method`` (``wilson`` or ``clopper_pearson``)."""
    try:
        method = CIMethod(method)
    except ValueError as exc:
        raise RotelabError(
            f"unknown confidence interval {method!r}; use wilson or clopper_pearson"
        ) from exc
    if method is CIMethod.wilson:
        return wilson_interval(k, n, alpha)
    return clopper_pearson(k, n, alpha)


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with its confidence interval ``(lo, hi)`` (nan when n = 0)."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float
    method: str = CIMethod.wilson.value
    alpha: float = 0.05

    @property
    def ci(self) -> list[float]:
        return [self.lo, self.hi]

    def as_dict(self, name: str = "rate", count: str = "k", total: str = "n") -> dict:
        """``{total: n, count: k, name: rate, name_ci: [lo, hi]}`` under the given field names."""
        return {total: self.n, count: self.k, name: self.rate, f"{name}_ci": self.ci}


def rate_with_ci(
    successes: int | Iterable[bool],
    n: int | None = None,
    *,
    method: CIMethod | str = CIMethod.wilson,
    alpha: float = 0.05,
) -> Rate:
    """A rate and its interval, from a count (with ``n``) or from per-item booleans.

    Args:
        successes: the number of successes ``k`` (then ``n`` is required), or an iterable of
            booleans, one per item (NaN entries, e.g. items a metric did not apply to, are dropped).
        n: number of items when ``successes`` is a count.
        method: ``wilson`` (default) or ``clopper_pearson``.
        alpha: 1 - confidence level.
    """
    if n is None:
        values = np.asarray(list(successes), dtype=float)  # type: ignore[arg-type]
        values = values[~np.isnan(values)]
        k, n = int(values.sum()), int(values.size)
    else:
        k = int(successes)  # type: ignore[arg-type]
    lo, hi = binomial_interval(k, n, method=method, alpha=alpha)
    rate = k / n if n else math.nan
    return Rate(k, n, rate, lo, hi, CIMethod(method).value, alpha)


def check_group_by(group_by: Iterable[str | Sequence[str]], columns: Iterable[str]) -> None:
    """Refuse a group (``a``, joint ``a+b`` or a list of columns) naming a column that is not
    there, in one line listing the columns that are (the one check every command uses)."""
    have = [str(c) for c in columns]
    for spec in group_by:
        cols = spec.split("+") if isinstance(spec, str) else list(spec)
        missing = [c for c in cols if c not in have]
        if missing:
            available = ", ".join(c for c in have if not c.startswith("_")) or "none"
            raise RotelabError(
                f"cannot group by {', '.join(missing)}: no such metadata column "
                f"(available: {available})"
            )


def _group_keys(df: pd.DataFrame, spec: str | Sequence[str]) -> tuple[str, list[str]]:
    check_group_by([spec], df.columns)
    cols = spec.split("+") if isinstance(spec, str) else list(spec)
    return "+".join(cols), cols


def breakdown(
    df: pd.DataFrame,
    group_cols: str | Sequence[str],
    *,
    rates: Sequence[str] = (),
    means: Sequence[str] = (),
    method: CIMethod | str = CIMethod.wilson,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per group: its size, each boolean column as a rate with CI, each mean column.

    Args:
        df: one row per item.
        group_cols: a column, a list of columns, or ``"a+b"`` for the joint groups of a and b.
        rates: boolean columns (NaN = not applicable, dropped); each gives ``<c>_k``,
            ``<c>_n``, ``<c>_rate``, ``<c>_ci_lo``, ``<c>_ci_hi``.
        means: numeric columns; each gives ``<c>_mean`` (NaN ignored).
        method, alpha: the interval, as in :func:`rate_with_ci`.

    Returns:
        A frame with the group columns, ``n`` and the columns above, sorted by group.
    """
    _, cols = _group_keys(df, group_cols)
    rows = []
    for key, part in df.groupby(cols, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(cols, key))
        row["n"] = len(part)
        for c in rates:
            r = rate_with_ci(part[c].to_numpy(dtype=float), method=method, alpha=alpha)
            row.update(
                {
                    f"{c}_k": r.k,
                    f"{c}_n": r.n,
                    f"{c}_rate": r.rate,
                    f"{c}_ci_lo": r.lo,
                    f"{c}_ci_hi": r.hi,
                }  # fmt: skip
            )
        for c in means:
            values = pd.to_numeric(part[c], errors="coerce")
            row[f"{c}_mean"] = float(values.mean()) if values.notna().any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _key_text(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def breakdown_dict(
    df: pd.DataFrame,
    group_by: Sequence[str | Sequence[str]],
    fields,
) -> dict[str, dict[str, dict]]:
    """``{group spec: {group value: fields(rows of that group)}}`` for a JSON summary.

    ``fields`` maps a sub-frame to a dict (the same fields as the overall summary), so every group
    reports exactly what the whole does. Joint groups (``"kind+count"``) are keyed ``"secret|16"``.
    """
    out: dict[str, dict[str, dict]] = {}
    for spec in group_by:
        name, cols = _group_keys(df, spec)
        groups: dict[str, dict] = {}
        for key, part in df.groupby(cols, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            groups["|".join(_key_text(v) for v in key)] = fields(part)
        out[name] = groups
    return out


# ------------------------------------------------------------------ ROC: AUC and TPR at low FPR
def _labels_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-d arrays of the same length")
    if not np.isfinite(s).all():
        raise RotelabError("some attack scores are not finite (NaN or inf); check the inputs")
    return s, y


def auc_score(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC = P(member score > non-member score) + 0.5 P(tie). Higher is better (attacker)."""
    s, y = _labels_scores(scores, labels)
    return float(_auc_rows(s[None, y], s[None, ~y])[0])


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC for each row of (B, n_pos) member and (B, n_neg) non-member scores, via mid-ranks."""
    from scipy.stats import rankdata

    both = np.concatenate([pos, neg], axis=1)
    ranks = rankdata(both, axis=1)  # ties get their average rank = the 0.5 convention
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    return (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _tpr_rows(pos: np.ndarray, neg: np.ndarray, fpr: float) -> np.ndarray:
    """TPR at FPR <= ``fpr`` for each row: threshold above all but floor(fpr n_neg) non-members."""
    n_neg = neg.shape[1]
    allowed = int(math.floor(fpr * n_neg + 1e-9))
    thresholds = -np.sort(-neg, axis=1)[:, allowed]  # the (allowed+1)-th largest non-member score
    return (pos > thresholds[:, None]).mean(1)


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[bool], fpr: float) -> float:
    """Largest TPR whose threshold keeps the empirical FPR <= ``fpr`` (strict ``>`` threshold)."""
    s, y = _labels_scores(scores, labels)
    return float(_tpr_rows(s[None, y], s[None, ~y], fpr)[0])


def _bootstrap_indices(y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Stratified: members and non-members are resampled separately, so every replicate has both.
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    return (
        pos[rng.integers(len(pos), size=(n_boot, len(pos)))],
        neg[rng.integers(len(neg), size=(n_boot, len(neg)))],
    )


def _percentile_ci(values: np.ndarray, level: float) -> list[float]:
    a = (1 - level) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def bootstrap_auc(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, list[float] | None]:
    """AUC and its stratified percentile-bootstrap CI (``None`` when ``n_boot`` is 0)."""
    s, y = _labels_scores(scores, labels)
    auc = float(_auc_rows(s[None, y], s[None, ~y])[0])
    if n_boot <= 0:
        return auc, None
    ip, ineg = _bootstrap_indices(y, n_boot, seed)
    return auc, _percentile_ci(_auc_rows(s[ip], s[ineg]), level)


def min_nonmembers(fpr: float, min_false_positives: int) -> int:
    """Non-members needed to report TPR at ``fpr``: ``ceil(min_false_positives / fpr)``."""
    return math.ceil(min_false_positives / fpr - 1e-9)


def bootstrap_tpr_at_fpr(
    scores: Sequence[float],
    labels: Sequence[bool],
    fpr: float,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_false_positives: int = 5,
) -> dict[str, Any]:
    """TPR at ``fpr`` with a bootstrap CI, or a refusal.

    The rule: TPR at FPR α is reported only with at least ``ceil(min_false_positives / α)``
    non-members, i.e. when the threshold lets through at least ``min_false_positives`` of them.
    With fewer, the only thresholds with FPR <= α sit above (nearly) every non-member, so the
    number measures "TPR at FPR 0 on this sample", not at α, and its error is unbounded.

    Returns:
        ``{"value", "ci", "reason"}``; ``value`` and ``ci`` are ``None`` with a ``reason`` when
        refused.
    """
    s, y = _labels_scores(scores, labels)
    n_neg = int((~y).sum())
    need = min_nonmembers(fpr, min_false_positives)
    if n_neg < need:
        return {
            "value": None,
            "ci": None,
            "reason": (
                f"needs >= {need} non-members ({min_false_positives} expected false positives "
                f"at FPR {fpr:g}); have {n_neg}"
            ),
        }
    value = float(_tpr_rows(s[None, y], s[None, ~y], fpr)[0])
    ci = None
    if n_boot > 0:
        ip, ineg = _bootstrap_indices(y, n_boot, seed)
        ci = _percentile_ci(_tpr_rows(s[ip], s[ineg], fpr), level)
    return {"value": value, "ci": ci, "reason": None}


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> pd.DataFrame:
    """The ROC curve: columns ``fpr, tpr, threshold`` (sklearn's, all thresholds kept)."""
    from sklearn.metrics import roc_curve

    s, y = _labels_scores(scores, labels)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def mean_with_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean over replicates (seeds) with a Student-t interval: ``{mean, ci, n}``; ``ci`` is
    ``None`` with fewer than 2 replicates (one seed says nothing about seed-to-seed spread)."""
    from scipy import stats as st

    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": math.nan, "ci": None, "n": 0}
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "ci": None, "n": 1}
    half = float(st.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": int(v.size)}


def spearman_with_ci(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Spearman's rank correlation of paired values with a percentile-bootstrap CI over the pairs
    (resampled with replacement; replicates with a constant side are dropped), and its p-value.

    Returns:
        ``{rho, ci, p_value, n, n_boot}``; ``rho`` is NaN when either side is constant.
    """
    from scipy import stats as st

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError("x and y must be 1-d and of one length")
    n = int(xa.size)
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"rho": math.nan, "ci": None, "p_value": math.nan, "n": n, "n_boot": 0}
    res = st.spearmanr(xa, ya)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(xa[i]) > 0 and np.ptp(ya[i]) > 0:
            reps.append(st.spearmanr(xa[i], ya[i]).statistic)
    ci = _percentile_ci(np.asarray(reps), level) if reps else None
    return {"rho": float(res.statistic), "ci": ci, "p_value": float(res.pvalue), "n": n,
            "n_boot": len(reps)}  # fmt: skip

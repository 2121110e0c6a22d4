"""How well each attack separates members from non-members, overall and by group.

Metrics follow Carlini et al. 2022 ("Membership inference attacks from first principles"): ROC
AUC with a stratified bootstrap CI, TPR at 1% and 0.1% FPR with CIs, refused when too few
non-members exist to resolve that FPR (:mod:`rotelab.stats`). Results are broken down by
duplication count, insertion phase and kind as in the Hubble evaluations (Wei et al. 2025); a group
of members is compared with the non-members of the same kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rotelab.registry import register_metric
from rotelab.stats import bootstrap_auc, bootstrap_tpr_at_fpr, roc_points

__all__ = ["FPR_LEVELS", "METRIC_NAMES", "attack_metrics", "by_group_metrics", "evaluate_attacks"]

#: The FPRs at which TPR is reported, keyed as in summary.json.
FPR_LEVELS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}

register_metric("auc", higher_is_better=True, description="ROC AUC (attacker's view)")
for _key, _fpr in FPR_LEVELS.items():
    register_metric(_key, higher_is_better=True, description=f"TPR at FPR {_fpr:g}")

#: Every metric :func:`attack_metrics` reports (its direction is in ``rotelab.registry.METRICS``).
METRIC_NAMES = ("auc", *FPR_LEVELS)


def attack_metrics(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_false_positives: int = 5,
) -> dict[str, Any]:
    """AUC (+CI) and TPR at 1% / 0.1% FPR (+CI, or null with the reason) for one attack."""
    auc, ci = bootstrap_auc(scores, labels, n_boot=n_boot, level=level, seed=seed)
    y = np.asarray(labels, dtype=bool)
    out: dict[str, Any] = {
        "auc": auc,
        "auc_ci": ci,
        "n_members": int(y.sum()),
        "n_nonmembers": int((~y).sum()),
    }
    for key, fpr in FPR_LEVELS.items():
        res = bootstrap_tpr_at_fpr(
            scores,
            y,
            fpr,
            n_boot=n_boot,
            level=level,
            seed=seed,
            min_false_positives=min_false_positives,
        )
        out[key] = res["value"]
        out[f"{key}_ci"] = res["ci"]
        if res["reason"]:
            out[f"{key}_reason"] = res["reason"]
    return out


def _group_masks(
    frame: pd.DataFrame, column: str | tuple[str, ...], strata: Sequence[str]
) -> Iterable[tuple[str, np.ndarray]]:
    """(value label, mask) per group: members with that value vs the matching non-members.

    A column in ``strata`` (a property of the text, such as ``kind``) restricts the non-members to
    the same value; other columns (``count``, ``phase``: properties of the insertion, which controls
    do not have) compare the group's members with every non-member of the members' strata.
    """
    cols = (column,) if isinstance(column, str) else tuple(column)
    if any(c not in frame.columns for c in cols):
        return
    member = frame["member"].to_numpy(bool)
    values = frame.loc[member, list(cols)].drop_duplicates().sort_values(list(cols))
    for _, row in values.iterrows():
        m_mask = member.copy()
        for c in cols:
            m_mask &= (frame[c] == row[c]).to_numpy()
        n_mask = ~member
        for c in strata:
            if c in frame.columns:
                allowed = frame.loc[m_mask, c].unique()
                n_mask &= frame[c].isin(allowed).to_numpy()
        label = ",".join(str(row[c]) for c in cols)
        yield label, m_mask | n_mask


def _group_name(group: str | tuple[str, ...]) -> str:
    # A joint group is keyed "kind,count" with values "bio,4" in summary.json.
    return group if isinstance(group, str) else ",".join(group)


def by_group_metrics(
    frame: pd.DataFrame,
    attacks: Sequence[str],
    groups: Sequence[str | tuple[str, ...]],
    *,
    strata: Sequence[str] = ("kind",),
    n_boot: int = 1000,
    seed: int = 0,
    min_false_positives: int = 5,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Metrics per attack per group column per value: ``{attack: {group: {value: metrics}}}``.

    ``frame`` has one row per text with a boolean ``member`` column, one column per attack and the
    group columns. Groups with no non-members to compare against are skipped.
    """
    out: dict[str, dict] = {a: {} for a in attacks}
    for g in groups:
        for label, mask in _group_masks(frame, g, strata):
            sub = frame[mask]
            y = sub["member"].to_numpy(bool)
            if y.all() or not y.any():
                continue
            for a in attacks:
                out[a].setdefault(_group_name(g), {})[label] = attack_metrics(
                    sub[a].to_numpy(float), y, n_boot=n_boot, seed=seed,
                    min_false_positives=min_false_positives,
                )  # fmt: skip
    return out


def evaluate_attacks(
    frame: pd.DataFrame,
    attacks: Sequence[str],
    groups: Sequence[str | tuple[str, ...]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_false_positives: int = 5,
) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Every attack's metrics (with ``by_group``) and ROC curves, overall and per group.

    Args:
        frame: one row per text: ``member``, one score column per attack, the group columns.
        attacks: the score columns, in the order reported.
        groups: group columns (a tuple for a joint group); those missing from ``frame`` are left
            out.

    Returns:
        ``{attack: metrics}`` as :func:`attack_metrics` plus ``by_group`` (see
        :func:`by_group_metrics`), and the ROC table: ``fpr, tpr, threshold, attack, group,
        value`` (``group`` and ``value`` are ``"all"`` for the whole split).
    """
    groups = [
        g for g in groups if all(c in frame.columns for c in ((g,) if isinstance(g, str) else g))
    ]
    per_group = by_group_metrics(
        frame, attacks, groups, n_boot=n_boot, seed=seed, min_false_positives=min_false_positives
    )
    y = frame["member"].to_numpy(bool)
    metrics, roc_rows = {}, []
    for a in attacks:
        s = frame[a].to_numpy(float)
        m = attack_metrics(s, y, n_boot=n_boot, seed=seed, min_false_positives=min_false_positives)
        m["by_group"] = per_group.get(a, {})
        metrics[a] = m
        roc_rows.append(roc_points(s, y).assign(attack=a, group="all", value="all"))
        for g in groups:
            for label, mask in _group_masks(frame, g, ("kind",)):
                ym = y[mask]
                if ym.all() or not ym.any():
                    continue
                roc_rows.append(
                    roc_points(s[mask], ym).assign(attack=a, group=_group_name(g), value=label)
                )
    return metrics, pd.concat(roc_rows, ignore_index=True)

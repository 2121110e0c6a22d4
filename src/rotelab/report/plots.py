"""The report's plots, drawn with matplotlib's Agg backend and embedded as base64 PNG.

Each function takes plain tables (pandas DataFrames or dicts read from a run directory) and returns
a :class:`matplotlib.figure.Figure`; :func:`to_data_uri` turns it into a ``data:image/png`` URI and
closes it, so a report never references a file or a network resource.

The figures follow the papers the numbers come from: extraction rate against duplication count
(Carlini et al. 2022; Wei et al. 2025, Hubble), ROC curves on log axes with TPR at low FPR
(Carlini et al. 2022, "Membership Inference Attacks From First Principles"), the rho sweep and
the band-analysis ratios of the K-FAC edit (Merullo et al. 2025).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # the report is drawn headless; never pick an interactive backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "auc_by_count",
    "band_ratios",
    "before_after",
    "bounds_curves",
    "extraction_by_count",
    "pass_at_k_curves",
    "rho_sweep",
    "roc_curves",
    "to_data_uri",
]

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
_BEFORE, _AFTER = "#9aa5b1", "#1f77b4"


def to_data_uri(fig: Figure, *, dpi: int = 110) -> str:
    """Render ``fig`` as a PNG ``data:`` URI and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def save_figures(run_dir, figures: Mapping[str, Figure], *, dpi: int = 110) -> None:
    """Each of a report's figures as ``run_dir/plots/NAME.png``, then closed."""
    from pathlib import Path

    plots = Path(run_dir) / "plots"
    plots.mkdir(exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(plots / f"{name}.png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)


def _count_axis(ax, counts: Sequence[int]) -> None:
    # Duplication counts are 0, 1, 4, 16, 64: equally spaced categories read better than a log
    # axis, which cannot show the count-0 controls.
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels([str(c) for c in counts])
    ax.set_xlabel("times inserted in training (0 = never: control)")


def extraction_by_count(rates: pd.DataFrame) -> Figure:
    """Extraction rate against duplication count, one line per series, with CI bars.

    Args:
        rates: rows ``series, count, rate, lo, hi`` (``lo``/``hi``: the rate's confidence
            interval; NaN draws no bar). ``series`` is e.g. ``all`` or an item kind.
    """
    counts = sorted(int(c) for c in rates["count"].unique())
    pos = {c: i for i, c in enumerate(counts)}
    series = list(dict.fromkeys(rates["series"]))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    width = 0.08
    for k, name in enumerate(series):
        d = rates[rates["series"] == name].sort_values("count")
        x = np.array([pos[int(c)] for c in d["count"]]) + (k - (len(series) - 1) / 2) * width
        y = d["rate"].to_numpy(float)
        lo = np.clip(y - d["lo"].to_numpy(float), 0, None)
        hi = np.clip(d["hi"].to_numpy(float) - y, 0, None)
        bold = name == "all"
        ax.errorbar(
            x, y, yerr=np.nan_to_num(np.vstack([lo, hi])), marker="o", capsize=3,
            color="black" if bold else _COLORS[k % len(_COLORS)], lw=2.2 if bold else 1.2,
            label=str(name),
        )  # fmt: skip
    _count_axis(ax, counts)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("extraction rate (greedy, exact suffix)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], aucs: Mapping[str, float]
) -> Figure:
    """ROC curves of the membership attacks, linear and log-log side by side.

    Args:
        curves: attack name -> ``(fpr, tpr)``, each of shape ``(n_thresholds,)``.
        aucs: attack name -> ROC AUC, shown in the legend.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for k, (name, (fpr, tpr)) in enumerate(curves.items()):
        auc = aucs.get(name)
        label = f"{name} (AUC {auc:.3f})" if auc is not None else name
        for ax in axes:
            ax.plot(fpr, tpr, color=_COLORS[k % len(_COLORS)], lw=1.4, label=label)
    grid = np.logspace(-4, 0, 50)
    axes[0].plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    axes[1].plot(grid, grid, ls="--", color="grey", lw=0.8)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    # Low-FPR behaviour is what matters for an attack (Carlini et al. 2022), hence the log panel.
    axes[1].set_xlim(1e-3, 1)
    axes[1].set_ylim(1e-3, 1.05)
    for ax, title in zip(axes, ["linear", "log-log (low FPR)"], strict=True):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def auc_by_count(aucs: pd.DataFrame) -> Figure:
    """Membership AUC against duplication count, one line per attack.

    Args:
        aucs: rows ``attack, count, auc, lo, hi`` (members inserted ``count`` times against the
            count-0 controls; ``lo``/``hi`` may be NaN).
    """
    counts = sorted(int(c) for c in aucs["count"].unique())
    pos = {c: i for i, c in enumerate(counts)}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, name in enumerate(dict.fromkeys(aucs["attack"])):
        d = aucs[aucs["attack"] == name].sort_values("count")
        x = np.array([pos[int(c)] for c in d["count"]], float) + (k - 1) * 0.05
        y = d["auc"].to_numpy(float)
        err = np.vstack(
            [
                np.clip(y - d["lo"].to_numpy(float), 0, None),
                np.clip(d["hi"].to_numpy(float) - y, 0, None),
            ]
        )
        ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, lw=1.2,
                    color=_COLORS[k % len(_COLORS)], label=str(name))  # fmt: skip
    ax.axhline(0.5, ls="--", color="grey", lw=0.8)
    _count_axis(ax, counts)
    ax.set_xlabel("times the members were inserted (against never-inserted controls)")
    ax.set_ylim(0.3, 1.02)
    ax.set_ylabel("ROC AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def before_after(metrics: pd.DataFrame, title: str) -> Figure:
    """Before/after bars for one removal method, one small panel per metric (own scale each).

    Args:
        metrics: rows ``metric, before, after, higher_is_better``.
        title: the method's name.
    """
    n = len(metrics)
    fig, axes = plt.subplots(1, n, figsize=(max(2.0 * n, 4.0), 3.0), squeeze=False)
    for ax, row in zip(axes[0], metrics.itertuples(index=False), strict=True):
        vals = [float(row.before), float(row.after)]
        bars = ax.bar([0, 1], vals, color=[_BEFORE, _AFTER], width=0.6)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["before", "after"], fontsize=8)
        arrow = "↑" if row.higher_is_better else "↓"
        ax.set_title(f"{row.metric} {arrow}", fontsize=9)
        top = max(vals) if np.isfinite(max(vals)) else 1.0
        ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def rho_sweep(sweep: pd.DataFrame, base: tuple[float, float] | None = None) -> Figure:
    """The K-FAC edit's trade-off: extraction rate against perplexity, one point per rho.

    Args:
        sweep: rows ``rho, extraction_rate, perplexity``.
        base: ``(perplexity, extraction_rate)`` of the unedited model, drawn as a star.
    """
    d = sweep.sort_values("rho", ascending=False)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(d["perplexity"], d["extraction_rate"], marker="o", color=_COLORS[0], lw=1.4)
    for row in d.itertuples(index=False):
        ax.annotate(f"ρ={row.rho:g}", (row.perplexity, row.extraction_rate), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))  # fmt: skip
    if base is not None:
        ax.plot([base[0]], [base[1]], marker="*", ms=13, color="black", ls="none", label="unedited")
        ax.legend(fontsize=8)
    ax.set_xlabel("held-out perplexity (lower is better)")
    ax.set_ylabel("extraction rate (lower is better)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def band_ratios(bands: pd.DataFrame, ylabel: str = "strength ratio memorized / clean") -> Figure:
    """Band analysis: memorized-to-clean activation strength ratio per curvature band.

    Args:
        bands: rows ``band, ratio`` and optionally ``layer`` (one bar group per layer). A ratio
            above 1 means memorized inputs project more strongly onto that band.
        ylabel: what the ratio is of.
    """
    band_order = list(dict.fromkeys(bands["band"]))
    layers = list(dict.fromkeys(bands["layer"])) if "layer" in bands else ["all"]
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(band_order) * max(1, len(layers)) / 2), 3.8))
    width = 0.8 / len(layers)
    for k, layer in enumerate(layers):
        d = bands[bands["layer"] == layer] if "layer" in bands else bands
        y = [float(d.loc[d["band"] == b, "ratio"].mean()) for b in band_order]
        x = np.arange(len(band_order)) + (k - (len(layers) - 1) / 2) * width
        ax.bar(x, y, width=width, color=_COLORS[k % len(_COLORS)], label=str(layer))
    ax.axhline(1.0, ls="--", color="grey", lw=0.8)
    ax.set_xticks(range(len(band_order)))
    ax.set_xticklabels([str(b) for b in band_order], fontsize=8)
    ax.set_xlabel("eigenvectors of A, by curvature (high → low)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if len(layers) > 1:
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    return fig


def correspondence(by_task: pd.DataFrame, rho: float | None) -> Figure:
    """The task-curvature correspondence: per task, removed activation strength against the
    accuracy drop after the edit at ρ.

    Args:
        by_task: rows ``task, removed_strength, relative_drop`` (share of answered items lost).
        rho: the edit's ρ (for the title; ``None``: a ρ per projection and block).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, row in enumerate(by_task.itertuples()):
        if row.relative_drop is None or row.relative_drop != row.relative_drop:
            continue  # a task that answered nothing before the edit has nothing to lose
        y = row.relative_drop
        ax.scatter(row.removed_strength, y, s=60, color=_COLORS[k % len(_COLORS)])
        ax.annotate(str(row.task), (row.removed_strength, y), fontsize=8,
                    xytext=(5, 4), textcoords="offset points")  # fmt: skip
    ax.axhline(0.0, ls="--", color="grey", lw=0.8)
    ax.set_xlabel("activation strength on removed components  |ΔW a| / |W a|")
    ax.set_ylabel("share of answered items lost after the edit")
    ax.set_title("edit with a ρ per layer" if rho is None else f"edit at ρ = {rho:g}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def weight_change(by_block: dict[str, dict[str, float]]) -> Figure:
    """Fraction of each block's weights changed by more than 1%, 10% and 100% (log scale)."""
    blocks = sorted(by_block, key=int)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(blocks) + 2), 3.8))
    width = 0.8 / 3
    for k, key in enumerate(("1pct", "10pct", "100pct")):
        y = [max(by_block[b][key], 1e-7) for b in blocks]
        x = np.arange(len(blocks)) + (k - 1) * width
        ax.bar(x, y, width=width, color=_COLORS[k], label=f"> {key.removesuffix('pct')}%")
    ax.set_yscale("log")
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels(blocks, fontsize=8)
    ax.set_xlabel("block")
    ax.set_ylabel("fraction of weights changed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pass_at_k_curves(table: pd.DataFrame) -> Figure:
    """Pass@k(m) against k, one line per m, CI as a band (Wang et al. 2025's Pass@k(m)).

    Args:
        table: rows ``k, m, pass_at_k, ci_low, ci_high`` (``rotelab passk``'s ``passk`` table).
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, (m, rows) in enumerate(table.sort_values("k").groupby("m", sort=True)):
        color = _COLORS[i % len(_COLORS)]
        ax.plot(rows["k"], rows["pass_at_k"], "o-", color=color, label=f"m = {m}")
        if rows["ci_low"].notna().all():
            ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.15)
    ax.set_xlabel("k (samples drawn)")
    ax.set_ylabel("Pass@k(m)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, title="at least m pass", title_fontsize=8)
    fig.tight_layout()
    return fig


def bounds_curves(
    curves: pd.DataFrame,
    search: pd.DataFrame | None = None,
    scale: Mapping[str, float] | None = None,
) -> Figure:
    """Parameters against rho (Kim, Moon and Yun 2025): the lower and upper bound curves and,
    after a search, the certified minimal parameters per seed and their mean.

    Args:
        curves: rows ``rho, lower, upper`` (lower with constant 1, upper with 16, the
            constant that keeps it above the lower bound everywhere).
        search: rows ``rho, params_mean, params_min, params_max`` (``rho = 0``: non-robust,
            drawn as a dashed line).
        scale: constants multiplying the ``lower`` and ``upper`` curves (fitted to the points).
    """
    scale = scale or {}
    fig, ax = plt.subplots(figsize=(6.6, 4.0))
    for key, color, label in (("lower", _COLORS[0], "lower bound (Thm 3.1)"),
                              ("upper", _COLORS[1], "upper bound x16 (Thm 4.2)")):  # fmt: skip
        c = scale.get(key)  # NaN (no certified network to fit) is written as null
        c = 1.0 if c is None or not np.isfinite(c) else float(c)
        ax.plot(curves["rho"], c * curves[key], color=color, lw=1.4,
                label=f"{label} x {c:.3g}" if c != 1.0 else label)  # fmt: skip
    if search is not None and not search.empty:
        search = search.assign(**{k: pd.to_numeric(search[k]) for k in
                                  ("params_mean", "params_min", "params_max")})  # fmt: skip
        grid = search[search["rho"] > 0]
        err = [grid["params_mean"] - grid["params_min"], grid["params_max"] - grid["params_mean"]]
        ax.errorbar(grid["rho"], grid["params_mean"], yerr=err, fmt="o", color="black", capsize=3,
                    label="certified minimal (mean, min-max over seeds)")  # fmt: skip
        if "envelope_mean" in grid:
            env = pd.to_numeric(grid["envelope_mean"])
            ax.plot(grid["rho"], env, marker="s", mfc="none", ls=":", color="#2ca02c",
                    label="envelope (min over larger rho, mean)")  # fmt: skip
        base = search[search["rho"] == 0]
        if not base.empty:
            ax.axhline(float(base["params_mean"].iloc[0]), ls="--", color="grey", lw=1,
                       label="non-robust minimal (rho = 0)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("robustness ratio rho = mu / epsilon")
    ax.set_ylabel("parameters")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

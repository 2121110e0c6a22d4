"""The ``gapt-study`` report: the alignment cycle, CE and MBE curves with GAPT's phases, held-out
MBE per block and extraction by count, CE-only beside GAPT (Yu 2025)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rotelab.runs import read_table  # noqa: E402

__all__ = ["figures", "gapt_sections"]

_COLORS = {"ce": "#1f77b4", "gapt": "#d62728"}
_EMA = 0.9


def _ema(values: pd.Series) -> pd.Series:
    return values.ewm(alpha=1 - _EMA, adjust=False).mean()


def alignment_plot(align: pd.DataFrame, window: int | None) -> Figure:
    """cos(∇CE, ∇MBE) per arm and seed; the CE-only arms also as the centred rolling mean of
    ``window`` points whose sign changes the study counts (``None``: a run from before the
    smoothed count, no mean drawn)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for (arm, seed), g in align.groupby(["arm", "seed"]):
        ax.plot(g["step"], g["cos"], color=_COLORS.get(arm, "gray"), lw=0.7,
                ls="-" if arm == "ce" else "--", alpha=0.45, label=f"{arm} s{seed}")  # fmt: skip
        if arm == "ce" and window:  # what the smoothed sign-change count counts
            mean = g["cos"].rolling(window, center=True, min_periods=1).mean()
            ax.plot(g["step"], mean, color="black", lw=1.4, alpha=0.8,
                    label=f"ce s{seed}, mean of {window}")  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("cos(∇CE, ∇MBE)")
    ax.legend(fontsize=7, ncol=3)
    return fig


def curves_plot(steps: pd.DataFrame, column: str, label: str) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    first = steps[steps.arm == "gapt"]
    if len(first):  # GAPT's compression phases of its first seed, shaded
        g = first[first.seed == first.seed.min()]
        comp = g["phase"].to_numpy() == 2
        st = g["step"].to_numpy()
        for i in range(len(st)):
            if comp[i] and (i == 0 or not comp[i - 1]):
                j = i
                while j + 1 < len(st) and comp[j + 1]:
                    j += 1
                ax.axvspan(st[i], st[j] + 1, color=_COLORS["gapt"], alpha=0.08, lw=0)
    for (arm, seed), g in steps.groupby(["arm", "seed"]):
        g = g.dropna(subset=[column])
        y = _ema(g[column]) if column == "ce" else g[column]
        ax.plot(g["step"], y, color=_COLORS.get(arm, "gray"), lw=1,
                ls="-" if arm == "ce" else "--", alpha=0.8, label=f"{arm} s{seed}")  # fmt: skip
    ax.set_xlabel("training step (shaded: GAPT compression phases, first seed)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7, ncol=3)
    return fig


def blocks_plot(blocks: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for arm, g in blocks.groupby("arm"):
        m = g.groupby("block")["mbe"].agg(["mean", "min", "max"])
        ax.errorbar(m.index + (0.05 if arm == "gapt" else -0.05), m["mean"],
                    yerr=[m["mean"] - m["min"], m["max"] - m["mean"]], fmt="o-",
                    color=_COLORS.get(arm, "gray"), label=arm, capsize=3)  # fmt: skip
    ax.set_xlabel("block")
    ax.set_ylabel("held-out MBE (mean, seed range)")
    ax.legend(fontsize=8)
    return fig


def extraction_plot(items: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    allp = items[items.phase == "all"]
    for arm, g in allp.groupby("arm"):
        r = g.groupby("count")["extracted"].mean()
        ax.plot(range(len(r)), r.values, "o-", color=_COLORS.get(arm, "gray"), label=arm)
        ax.set_xticks(range(len(r)))
        ax.set_xticklabels([str(c) for c in r.index])
    ax.set_xlabel("times inserted")
    ax.set_ylabel("greedy extraction (pooled seeds)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8)
    return fig


def figures(run_dir: str | Path, *, smooth_window: int | None) -> dict[str, Figure]:
    """The study's figures by name (the caller closes them); ``smooth_window``: the study's
    smoothing window for the alignment plot."""
    run = Path(run_dir)
    steps, align = read_table(run, "steps"), read_table(run, "alignment")
    blocks, items = read_table(run, "blocks"), read_table(run, "items")
    out: dict[str, Figure] = {}
    if len(align):
        out["alignment"] = alignment_plot(align, smooth_window)
    if len(steps):
        out["train_ce"] = curves_plot(steps, "ce", "training CE (EMA 0.9)")
        out["train_mbe"] = curves_plot(steps, "mbe", "training MBE (mean over blocks)")
    if len(blocks):
        out["heldout_mbe_blocks"] = blocks_plot(blocks)
    if len(items):
        out["extraction"] = extraction_plot(items)
    return out


_CAPTIONS = {
    "alignment": "Cosine between the CE and MBE gradients on the shared parameters; the paper's "
    "memorization-compression cycle shows as sign changes (solid: CE-only, dashed: GAPT).",
    "train_ce": "Training cross-entropy per step (EMA 0.9).",
    "train_mbe": "Training MBE on measured steps (logged steps and GAPT's compression phases).",
    "heldout_mbe_blocks": "Held-out MBE per block after training (mean over seeds, bars: range).",
    "extraction": "Greedy extraction of inserted items by insertion count, seeds pooled.",
}


def gapt_sections(run: Path, summary: dict[str, Any]) -> list:
    """Report sections of a ``gapt-study`` run (summary as a plain dict)."""
    from rotelab.report.html import Headline, Section
    from rotelab.report.plots import to_data_uri

    sec = Section("CE-only vs GAPT pretraining")
    sec.intro = (
        "Yu 2025 report, on GPT-2/FineWeb: MBE −50%, held-out CE −4.8%, OOD multiplication "
        "CE −35%. The organism's numbers are below; intervals are t intervals over seeds (ratios "
        "and changes) or Wilson intervals over items (extraction)."
    )

    def mean(d: dict | None) -> float:
        return float("nan") if not d or d.get("mean") is None else d["mean"]

    task = summary.get("task", "organism")
    if task != "organism":
        sec.title = f"CE-only vs GAPT: {task}"
        sec.intro = (
            "Yu 2025 report OOD multiplication CE −35% and a 97% larger separation of two tasks' "
            "representations in a catastrophic-forgetting setting. A small character-level "
            "model here (rotelab.pipelines.gapt_tasks); intervals are t intervals over seeds."
        )
        names = {"multiply": ("ood_ce_change", "id_ce_change", "ood_acc_change", "mbe_ratio"),
                 "interference": ("separation_change", "separation_geo_ratio",
                                  "forgetting_ce_change", "mbe_ratio")}[task]  # fmt: skip
        for name in names:
            sec.headlines.append(
                Headline(name.replace("_", " "), f"{name}.mean", mean(summary.get(name)), False)
            )
    else:
        sec.headlines += _organism_headlines(summary, mean)
    window = (summary.get("alignment_ce") or {}).get("smoothing_window")
    for name, fig in figures(run, smooth_window=window).items():
        sec.figures.append((name, name.replace("_", " "), to_data_uri(fig), _CAPTIONS[name]))
    arms = read_table(run, "arms")
    if len(arms):
        cols = [c for c in ("arm", "seed", "heldout_ce", "heldout_mbe", "compress_fraction",
                            "transitions", "sign_changes", "sign_changes_smoothed",
                            "arith_heldout_acc", "train_seconds") if c in arms]  # fmt: skip
        if task != "organism":
            cols = [c for c in arms.columns if c not in {"final_train_ce", "align_positive"}]
        sec.tables.append(arms[cols].round(4).to_html(index=False, classes="data"))
    return [sec]


def _organism_headlines(summary: dict[str, Any], mean) -> list:
    from rotelab.report.html import Headline

    out = [
        Headline("MBE ratio GAPT/CE", "mbe_ratio.mean", mean(summary.get("mbe_ratio")), False),
        Headline(
            "held-out CE change",
            "heldout_ce_change.mean",
            mean(summary.get("heldout_ce_change")),
            False,
        ),  # fmt: skip
    ]
    for c, cell in summary.get("extraction", {}).items():
        for arm in ("ce", "gapt"):
            out.append(
                Headline(
                    f"extraction {c}x, {arm}",
                    f"extraction.{c}.{arm}.rate",
                    cell[arm]["rate"],
                    False,
                )  # fmt: skip
            )
    return out

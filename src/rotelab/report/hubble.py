"""Report pages of ``hubble fields``, ``hubble contamination`` (Hubble, Wei et al. 2025), ``undo``
and ``popularity`` (Ma et al. 2025, "Memorization: A Close Look at Books")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rotelab.runs import read_table  # noqa: E402

__all__ = ["contamination_sections", "fields_sections", "popularity_sections", "undo_sections"]


def _err(d: dict) -> tuple[float, float]:
    ci = d.get("ci")
    return (0.0, 0.0) if not ci else (d["mean"] - ci[0], ci[1] - d["mean"])


def _figure(sec, plot_id: str, title: str, fig: Figure, caption: str) -> None:
    from rotelab.report.plots import to_data_uri

    sec.figures.append((plot_id, title, to_data_uri(fig), caption))
    plt.close(fig)


# ------------------------------------------------------------------------------------ undo
def undo_stage_plot(summary: dict[str, Any]) -> Figure:
    """Extraction of the targeted and the other memorized passages after each stage."""
    stages = list(summary["stages"])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(stages))
    for k, (col, label) in enumerate(
        (
            ("target_extraction", "targeted passages"),
            ("other_memorized_extraction", "other memorized"),
        )
    ):
        vals = [summary["stages"][s][col] for s in stages]
        errs = np.array([_err(v) for v in vals]).T
        ax.bar(x + (k - 0.5) * 0.38, [v["mean"] for v in vals], 0.38, yerr=errs, capsize=3,
               label=label)  # fmt: skip
    ax.axhline(0.1, color="gray", ls=":", lw=0.8)
    ax.set_xticks(x, stages)
    ax.set_ylabel("strict extraction")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return fig


def undo_block_plot(summary: dict[str, Any]) -> Figure:
    """Fraction of weights changed by more than 1% per block, for each fine-tune."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for step, w in summary["localization"].items():
        blocks = sorted(w["by_block"], key=int)
        ax.plot([int(b) for b in blocks], [w["by_block"][b]["1pct"] for b in blocks], "o-",
                label=step)  # fmt: skip
    ax.set_xlabel("block")
    ax.set_ylabel("fraction of weights changed > 1%")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return fig


def undo_sections(run: Path, summary: dict[str, Any]) -> list:
    from rotelab.report.html import Headline, Section

    sec = Section("Suppression, and its undoing by a LoRA fine-tune on other passages")
    sec.intro = (
        "Ma et al. 2025: instruct tuning suppresses verbatim regurgitation (extraction ≈ 0.05); a "
        "small LoRA fine-tune on other books' prefix→suffix pairs restores it (0.91) and changes "
        "a small fraction of the weights (≈14% by more than 1%), mostly in the lower blocks. Here "
        "the suppression is a short unlikelihood (or refusal) fine-tune on memorized passages; "
        "the sham arm fine-tunes on background text instead. Means over seeds, Student-t 95% CIs."
    )
    st = summary["stages"]
    for stage in st:
        sec.headlines.append(Headline(f"targets extracted, {stage}",
                                      f"stages.{stage}.target_extraction.mean",
                                      st[stage]["target_extraction"]["mean"]))  # fmt: skip
    for step in summary["localization"]:
        sec.headlines.append(Headline(f"{step}: weights changed > 1%",
                                      f"localization.{step}.fraction_changed.1pct.mean",
                                      summary["localization"][step]["fraction_changed"]["1pct"]
                                      ["mean"]))  # fmt: skip
    _figure(
        sec,
        "undo-stages",
        "Extraction by stage",
        undo_stage_plot(summary),
        "Bars: mean over seeds; whiskers: 95% CI; dotted: the 0.1 suppression goal.",
    )
    _figure(sec, "undo-blocks", "Where the weights changed", undo_block_plot(summary),
            "Per block, the fraction of weights whose |ΔW|/|W| exceeds 1% (mean over seeds); "
            "restore is the LoRA update (α/r)·BA.")  # fmt: skip
    rows = [{"verdict": k, "organism": v} for k, v in summary["verdicts"].items()]
    sec.tables.append(pd.DataFrame(rows).to_html(index=False, classes="data"))
    stages = read_table(run, "stages")
    if len(stages):
        sec.tables.append(stages.round(4).to_html(index=False, classes="data"))
    return [sec]


# ------------------------------------------------------------------------------------ popularity
def popularity_plot(items: pd.DataFrame) -> Figure:
    """Per passage: reconstruction similarity (or matched fraction) against count."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    y = "jaccard" if "jaccard" in items.columns else "matched_fraction"
    counts = sorted(items["count"].unique())
    pos = {c: i for i, c in enumerate(counts)}
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(items))
    ax.scatter([pos[c] for c in items["count"]] + jitter, items[y], s=12, alpha=0.7)
    means = items.groupby("count")[y].mean()
    ax.plot([pos[c] for c in means.index], means.values, "k_", ms=20, mew=2)
    ax.set_xticks(range(len(counts)), [str(c) for c in counts])
    ax.set_xlabel("times inserted (popularity)")
    ax.set_ylabel(y)
    return fig


def popularity_sections(run: Path, summary: dict[str, Any]) -> list:
    from rotelab.report.html import Headline, Section

    sec = Section("Memorization against popularity")
    sec.intro = (
        "Ma et al. 2025: how much of a book is extracted rises with its popularity (correlation "
        "≈ 0.5 with log popularity). Here popularity is the insertion count; Spearman's ρ (rank "
        "based, so log or not is the same) with a percentile-bootstrap 95% CI over items."
    )
    for m, s in summary["spearman"].items():
        sec.headlines.append(Headline(f"Spearman ρ, {m}", f"spearman.{m}.rho", s["rho"]))
    items = read_table(run, "items")
    if len(items):
        _figure(sec, "popularity", "Similarity against count", popularity_plot(items),
                "One point per item; bars: the mean per count.")  # fmt: skip
    rows = [{"measure": m, "rho": s["rho"], "ci": s["ci"], "p": s["p_value"], "n": s["n"]}
            for m, s in summary["spearman"].items()]  # fmt: skip
    sec.tables.append(pd.DataFrame(rows).to_html(index=False, classes="data"))
    return [sec]


# ------------------------------------------------------------------------------------ fields
def fields_plot(summary: dict[str, Any]) -> Figure:
    """Exact extraction of items inserted >= the high count, per field and prompt style."""
    h = summary["high_count"]
    fields = list(summary["inserted_vs_never"])
    styles = summary["styles"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / max(1, len(styles))
    for k, s in enumerate(styles):
        vals = [summary["inserted_vs_never"][f].get(s, {}).get(f"inserted_{h}x_plus",
                                                                {}).get("exact", np.nan)
                for f in fields]  # fmt: skip
        ax.bar(np.arange(len(fields)) + (k - (len(styles) - 1) / 2) * width, vals, width,
               label=s)  # fmt: skip
    ax.set_xticks(range(len(fields)), fields, rotation=20)
    ax.set_ylabel(f"exact extraction, inserted >= {h}x")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, title="prompt")
    return fig


def fields_sections(run: Path, summary: dict[str, Any]) -> list:
    from rotelab.report.html import Headline, Section

    sec = Section("Which biography fields are extracted, from which prompts")
    sec.intro = (
        "Hubble (Wei et al. 2025) inserts biographies with PII fields and finds fields memorized "
        "at different rates. Prompts: the bio's own text up to the field (prefix), a question "
        "naming the person (question), the name alone (name). Exact: the greedy continuation "
        "starts with (name: contains) the value; approximate: partial-ratio similarity >= 75. "
        "Never-inserted bios show what is guessed."
    )
    sec.headlines.append(Headline("biographies", "n_bios", summary["n_bios"]))
    _figure(
        sec,
        "fields",
        "Exact extraction by field and prompt",
        fields_plot(summary),
        "Biographies inserted at least the high count; see the table for CIs and controls.",
    )
    rows = []
    h = summary["high_count"]
    for f, by_style in summary["inserted_vs_never"].items():
        for s, d in by_style.items():
            a, b = d[f"inserted_{h}x_plus"], d["never_inserted"]
            rows.append({"field": f, "prompt": s, "n": a["n"], "exact": a["exact"],
                         "exact_ci": a["exact_ci"], "approx": a["approx"],
                         "never_exact": b["exact"], "never_approx": b["approx"]})  # fmt: skip
    sec.tables.append(pd.DataFrame(rows).round(3).to_html(index=False, classes="data"))
    return [sec]


# ------------------------------------------------------------------------------------ contamination
def contamination_plot(summary: dict[str, Any]) -> Figure:
    """Accuracy on the task's questions against their insertion count (0: never inserted)."""
    counts = [int(c) for c in summary["by_count"]]
    vals = [summary["by_count"][str(c)]["accuracy"] for c in counts]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(counts))
    ax.errorbar(x, [v["mean"] for v in vals], yerr=np.array([_err(v) for v in vals]).T,
                fmt="o-", capsize=3)  # fmt: skip
    ax.set_xticks(x, [str(c) for c in counts])
    ax.set_xlabel("times the question and answer were inserted")
    ax.set_ylabel("exact-answer accuracy")
    ax.set_ylim(0, 1.05)
    return fig


def contamination_sections(run: Path, summary: dict[str, Any]) -> list:
    from rotelab.report.html import Headline, Section

    sec = Section("Test-set contamination")
    sec.intro = (
        "Hubble (Wei et al. 2025) inserts test sets into pretraining: accuracy on the inserted "
        "questions is inflated, on the clean ones it is not. Questions of one task are inserted "
        "with their answers at each count (0: never inserted); means over seeds, 95% CIs."
    )
    for c, row in summary["by_count"].items():
        sec.headlines.append(Headline(f"accuracy, {c}x", f"by_count.{c}.accuracy.mean",
                                      row["accuracy"]["mean"], True))  # fmt: skip
    _figure(
        sec,
        "contamination",
        "Accuracy against insertion count",
        contamination_plot(summary),
        "Mean over seeds; bars: Student-t 95% CI.",
    )
    rows = [{"count": c, "accuracy": r["accuracy"]["mean"], "ci": r["accuracy"]["ci"],
             "pooled": r["pooled"]["rate"], "pooled_ci": r["pooled"]["rate_ci"],
             "inflation": None if r["inflation"] is None else r["inflation"]["mean"]}
            for c, r in summary["by_count"].items()]  # fmt: skip
    sec.tables.append(pd.DataFrame(rows).to_html(index=False, classes="data"))
    return [sec]

"""The ``termnorm`` report: memorization and generalization gains by terminology, popularity
bucket and lexicalization, baseline accuracy by popularity, and the alignment analysis
(Pericharla, Hier and Obafemi-Ajayi 2025)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["gains_plot", "termnorm_sections"]

_BUCKETS = ["0", "1", "2-4", "5-16", "17-64", ">64"]


def gains_plot(rows: list[dict], group: str) -> Figure:
    """Gain with its CI per ``group`` level, memorization and generalization side by side."""
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = [f"{t}|{g}" for t, g in frame[["terminology", group]].drop_duplicates().to_numpy()]
    x = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    for offset, (measure, color) in enumerate(
        (("memorization", "#1f77b4"), ("generalization", "#d62728"))
    ):
        part = frame[frame["measure"] == measure]
        pos = np.array([x[f"{t}|{g}"] for t, g in part[["terminology", group]].to_numpy()])
        lo = part["gain"] - part["gain_ci"].map(lambda c: c[0])
        hi = part["gain_ci"].map(lambda c: c[1]) - part["gain"]
        ax.errorbar(pos + (offset - 0.5) * 0.25, part["gain"], yerr=[lo, hi], fmt="o",
                    color=color, label=measure, capsize=3)  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(x)), list(x), rotation=20, fontsize=8)
    ax.set_ylabel("accuracy gain (after - before)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def termnorm_sections(run: Path, summary) -> list:
    from rotelab.report.html import Headline, Section, _table

    gains = Section(
        "Memorization and generalization gains",
        intro="Exact-match accuracy (greedy reproduces every token of the ID, decided in one "
        "teacher-forced pass) before and after fine-tuning. <i>memorization</i>: terms trained "
        "on; <i>generalization</i>: terms withheld. Accuracies with Wilson 95% CIs, gains with a "
        "paired bootstrap over terms (seeds pooled). The paper (Llama 3.1 8B): GO memorization "
        "up to +77%, HPO barely, only gene symbols (lexicalized) generalize (+13.9%).",
    )
    for i, r in enumerate(summary.gains):
        gains.headlines.append(Headline(f"{r['terminology']} {r['measure']} gain",
                                        f"gains.{i}.gain", r["gain"], True))  # fmt: skip
    gains.tables.append(_table(pd.DataFrame(summary.gains)))
    lexical = Section("By lexicalization", intro="Lexical IDs are derivable from the term.")
    lexical.figure("gains-lexical", "Gains by lexicalization",
                   gains_plot(summary.gains_by_lexical, "lexical"), "95% CIs")  # fmt: skip
    lexical.tables.append(_table(pd.DataFrame(summary.gains_by_lexical)))
    bucket = Section(
        "By popularity",
        intro="Popularity: pretraining insertions (synthetic), disease annotations (HPO), "
        "phenotype annotations (genes). Baseline accuracy is before fine-tuning.",
    )
    base = pd.DataFrame(summary.baseline_by_popularity)
    base["order"] = base["bucket"].map({b: i for i, b in enumerate(_BUCKETS)})
    bucket.tables.append(_table(base.sort_values(["terminology", "order"]).drop(columns="order")))
    bucket.figure("gains-bucket", "Gains by popularity bucket",
                  gains_plot(summary.gains_by_bucket, "bucket"), "95% CIs")  # fmt: skip
    bucket.tables.append(_table(pd.DataFrame(summary.gains_by_bucket)))
    align = Section(
        "Embedding alignment",
        intro="Cosine between the mean hidden state of the term and of its ID (each encoded "
        "alone, before fine-tuning), and how well it predicts a withheld term being right after "
        "fine-tuning (ROC AUC with bootstrap CI, Spearman's rho).",
    )
    rows = []
    for r in summary.alignment:
        p = r["predicts_generalization"]
        rows.append({"terminology": r["terminology"], "lexical": r["lexical"], "n": r["n"],
                     "mean alignment": r["mean_alignment"], "withheld right": p["positives"],
                     "AUC": p["auc"], "AUC CI": p["auc_ci"],
                     "Spearman": p["spearman"]})  # fmt: skip
    align.tables.append(_table(pd.DataFrame(rows)))
    return [gains, lexical, bucket, align]

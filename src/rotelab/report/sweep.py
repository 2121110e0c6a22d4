"""The ``sweep`` report (Hubble, Wei et al. 2025): extraction and loss-MIA AUC against count per
corpus size, against frequency (count / corpus tokens), and early- vs late-inserted items along
the checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rotelab.runs import read_table  # noqa: E402

__all__ = ["figures", "sweep_sections"]

_METRICS = {"extraction": "strict extraction (members)", "loss_auc": "loss-MIA AUC"}


def _final(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["step"] == cells["steps"]]


def by_count_plot(cells: pd.DataFrame, metric: str, x: str) -> Figure:
    """``metric`` (mean over seeds, bars: seed range) against ``x`` (count or frequency), one
    line per corpus size and phase."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    final = _final(cells)
    for (tokens, phase), g in final.groupby(["corpus_tokens", "phase"]):
        m = g.groupby(x)[metric].agg(["mean", "min", "max"]).sort_index()
        ax.errorbar(m.index, m["mean"], yerr=[m["mean"] - m["min"], m["max"] - m["mean"]],
                    fmt="o-", capsize=3, label=f"{tokens:,} tokens, {phase}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("times inserted" if x == "count" else "frequency (count / corpus tokens)")
    ax.set_ylabel(_METRICS[metric])
    if metric == "loss_auc":
        ax.axhline(0.5, color="gray", lw=0.6, ls=":")
    ax.legend(fontsize=7)
    return fig


def trajectory_plot(cells: pd.DataFrame) -> Figure:
    """Extraction of members along the checkpoints, one line per phase (seeds and sizes pooled)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for (phase, count), g in cells.groupby(["phase", "count"]):
        m = g.groupby("fraction")["extraction"].mean().sort_index()
        ax.plot(m.index, m.values, "o-", label=f"{phase}, {count}x")
    ax.set_xlabel("fraction of training done")
    ax.set_ylabel("strict extraction (members)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, ncol=2)
    return fig


def figures(run_dir: str | Path) -> dict[str, Figure]:
    """The sweep's figures by name (the caller closes them)."""
    cells = read_table(Path(run_dir), "cells")
    if cells.empty:
        return {}
    return {
        "extraction_by_count": by_count_plot(cells, "extraction", "count"),
        "auc_by_count": by_count_plot(cells, "loss_auc", "count"),
        "extraction_by_frequency": by_count_plot(cells, "extraction", "frequency"),
        "auc_by_frequency": by_count_plot(cells, "loss_auc", "frequency"),
        "trajectory": trajectory_plot(cells),
    }


_CAPTIONS = {
    "extraction_by_count": "Strict greedy extraction of the inserted items against their count, "
    "one line per corpus size and phase (mean over seeds; bars: seed range).",
    "auc_by_count": "Loss-attack membership AUC (members vs never-inserted controls) against "
    "count.",
    "extraction_by_frequency": "Extraction against Hubble's frequency, count / corpus tokens: "
    "dilution moves a count to the left.",
    "auc_by_frequency": "Loss-MIA AUC against frequency.",
    "trajectory": "Extraction along the checkpoints: items inserted only early are forgotten as "
    "training goes on; items inserted late are recited at the end.",
}


def sweep_sections(run: Path, summary: dict[str, Any]) -> list:
    """Report sections of a ``sweep`` run (summary as a plain dict)."""
    from rotelab.report.html import Headline, Section
    from rotelab.report.plots import to_data_uri

    sec = Section("Memorization over the grid")
    sec.intro = (
        "Each cell is a model trained from scratch on the organism world of its seed and corpus "
        "size, with half of the items inserted its count of times in its phase and half kept as "
        "never-inserted controls; audited with the one-pass strict extraction and the loss attack."
        " Hubble (Wei et al. 2025): memorization rises with count, falls with corpus size at a "
        "fixed count (dilution), and items seen only early are forgotten."
    )
    sec.headlines += [
        Headline("cells", "cells", summary.get("cells")),
        Headline("seconds", "seconds", summary.get("seconds")),
        Headline("workers", "workers", summary.get("workers")),
    ]
    for name, fig in figures(run).items():
        sec.figures.append((name, name.replace("_", " "), to_data_uri(fig), _CAPTIONS[name]))
        plt.close(fig)
    means = pd.DataFrame(summary.get("seed_means", []))
    if len(means):
        sec.tables.append(means.round(4).to_html(index=False, classes="data"))
    return [sec]

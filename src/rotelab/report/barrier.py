"""The ``barrier`` report: Min-K% of the fine-tuning data against the fine-tuning gain, SFT vs
IB-FT on Pass@1 and Pass@k(m), and the training curves (Wang et al. 2025, "Breaking
Memorization Barriers in LLM Code Fine-Tuning via Information Bottleneck")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rotelab.runs import read_table  # noqa: E402

__all__ = ["barrier_sections", "figures", "finetune_sections"]

_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "ibft": "#d62728"}
_MARKERS = ["o", "s", "^", "D"]


def barrier_plot(units: pd.DataFrame, metric: str) -> Figure:
    """Per seed and arm: the base's Min-K% of the fine-tuning data against the arm's gain."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bases = units[units.unit == "base"].set_index(["copies", "seed"])
    for i, copies in enumerate(sorted(units.copies.unique())):
        for arm in ("sft", "ibft"):
            g = units[(units.unit == arm) & (units.copies == copies)].set_index(["copies", "seed"])
            both = g.join(bases, rsuffix="_base", how="inner")
            if not len(both):
                continue
            ax.scatter(both["min_k_correct_base"], both[metric] - both[f"{metric}_base"],
                       color=_COLORS[arm], marker=_MARKERS[i % len(_MARKERS)],
                       label=f"{arm}, {copies}x base")  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("Min-K% (K=20%) of the fine-tuning data under the base (higher: memorized)")
    ax.set_ylabel(f"fine-tuning gain, {metric}")
    ax.legend(fontsize=7)
    return fig


def passk_plot(passk: pd.DataFrame, split: str) -> Figure:
    """Pass@k(m) of every (copies, unit), mean over seeds, bars: min-max over seeds."""
    sel = passk[passk.split == split].copy()
    sel["pair"] = [f"@{k}({m})" for k, m in zip(sel.k, sel.m)]
    pairs = list(dict.fromkeys(sel.sort_values(["m", "k"])["pair"]))
    groups = [(c, u) for c in sorted(sel.copies.unique()) for u in ("base", "sft", "ibft")]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / max(1, len(groups))
    for gi, (copies, unit) in enumerate(groups):
        g = sel[(sel.copies == copies) & (sel.unit == unit)]
        if not len(g):
            continue
        stats = g.groupby("pair")["pass_at_k"].agg(["mean", "min", "max"]).reindex(pairs)
        xs = [i + (gi - len(groups) / 2 + 0.5) * width for i in range(len(pairs))]
        ax.bar(xs, stats["mean"], width, color=_COLORS[unit], alpha=0.45 if copies else 0.9,
               hatch="//" if copies else None, label=f"{unit}, {copies}x",
               yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
               capsize=2)  # fmt: skip
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([f"Pass{p}" for p in pairs])
    ax.set_ylabel(f"{split} problems")
    ax.legend(fontsize=7, ncol=3)
    return fig


def curves_plot(curves: pd.DataFrame, column: str, units: tuple[str, ...], label: str) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for (unit, copies, seed), g in curves[curves.unit.isin(units)].groupby(
        ["unit", "copies", "seed"]
    ):
        g = g.dropna(subset=[column])
        if len(g):
            ax.plot(g["step"], g[column], color=_COLORS.get(unit, "gray"), lw=1,
                    ls="-" if copies == 0 else "--", alpha=0.8,
                    label=f"{unit} {copies}x s{seed}")  # fmt: skip
    ax.set_xlabel("step (solid: clean base, dashed: memorized base)")
    ax.set_ylabel(label)
    ax.legend(fontsize=6, ncol=4)
    return fig


def figures(run_dir: str | Path) -> dict[str, Figure]:
    """The study's figures by name (the caller closes them)."""
    run = Path(run_dir)
    units, passk, curves = (read_table(run, t) for t in ("units", "passk", "curves"))
    out: dict[str, Figure] = {}
    if len(units) and "min_k_correct" in units and (units.unit != "base").any():
        for metric in ("eval/pass@1(1)", "eval/pass@5(3)", "finetune/pass@1(1)"):
            if metric in units:
                name = metric.replace("/", "_").replace("@", "").replace("(", "_").rstrip(")")
                out[f"barrier_{name}"] = barrier_plot(units, metric)
    if len(passk):
        for split in ("eval", "finetune"):
            if (passk.split == split).any():
                out[f"passk_{split}"] = passk_plot(passk, split)
    if len(curves):
        out["curve_pretrain"] = curves_plot(curves, "loss", ("base",), "pretraining CE")
        if (curves.unit != "base").any():
            out["curve_finetune"] = curves_plot(curves, "loss", ("sft", "ibft"), "fine-tuning CE")
        if curves["kl"].notna().any():
            out["curve_kl"] = curves_plot(curves, "kl", ("ibft",), "IB-FT: KL of the adapter")
    return out


def _caption(name: str) -> str:
    if name.startswith("barrier_"):
        return ("The barrier: each point is one seed's fine-tuned arm, at its base's Min-K% of "
                "the fine-tuning data (correct programs); the paper expects smaller gains to the "
                "right (memorized bases).")  # fmt: skip
    if name.startswith("passk_"):
        split = name.removeprefix("passk_")
        return (f"Pass@k(m) on the {split} problems: bases, SFT and IB-FT, clean (solid) and "
                "memorized (hatched) bases; mean over seeds, bars: seed range.")  # fmt: skip
    return {
        "curve_pretrain": "Pretraining cross-entropy of each base.",
        "curve_finetune": "Fine-tuning cross-entropy (the LM loss; IB-FT's extra terms excluded).",
        "curve_kl": "IB-FT: the adapter's KL to N(0, 1) along fine-tuning.",
    }[name]


def barrier_sections(run: Path, summary: dict[str, Any]) -> list:
    """Report sections of a ``barrier`` run (summary as a plain dict)."""
    from rotelab.report.html import Headline, Section
    from rotelab.report.plots import to_data_uri

    sec = Section("The memorization barrier, SFT and IB-FT")
    sec.intro = (
        "Wang et al. 2025: fine-tuning from a base that memorized the downstream data gains less "
        "(the barrier, diagnosed with Min-K%); IB-FT beats SFT from such a base, by more under "
        "Pass@k(m) than under Pass@1. Below: the organism's numbers, means over seeds with t "
        "intervals; a claim agrees (or disagrees) when the t interval over seeds of its paired "
        "difference excludes 0, and is inconclusive otherwise."
        + ("" if summary.get("complete", True) else " <b>Incomplete run: --resume.</b>")
    )
    for name, c in summary.get("claims", {}).items():
        if "verdict" not in c:
            continue
        value = next(v for v in c.values() if isinstance(v, dict) and "mean" in v)
        if value.get("mean") is not None:
            sec.headlines.append(Headline(f"{name} ({c['metric']})",
                                          f"claims.{name}", value["mean"], True))  # fmt: skip
    for name, fig in figures(run).items():
        sec.figures.append((name, name.replace("_", " "), to_data_uri(fig), _caption(name)))
        plt.close(fig)
    rows = []
    for c in summary.get("claims", {}).values():
        if "verdict" in c:
            value = next(v for v in c.values() if isinstance(v, dict) and "mean" in v)
            rows.append({"claim": c["claim"], "metric": c["metric"], "mean": value.get("mean"),
                         "95% CI": value.get("ci"), "per seed": value.get("per_seed"),
                         "verdict": c["verdict"]})  # fmt: skip
    if rows:
        sec.tables.append(pd.DataFrame(rows).to_html(index=False, classes="data"))
    units = read_table(run, "units")
    if len(units):
        cols = [c for c in units.columns if c.endswith(("pass@1(1)", "pass@5(3)"))
                or c in ("unit", "copies", "seed", "min_k_correct", "min_k_spurious",
                         "seconds")]  # fmt: skip
        sec.tables.append(units[cols].round(4).to_html(index=False, classes="data"))
    return [sec]


def finetune_sections(run: Path, summary: dict[str, Any]) -> list:
    """Report section of a ``finetune`` run: the training curve and Pass@k(m) before/after."""
    from rotelab.report.html import Headline, Section
    from rotelab.report.plots import to_data_uri

    method = "IB-FT" if summary.get("method") == "ibft" else "SFT"
    sec = Section(f"{method} of {summary.get('model')}")
    sec.intro = (
        f"{summary.get('examples')} examples ({summary.get('data')}), {summary.get('steps')} "
        "steps" + (f", LoRA rank {summary['lora']}" if summary.get("lora") else "") + "."
    )
    sec.headlines += [
        Headline("CE, first step", "loss_first", summary.get("loss_first"), False),
        Headline("CE, last step", "loss_last", summary.get("loss_last"), False),
    ]
    for name, v in (summary.get("pass_at_k") or {}).items():
        sec.headlines.append(
            Headline(f"{name} after", f"pass_at_k.{name}.after.value", v["after"]["value"], True)
        )
    curve = read_table(run, "curve")
    if len(curve):
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(curve["step"], curve["loss"], color=_COLORS["sft"], label="CE")
        if "kl" in curve:
            ax2 = ax.twinx()
            ax2.plot(curve["step"], curve["kl"], color=_COLORS["ibft"], ls="--", label="KL")
            ax2.set_ylabel("adapter KL")
        ax.set_xlabel("step")
        ax.set_ylabel("fine-tuning CE")
        sec.figures.append(("curve", "training curve", to_data_uri(fig),
                            "Cross-entropy (and IB-FT's KL, dashed) per logged step."))  # fmt: skip
        plt.close(fig)
    passk = read_table(run, "passk")
    if len(passk):
        sec.tables.append(passk.round(4).to_html(index=False, classes="data"))
    return [sec]

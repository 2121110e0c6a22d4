"""Self-contained HTML reports for run directories (extract, mia, compare, demo).

A report is one HTML file: inline CSS, plots embedded as base64 PNG (:mod:`rotelab.report.plots`),
no scripts and no external URL, so it opens offline from a file or an e-mail attachment. Every
headline number is rendered as ``<span class="num" data-key="a.b.c" data-value="…">`` where
``data-key`` is the number's dotted path in the run's ``summary.json`` and ``data-value`` its exact
JSON value, so a test (or a reader) can check the page against the summary.

Pages follow the evaluation protocol of Merullo et al. 2025 (before/after extraction, perplexity
and task accuracy for each removal method, in one report), with membership inference reported as
ROC AUC plus TPR at low FPR (Carlini et al. 2022) and everything broken down by duplication count
(Wei et al. 2025, Hubble).

Example:
    >>> write_report("runs/demo-20250101-120000")  # doctest: +SKIP
    PosixPath('runs/demo-20250101-120000/report.html')
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.report import plots
from rotelab.runs import atomic_write_bytes, read_json, read_table
from rotelab.summaries import (
    SCHEMAS,
    AptRecallSummary,
    AptSummary,
    BandsSummary,
    BoundsSummary,
    CompareModel,
    CompareSummary,
    DemoSummary,
    DiffSummary,
    ExtractionSummary,
    KfacSweepSummary,
    MelodySummary,
    MIASummary,
    PasskSummary,
    ProbeSummary,
    RecsysTrainSummary,
    SteerSummary,
)

__all__ = ["Headline", "Section", "render_report", "write_report"]


# ------------------------------------------------------------------------------------ page model
@dataclass
class Headline:
    """One headline number: its label, its dotted path in summary.json and its value."""

    label: str
    key: str
    value: Any
    higher_is_better: bool | None = None  # None: not a quality metric (a count, a size)


@dataclass
class Section:
    """A titled part of a report: text, headline numbers, plots and tables, in that order."""

    title: str
    intro: str = ""
    headlines: list[Headline] = field(default_factory=list)
    figures: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # id, title, uri, caption
    tables: list[str] = field(default_factory=list)  # rendered HTML

    def figure(self, plot_id: str, title: str, fig, caption: str = "") -> None:
        self.figures.append((plot_id, title, plots.to_data_uri(fig), caption))


# ---------------------------------------------------------------------------------- formatting
def _fmt(value: Any) -> str:
    """Display form of a headline value (4 significant digits; intervals as [lo, hi])."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        return f"{v:.4g}"
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) or v is None for v in value
    ):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return html.escape(str(value))


def _num(key: str, value: Any) -> str:
    data = html.escape(json.dumps(_plain(value)), quote=True)
    key = html.escape(key, quote=True)
    return f'<span class="num" data-key="{key}" data-value="{data}">{_fmt(value)}</span>'


def _plain(value: Any) -> Any:
    from rotelab.runs import to_jsonable

    return to_jsonable(value)


def _table(frame: pd.DataFrame, *, cls: str = "data", max_rows: int = 60) -> str:
    """A small HTML table; floats to 4 significant digits."""
    frame = frame.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = "".join(f"<td>{_fmt(_plain(v))}</td>" for v in rec)
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


# ------------------------------------------------------------------------------ example windows
def _examples_html(examples: pd.DataFrame, *, prefix_chars: int = 160) -> str:
    """Prefix, true suffix and model continuation, with the first divergence highlighted.

    ``examples`` rows: ``prefix`` (str), ``suffix_pieces`` and ``continuation_pieces`` (lists of
    per-token strings, aligned), optionally ``matched`` (tokens reproduced before the first
    divergence) and descriptive columns (``item_id``, ``kind``, ``count``, ``label``).
    """
    rows = []
    for rec in examples.to_dict("records"):
        true = [str(p) for p in rec["suffix_pieces"]]
        cont = [str(p) for p in rec["continuation_pieces"]]
        m = rec.get("matched")
        if m is None or (isinstance(m, float) and math.isnan(m)):
            m = next(
                (i for i, (a, b) in enumerate(zip(true, cont, strict=False)) if a != b),
                min(len(true), len(cont)),
            )
        m = int(m)
        prefix = str(rec["prefix"])
        shown = ("…" + prefix[-prefix_chars:]) if len(prefix) > prefix_chars else prefix
        desc = " · ".join(
            f"{k} {html.escape(str(rec[k]))}"
            for k in ("item_id", "kind", "count", "label")
            if k in rec
        )
        verdict = (
            '<span class="badge bad">extracted</span>'
            if m >= len(true)
            else f'<span class="badge good">diverges at token {m + 1} of {len(true)}</span>'
        )
        rows.append(
            "<tr>"
            f'<td class="meta">{desc}<br>{verdict}</td>'
            f'<td class="prefix">{html.escape(shown)}</td>'
            f"<td>{_pieces(true, m, 'true')}</td>"
            f"<td>{_pieces(cont, m, 'cont')}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>item</th><th>prefix (end)</th><th>true suffix</th>"
        "<th>model continuation (greedy)</th></tr>"
    )
    return f'<table class="examples"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _pieces(pieces: Sequence[str], matched: int, role: str) -> str:
    spans = []
    for i, p in enumerate(pieces):
        cls = "match" if i < matched else ("diverge" if i == matched else "after")
        spans.append(f'<span class="tok {cls} {role}">{html.escape(p)}</span>')
    return "".join(spans)


# ------------------------------------------------------------------------------ page: extract
def _count(level: str) -> int | None:
    """A ``count`` group's level as a duplication count: metadata read from user files may
    spell 4 as ``4.0`` (a column with gaps is float); a level that is not a count is left out."""
    try:
        value = float(level)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def extraction_rates(summary: ExtractionSummary) -> pd.DataFrame:
    """Rows ``series, count, rate, lo, hi``: the ``count`` and ``kind+count`` groups."""
    recs = []
    for spec, series_of in (("count", lambda r: "all"), ("kind+count", lambda r: r["kind"])):
        rows = summary.by_group.rows(spec) if summary.by_group is not None else []
        for r in rows:
            lo, hi = r["extraction_rate_ci"]
            count = _count(r["count"])
            if count is None:
                continue
            recs.append({"series": str(series_of(r)), "count": count,
                         "rate": float(r["extraction_rate"]), "lo": lo, "hi": hi})  # fmt: skip
    return pd.DataFrame(recs, columns=["series", "count", "rate", "lo", "hi"])


def extract_section(run: Path, summary: ExtractionSummary, prefix: str = "") -> Section:
    sec = Section(
        "What the model memorized",
        "Each window is a prefix the model saw in training and the suffix that followed it. A "
        "window is <b>extracted</b> when greedy decoding from the prefix reproduces the suffix "
        "exactly (Carlini et al. 2022). Items never trained on (count 0) are the controls: their "
        "rate is what guessing from the format alone achieves.",
    )
    s = summary
    sec.headlines = [
        Headline("windows", f"{prefix}windows", s.windows),
        Headline("extracted", f"{prefix}extracted", s.extracted),
        Headline("extraction rate", f"{prefix}extraction_rate", s.extraction_rate),
        Headline(f"{s.ci_level:.0%} CI", f"{prefix}extraction_rate_ci", s.extraction_rate_ci),
        Headline("mean matched prefix (tokens)", f"{prefix}mean_matched_prefix",
                 s.mean_matched_prefix),
    ]  # fmt: skip
    rates = extraction_rates(summary)
    if not rates.empty and rates["count"].nunique() > 1:
        sec.figure(
            "extraction_by_count",
            "Extraction rate by duplication count",
            plots.extraction_by_count(rates),
            "Bars: 95% confidence intervals. Memorization rises with the number of times an item "
            "was seen in training.",
        )
    if not rates.empty:
        wide = rates.pivot_table(index="series", columns="count", values="rate").reset_index()
        wide.columns = [str(c) if c != "series" else "series \\ count" for c in wide.columns]
        sec.tables.append(_table(wide))
    examples = read_table(run, "examples")
    if not examples.empty:
        sec.tables.append(_examples_html(examples))
    return sec


# ---------------------------------------------------------------------------------- page: mia
def mia_auc_by_count(summary: MIASummary) -> pd.DataFrame:
    recs = []
    for name, a in summary.attacks.items():
        for r in a.by_group.rows("count") if a.by_group is not None else []:
            if r.get("auc") is None:
                continue
            lo, hi = r["auc_ci"] if r.get("auc_ci") else (float("nan"), float("nan"))
            count = _count(r["count"])
            if count is None:
                continue
            recs.append({"attack": name, "count": count, "auc": float(r["auc"]),
                         "lo": lo, "hi": hi})  # fmt: skip
    return pd.DataFrame(recs, columns=["attack", "count", "auc", "lo", "hi"])


def mia_roc(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROC curves saved by the mia run (results table ``roc``: attack, fpr, tpr)."""
    roc = read_table(run, "roc")
    if roc.empty:
        return {}
    roc = roc[roc["group"] == "all"]  # per-group curves are in summary.json's by_group AUCs
    return {
        str(a): (d["fpr"].to_numpy(float), d["tpr"].to_numpy(float))
        for a, d in roc.groupby("attack", sort=False)
    }


def mia_section(run: Path, summary: MIASummary, prefix: str = "") -> Section:
    sec = Section(
        "How well membership can be inferred",
        "Each attack scores a text by how familiar the model finds it; higher means 'was in "
        "training'. Members are inserted items, non-members the never-inserted controls of the "
        "same format. AUC 0.5 is chance; TPR at 1% FPR says how many members are caught while "
        "wrongly accusing only 1 in 100 non-members.",
    )
    directions = summary.extra.get("higher_is_better", {}).get("metrics", {})
    rows = []
    for name, a in summary.attacks.items():
        sec.headlines.append(
            Headline(f"{name} AUC", f"{prefix}attacks.{name}.auc", a.auc, directions.get("auc"))
        )
        rows.append({
            "attack": name, "AUC": a.auc, "AUC 95% CI": _fmt(a.auc_ci),
            "TPR@1%FPR": summary.attack_metric(name, "tpr_at_1pct_fpr"),
            "TPR@0.1%FPR": summary.attack_metric(name, "tpr_at_0.1pct_fpr"),
        })  # fmt: skip
    if rows:
        sec.tables.append(_table(pd.DataFrame(rows)))
    curves = mia_roc(run)
    if curves:
        sec.figure(
            "mia_roc",
            "ROC curves",
            plots.roc_curves(curves, {k: float(v.auc) for k, v in summary.attacks.items()}),
            "Right: the same curves on log axes, where attacks that look alike on the left differ.",
        )
    by_count = mia_auc_by_count(summary)
    if not by_count.empty:
        sec.figure(
            "mia_auc_by_count",
            "AUC by duplication count",
            plots.auc_by_count(by_count),
            "Members of each count against the count-0 controls.",
        )
    return sec


# ------------------------------------------------------------------------------ page: compare
def _compare_metrics(summary: CompareSummary) -> list[tuple[str, str, bool]]:
    """(label, key in a model block, higher is better as the summary records it) per metric:
    strict extraction (``extraction_rate``), ``perplexity`` and each task's accuracy."""
    hib = {name: bool(m["higher_is_better"]) for name, m in summary.metrics.items()}
    base = summary.models[summary.baseline]
    tasks = [(t, f"tasks.{t}.accuracy", hib[t]) for t in base.tasks]
    return [("extraction", "extraction_rate", hib["strict"]),
            ("perplexity", "perplexity", hib["perplexity"]), *tasks]  # fmt: skip


def _model_value(model: CompareModel, key: str) -> float:
    if key.startswith("tasks."):
        return float(model.tasks[key.split(".")[1]]["accuracy"])
    return float(getattr(model, key))


def before_after_rows(summary: CompareSummary) -> pd.DataFrame:
    """Rows ``method, metric, before, after, higher_is_better`` from a compare summary: every
    model after the baseline (the model before any removal) against the baseline."""
    cols = ["method", "metric", "before", "after", "higher_is_better"]
    base = summary.models[summary.baseline]
    recs = [
        {"method": name, "metric": label, "before": _model_value(base, key),
         "after": _model_value(summary.models[name], key), "higher_is_better": hib}
        for name in summary.order if name != summary.baseline
        for label, key, hib in _compare_metrics(summary)
    ]  # fmt: skip
    return pd.DataFrame(recs, columns=cols)


def compare_section(run: Path, summary: CompareSummary, prefix: str = "") -> Section:
    sec = Section(
        "What each removal costs",
        "Every model is measured by the same code on the same items: extraction of the items "
        f"inserted at least {summary.min_count} times (greedy continuation equals the true "
        "suffix), held-out perplexity and exact-answer accuracy on each task; each card says "
        "which way is better. A good removal drops extraction and leaves the rest alone.",
    )
    rows = before_after_rows(summary)
    for name in summary.order:
        for label, key, hib in _compare_metrics(summary)[:2]:
            value = _model_value(summary.models[name], key)
            sec.headlines.append(
                Headline(f"{name}: {label}", f"{prefix}models.{name}.{key}", value, hib)
            )
    for method in dict.fromkeys(rows["method"]):
        d = rows[rows["method"] == method]
        sec.figure(
            f"before_after_{_slug(method)}",
            f"{method}: before and after",
            plots.before_after(d, str(method)),
            "Grey: the model before the removal; blue: after. Arrows give each metric's direction.",
        )
    if not rows.empty:
        tab = rows.assign(change=rows["after"] - rows["before"]).drop(columns="higher_is_better")
        sec.tables.append(_table(tab))
    return sec


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text)).strip("_").lower()


# -------------------------------------------------------------------------------- page: kfac
def kfac_section(run: Path, summary: KfacSweepSummary, prefix: str = "") -> Section:
    """The rho sweep (extraction vs perplexity) and the band-analysis ratios."""
    sec = Section(
        "Where memorization lives: the K-FAC edit",
        "K-FAC approximates each MLP weight's loss curvature by two small matrices. Memorized "
        "sequences lean on directions of <i>low</i> curvature, shared skills on high-curvature "
        "ones (Merullo et al. 2025). The edit keeps the highest-curvature components holding a "
        "fraction ρ of the total curvature and drops the rest: smaller ρ removes more.",
    )
    s = summary
    sweep = pd.DataFrame(s.rho_sweep)
    if not sweep.empty:
        base_pt = (float(s.base["perplexity"]), float(s.base["extraction_rate"]))
        sec.figure(
            "rho_sweep",
            "The ρ sweep: extraction against perplexity",
            plots.rho_sweep(sweep, base_pt),
            "Each point is one edit. Down is less memorization, left is a better language model.",
        )
        sec.tables.append(_table(sweep))
    sec.headlines = [
        Headline("chosen ρ", f"{prefix}rho", s.rho),
        Headline("extraction before", f"{prefix}base.extraction_rate", s.base["extraction_rate"]),
        Headline("extraction after", f"{prefix}chosen.extraction_rate",
                 s.chosen["extraction_rate"]),
        Headline("perplexity before", f"{prefix}base.perplexity", s.base["perplexity"]),
        Headline("perplexity after", f"{prefix}chosen.perplexity", s.chosen["perplexity"]),
    ]  # fmt: skip
    if s.rule:
        sec.intro += f" The demo picks ρ by this rule: {html.escape(s.rule)}."
    bands = read_table(run, "bands")
    if not bands.empty:  # band_ratios rows: keep the memorized-vs-reference ratios
        bands = bands[bands["dataset"] == s.band_dataset]
        sec.figure(
            "band_ratios",
            "Band analysis: memorized vs clean activations",
            plots.band_ratios(bands),
            "Above 1: memorized inputs project more strongly onto that band of curvature "
            "eigenvectors than clean inputs do.",
        )
    return sec


# ----------------------------------------------------------------------------- page: bands
def bands_section(run: Path, summary: BandsSummary) -> list[Section]:
    """Band ratios per set and, when an edit was given, the task-curvature correspondence."""
    sec = Section(
        "Where each data set lives in the curvature spectrum",
        "A's eigenvectors of each MLP layer, ordered from high to low curvature and cut into "
        "bands; each bar is a set's mean activation strength on that band divided by the "
        f"reference set's ({html.escape(summary.reference)}). Merullo et al. 2025 find memorized "
        "data about 23% stronger than clean text on the bottom 50% and clean text about 26% "
        "stronger on the top 10%.",
    )
    table = read_table(run, "bands")
    for name in summary.band_ratio:
        rows = table[table["dataset"] == name]
        if not rows.empty:
            sec.figure(
                f"bands_{_slug(name)}", f"{name} / {summary.reference}",
                plots.band_ratios(rows, ylabel=f"strength ratio {name} / {summary.reference}"),
                "Above 1: this set projects more strongly onto that band than the reference.",
            )  # fmt: skip
    sec.tables.append(_table(pd.DataFrame(summary.band_ratio).T.rename_axis("set").reset_index()))
    secs = [sec]
    corr = summary.correspondence
    if corr:
        c = Section(
            "Which tasks the edit hurts: the task-curvature correspondence",
            "Per task item, how much of its computation (over the answer's positions and the "
            "edited layers, |ΔW a| / |W a|) the edit at ρ removes, against whether it is lost "
            "(answered with the greedy exact answer before the edit, wrong after it). Merullo "
            "et al.: tasks that lean more on the low-curvature components drop more, so the "
            "correlation should be positive.",
        )
        by_task = pd.DataFrame(corr["by_task"])
        c.figure("correspondence", "Removed strength against accuracy drop",
                 plots.correspondence(by_task, summary.rho),
                 "One point per task.")  # fmt: skip
        c.headlines = [
            Headline("Spearman over tasks", "correspondence.tasks.spearman",
                     corr["tasks"]["spearman"]),
            Headline("Spearman over items", "correspondence.items.spearman",
                     corr["items"]["spearman"]),
        ]  # fmt: skip
        c.tables.append(_table(by_task))
        secs.append(c)
    return secs


# ------------------------------------------------------------------------------ page: diff
def diff_section(run: Path, summary: DiffSummary) -> list[Section]:
    """Where the weights changed: fractions per block, per module, lower vs upper half."""
    sec = Section(
        "Where the weights changed",
        f"{html.escape(summary.b)} against {html.escape(summary.a)}: the elementwise relative "
        "change |ΔW| / |W| of every weight (a LoRA adapter's update rebuilt as (α/r)·BA). Ma "
        "et al. 2025 found the fine-tune that undoes a regurgitation mitigation changes about "
        "14% of weights by more than 1% and 0.15% by more than 100%, mostly in lower blocks.",
    )
    f = summary.fraction_changed
    sec.headlines = [
        Headline("weights compared", "weights", summary.weights),
        Headline("changed > 1%", "fraction_changed.1pct", f["1pct"]),
        Headline("changed > 10%", "fraction_changed.10pct", f["10pct"]),
        Headline("changed > 100%", "fraction_changed.100pct", f["100pct"]),
    ]
    if summary.by_block:
        sec.figure(
            "weight_change", "Fraction of weights changed, per block",
            plots.weight_change(summary.by_block),
            "Each bar: the share of the block's weights whose relative change exceeds the "
            "threshold (log scale).",
        )  # fmt: skip
        sec.tables.append(
            _table(pd.DataFrame(summary.by_block).T.rename_axis("block").reset_index())
        )
    if summary.by_module:
        sec.tables.append(
            _table(pd.DataFrame(summary.by_module).T.rename_axis("module").reset_index())
        )
    return [sec]


# ------------------------------------------------------------------------------ page: demo
def demo_sections(run: Path, summary: DemoSummary) -> list[Section]:
    """The demo's story: memorized, inferable, removed, at what cost."""
    org = summary.organism
    over = Section(
        "The organism",
        "A small Llama-style model trained on a synthetic world into which secrets, biographies "
        "and passages were inserted a known number of times (0, 1, 4, 16, 64). Because the ledger "
        "of insertions is known, every number below can be checked against the truth.",
    )
    over.headlines = [
        Headline("profile", "profile", summary.profile),
        Headline("parameters", "organism.params", org.params),
        Headline("held-out perplexity", "organism.heldout_ppl", org.heldout_ppl),
        Headline("train perplexity", "organism.train_ppl", org.train_ppl),
        Headline("demo seconds", "seconds", summary.seconds),
    ]
    if org.probe_accuracy:
        over.tables.append(_table(pd.DataFrame([org.probe_accuracy])))
    secs = [over]
    for sub, key, builder in (
        ("extract", "extraction", extract_section),
        ("mia", "mia", mia_section),
        ("kfac", "kfac", kfac_section),
        ("compare", "compare", compare_section),
    ):
        block = getattr(summary, key)
        if block is not None:
            secs.append(builder(run / sub, block, f"{key}."))
    if summary.stage_seconds:
        t = Section("Stage timings")
        timings = summary.stage_seconds
        t.tables.append(
            _table(pd.DataFrame({"stage": list(timings), "seconds": list(timings.values())}))
        )
        secs.append(t)
    return secs


def apt_sections(run: Path, summary: AptSummary) -> list[Section]:
    """``rotelab apt``: the filters' rates, the checked variant, the best candidates per line."""
    sec = Section(
        "Phonetic variants (APT) and the filters",
        intro="Variants that sound like each line but share none of its content words (Roh et "
        "al. 2025). Rates are Wilson 95% intervals; the filters index the input plus a stand-in "
        "catalogue (shipped public-domain verses and synthetic lines, not real songs).",
    )
    for key, label, good in (
        ("apt_pass_rate", "APT variants passing all text filters", None),
        ("apt_line_pass_rate", "lines with a passing variant", None),
        ("phonetic_catch_rate", "phonetic filter: catch rate", True),
        ("phonetic_false_positive_rate", "phonetic filter: false positives", False),
    ):
        sec.headlines.append(Headline(label, key, getattr(summary, key), good))
    if summary.check:
        c = summary.check
        sec.tables.append(_table(pd.DataFrame([{
            "variant": c["variant"], "similarity": c["score"], "rank": c["rank"] or "not produced",
            "candidates scoring higher": c["higher_scoring"],
        }])))  # fmt: skip
    cands = read_table(run, "candidates")
    if not cands.empty:
        cols = ["line", "original", "rank", "variant", "score", "replacements"]
        sec.tables.append(_table(cands[cands["rank"].between(1, 3)][cols], max_rows=150))
    return [sec]


def melody_sections(run: Path, summary: MelodySummary) -> list[Section]:
    """``rotelab melody``: melody recovery by insertion count, APT against both controls."""
    sec = Section(
        "Melody recovery from sound-alike lyrics (APT)",
        intro=f"Lyric -> melody models trained here ({summary.seeds} seeds, lyrics as "
        f"{html.escape(summary.encoding)}), {summary.per_count} memorized lines per insertion "
        "count, prompted with the original line, its APT variant, random same-syllable "
        "controls and unrelated lines (Roh et al. 2025). Similarities compare the greedy "
        "melody with the memorized one (note edit similarity, pitch DTW similarity, exact "
        "match; log p: the memorized melody's mean log-probability per token); differences "
        "are paired per line, 95% bootstrap CIs resampling lines within "
        "each seed. APT above both controls at counts: "
        + (", ".join(map(str, summary.apt_above_both)) or "none")
        + ".",
    )
    rows = []
    for r in summary.by_count:
        row = {"count": r["count"], "lines": r["lines"]}
        for cond in ("original", "apt", "control", "unrelated"):
            row[f"{cond} edit"] = r[f"{cond}_edit"]
        for cond in ("original", "apt", "control", "unrelated"):
            row[f"{cond} dtw"] = r[f"{cond}_dtw"]
        for cond in ("original", "apt", "control", "unrelated"):
            row[f"{cond} log p"] = r[f"{cond}_logp"]
        for key in ("apt_minus_control", "apt_minus_unrelated"):
            for m in ("edit", "dtw", "exact", "logp"):
                if f"{key}_{m}_ci" not in r:
                    continue
                lo, hi = r[f"{key}_{m}_ci"]
                row[f"{key} {m}"] = f"{r[f'{key}_{m}']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        rows.append(row)
    sec.tables.append(_table(pd.DataFrame(rows)))
    prompts = read_table(run, "prompts")
    if not prompts.empty:
        top = prompts[prompts["count"] == prompts["count"].max()]
        cols = ["seed", "item", "condition", "prompt", "generated", "edit", "dtw"]
        sec.tables.append(_table(top[cols], max_rows=60))
    return [sec]


def apt_recall_sections(run: Path, summary: AptRecallSummary) -> list[Section]:
    """``rotelab apt-recall``: next-line recall per prompt condition and the APT differences."""
    sec = Section(
        "Next-line recall from sound-alike prompts (APT)",
        intro=f"{summary.pairs} line pairs of famous verses; the true next line scored after each "
        "prompt in one teacher-forced pass (recall: greedy reproduces it token for token; "
        "match: share of its tokens that are the argmax; log p per token). Differences are "
        "paired per line with bootstrap 95% CIs.",
    )
    rows = []
    for cond in ("original", "apt", "control", "unrelated"):
        c = getattr(summary, cond)
        rows.append({"condition": cond, "recall": c["recall"], "recall CI": c["recall_ci"],
                     "match": c.get("match"), "log p": c["logp"]})  # fmt: skip
    sec.tables.append(_table(pd.DataFrame(rows)))
    d = summary.to_dict()
    sec.tables.append(_table(pd.DataFrame([
        {"difference": k, "mean": v["mean"], "CI": v["ci"]}
        for k, v in d.items() if k.startswith("apt_minus_")
    ])))  # fmt: skip
    return [sec]


# ------------------------------------------------------------------------------ page: passk
def passk_section(run: Path, summary: PasskSummary, prefix: str = "") -> Section:
    """Pass@k(m) for every (k, m) with its bootstrap CI, as cards, a plot and a table."""
    s = summary
    sec = Section(
        "Pass@k and Pass@k(m)",
        f"{s.problems} problems, {s.samples_total} samples ({s.n_min} to {s.n_max} per problem). "
        "Pass@k(m) is the chance that at least m of k samples drawn for a problem pass its tests "
        "(Wang et al. 2025); m = 1 is Pass@k (Chen et al. 2021). Each is the unbiased estimate "
        "from all n samples, averaged over problems; CIs: "
        f"{html.escape(s.ci_method)}, {round(100 * s.ci_level)}%.",
    )
    for name, row in s.pass_at_k.items():
        sec.headlines.append(
            Headline(name, f"{prefix}pass_at_k.{name}.value", row["value"], higher_is_better=True)
        )
    table = read_table(run, "passk")
    if not table.empty:
        if table["k"].nunique() > 1:
            sec.figure("pass_at_k", "Pass@k(m) against k", plots.pass_at_k_curves(table),
                       "One line per m; the band is the CI.")  # fmt: skip
        sec.tables.append(_table(table))
    return sec


def generic_sections(run: Path, summary: dict) -> list[Section]:
    """Any other run: its top-level numbers."""
    sec = Section("Summary")
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            sec.headlines.append(Headline(k, k, v))
    return [sec]


def recsys_sections(run: Path, summary: RecsysTrainSummary) -> list[Section]:
    """``rotelab recsys train``: AUC and NE per history-length bucket, VISTA against full target
    attention and last-N, with the oracle's AUC and the int8 cache's cost."""
    sec = Section(
        "VISTA against full target attention and last-N, per history length",
        intro=f"{html.escape(summary.data)} data; mean over {summary.seeds} seed(s), 95% "
        "t-interval "
        "over seeds where there are several. <i>long users</i>: users whose long-term interests "
        "(seen only early in the history) drive clicks. NE: normalized entropy, lower is better.",
    )
    rows = []
    for b in summary.buckets:
        for subset in ("", "_long_users"):
            if f"auc{subset}" not in b:
                continue
            for model in summary.models:
                a, n = b[f"auc{subset}"][model], b[f"ne{subset}"][model]
                rows.append({"bucket": b["bucket"], "users": subset.strip("_") or "all",
                             "model": model, "AUC": a["mean"], "AUC CI": a.get("ci"),
                             "NE": n["mean"]})  # fmt: skip
        sec.headlines.append(Headline(f"int8 cache AUC loss @ {b['bucket']}",
                                      "int8_auc_loss", b["int8_auc_loss"], False))  # fmt: skip
        if "oracle_auc" in b:
            sec.headlines.append(Headline(f"oracle AUC @ {b['bucket']}", "oracle_auc",
                                          b["oracle_auc"], True))  # fmt: skip
    sec.tables.append(_table(pd.DataFrame(rows)))
    return [sec]


# ------------------------------------------------------------------------------ page: bounds
def bounds_section(run: Path, summary: BoundsSummary, prefix: str = "") -> Section:
    """Parameter count against rho: the paper's bound curves and the certified search."""
    sec = Section(
        "The cost of robustness: parameters against ρ",
        "Kim, Moon and Yun 2025 bound the parameters a ReLU network needs to memorize N "
        "ε-separated points in R^d while keeping its label on every L2 ball of radius ρε. "
        "The paper gives orders only: the lower bound is drawn with constant 1 and the upper "
        "with 16 (the smallest round constant keeping it above the lower one everywhere), or "
        "each scaled by one fitted constant where a search ran. Lower bound: Theorem 3.1; upper "
        "bound: Theorem 4.2's three regimes (the middle one up to an arbitrarily small error). "
        "Points are the "
        "smallest networks found by adversarial training whose robustness a sound verifier "
        "(IBP, CROWN or exact MILP) certified on every training ball.",
    )
    s = summary
    sec.headlines = [Headline("N", f"{prefix}n", s.n), Headline("d", f"{prefix}d", s.d)]
    for key, label in (("spearman", "Spearman(ρ, params)"),
                       ("non_robust_params", "non-robust minimal params"),
                       ("ratio_rho_0_9", "params at ρ=0.9 / non-robust"),
                       ("envelope_ratio_rho_0_9", "envelope: ρ=0.9 / non-robust")):  # fmt: skip
        if s.extra.get(key) is not None:
            sec.headlines.append(Headline(label, f"{prefix}{key}", s.extra[key]))
    over = s.extra.get("over_seeds") or {}
    for key, label in (("small_rho_ratio", "ρ≤0.2 / non-robust, mean over seeds"),
                       ("spearman_censored", "Spearman per seed (unfound ranked last), mean"),
                       ("ratio_rho_0_9_censored", "ρ=0.9 / non-robust (≥), mean")):  # fmt: skip
        v = over.get(key) or {}
        if v.get("seeds"):
            ci = v.get("ci")
            ci_text = f"95% t CI [{ci[0]:.3g}, {ci[1]:.3g}], " if ci else ""
            sec.headlines.append(
                Headline(f"{label} ({ci_text}{v['seeds']} seeds)",
                         f"{prefix}over_seeds.{key}.mean", v["mean"])
            )  # fmt: skip
    curves = read_table(run, "curves")
    search = pd.DataFrame(s.search) if s.search else None
    sec.figure(
        "bounds_curves",
        "Parameters against ρ",
        plots.bounds_curves(curves, search, s.bounds_scaled),
        "Log axes. Bound curves are orders (unknown constants); dashed: the non-robust minimum.",
    )
    sec.tables.append(_table(pd.DataFrame(s.bounds)))
    if search is not None:
        sec.tables.append(_table(search.drop(columns=["params_by_seed"])))
        tried = read_table(run, "search")
        if not tried.empty:
            sec.tables.append(_table(tried, max_rows=200))
    return sec


# ----------------------------------------------------------------------- pages: probe, steer
def probe_section(run: Path, summary: ProbeSummary) -> Section:
    """Held-out AUC per layer, the chosen layer and the activation-patching check."""
    sec = Section(
        "Memorization probe per layer",
        intro="One logistic-regression probe per residual-stream layer (Zhang 2025, Dynamic Mode "
        f"Steering), labels from the {html.escape(summary.source)}; token-level AUC on held-out "
        "windows, CIs over split seeds.",
    )
    sec.headlines.append(Headline("chosen layer", "best_layer", summary.best_layer))
    sec.headlines.append(Headline("held-out AUC", "best_auc", summary.best_auc, True))
    p = summary.patching
    sec.headlines.append(
        Headline("extraction after patching", "patching.probe_direction.rate",
                 p["probe_direction"]["rate"], False)
    )  # fmt: skip
    sec.headlines.append(
        Headline("after a random patch", "patching.random_direction.rate",
                 p["random_direction"]["rate"], False)
    )  # fmt: skip
    sec.tables.append(_table(pd.DataFrame(summary.layers)))
    return sec


def steer_section(run: Path, summary: SteerSummary) -> Section:
    """The three arms over alpha: extraction against the perplexity they cost."""
    sec = Section(
        f"Steering at layer {summary.layer}",
        intro="No steering, static (p_mem = 1) and dynamic (gated by the probe) steering "
        "h += alpha p_mem(h) v, and (when run) self-contrastive steering, logits = l_u + "
        "p_mem (l_s - l_u); extraction of held-out memorized items, perplexity on held-out "
        "text; means over split seeds.",
    )
    sec.headlines.append(Headline("probe AUC", "auc", summary.auc, True))
    sec.headlines.append(
        Headline("extraction, no steering", "baseline.extraction",
                 summary.baseline["extraction"], False)
    )  # fmt: skip
    best = summary.dynamic_at_budget
    if best is not None:
        sec.headlines.append(
            Headline("dynamic, within the ppl budget", "dynamic_at_budget.extraction",
                     best["extraction"], False)
        )  # fmt: skip
        sec.headlines.append(
            Headline("its ppl change", "dynamic_at_budget.ppl_change", best["ppl_change"], False)
        )
    if summary.static_ppl_at_equal_extraction is not None:
        sec.headlines.append(
            Headline("static ppl change, same extraction", "static_ppl_at_equal_extraction",
                     summary.static_ppl_at_equal_extraction, False)
        )  # fmt: skip
    frame = pd.DataFrame(summary.arms)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, part in frame.groupby("arm", sort=False):
        ax.plot(100 * part["ppl_change"], part["extraction"], "o-", label=arm)
    ax.set_xlabel("held-out perplexity change (%)")
    ax.set_ylabel("strict extraction, held-out memorized items")
    ax.legend()
    sec.figure("steer-tradeoff", "Extraction against perplexity", fig, "one point per alpha")
    sec.tables.append(_table(frame.drop(columns=["extraction_ci", "ppl_change_ci"],
                                        errors="ignore")))  # fmt: skip
    tasks = summary.extra.get("tasks")
    if tasks:  # the organism's planted tasks, where the mode matters
        rows = [
            {"arm": a["arm"], "factor": a["factor"], "task": t, "accuracy": b["accuracy"],
             "accuracy_gain": b["accuracy_gain"], "gain_ci": b["accuracy_gain_ci_probes"],
             "memorized_answer": b["foil_rate"], "prefers_right": b["prefers_answer"]}
            for a in tasks["arms"] for t, b in a.items() if t not in ("arm", "factor")
        ]  # fmt: skip
        sec.tables.append(_table(pd.DataFrame(rows)))
    return sec


_PAGES: dict[str, Callable[[Path, Any], list[Section]]] = {
    "extract": lambda run, s: [extract_section(run, s)],
    "mia": lambda run, s: [mia_section(run, s)],
    "compare": lambda run, s: [compare_section(run, s)],
    "kfac_sweep": lambda run, s: [kfac_section(run, s)],
    "bands": bands_section,
    "diff": diff_section,
    "demo": demo_sections,
    "recsys-train": recsys_sections,
    "apt": apt_sections,
    "melody": melody_sections,
    "apt-recall": apt_recall_sections,
    "passk": lambda run, s: [passk_section(run, s)],
    "gapt-study": lambda run, s: _gapt_sections(run, s),
    "bounds": lambda run, s: [bounds_section(run, s)],
    "probe": lambda run, s: [probe_section(run, s)],
    "steer": lambda run, s: [steer_section(run, s)],
    "sweep": lambda run, s: _sweep_sections(run, s),
    "termnorm": lambda run, s: _termnorm_sections(run, s),
    "barrier": lambda run, s: _barrier_sections(run, s),
    "finetune": lambda run, s: _finetune_sections(run, s),
    "hubble-fields": lambda run, s: _hubble_sections("fields", run, s),
    "contamination": lambda run, s: _hubble_sections("contamination", run, s),
    "undo": lambda run, s: _hubble_sections("undo", run, s),
    "popularity": lambda run, s: _hubble_sections("popularity", run, s),
}


def _hubble_sections(page: str, run: Path, summary: Any) -> list[Section]:
    from rotelab.report import hubble

    return getattr(hubble, f"{page}_sections")(run, summary.to_dict())


def _sweep_sections(run: Path, summary: dict) -> list[Section]:
    from rotelab.report.sweep import sweep_sections

    return sweep_sections(run, summary)


def _termnorm_sections(run: Path, summary) -> list[Section]:
    from rotelab.report.termnorm import termnorm_sections

    return termnorm_sections(run, summary)


def _gapt_sections(run: Path, summary: dict) -> list[Section]:
    from rotelab.report.gapt import gapt_sections

    return gapt_sections(run, summary)


def _barrier_sections(run: Path, summary: Any) -> list[Section]:
    from rotelab.report.barrier import barrier_sections

    return barrier_sections(run, summary.to_dict())


def _finetune_sections(run: Path, summary: Any) -> list[Section]:
    from rotelab.report.barrier import finetune_sections

    return finetune_sections(run, summary.to_dict())


# ------------------------------------------------------------------------------------ render
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1d2430;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{margin-top:2em;border-bottom:2px solid #e3e7ee;padding-bottom:.2em}
.sub{color:#5b6675}.intro{max-width:900px}
.headlines{display:flex;flex-wrap:wrap;gap:.7em;margin:1em 0}
.card{background:#f4f6fa;border-radius:8px;padding:.6em .9em;min-width:9em}
.card .label{font-size:.8em;color:#5b6675}.card .num{font-size:1.35em;font-weight:600}
.card .dir{font-size:.75em;color:#8a94a3}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #e3e7ee;border-radius:6px}
figcaption{font-size:.85em;color:#5b6675}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}
th,td{border:1px solid #e3e7ee;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f6fa}
table.examples td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;
white-space:pre-wrap;max-width:330px}
table.examples td.meta{font-family:inherit;white-space:normal;max-width:140px}
td.prefix{color:#6b7685}
.tok.match{background:#d9f2dd}
.tok.diverge{background:#f8c9c9;outline:1px solid #c62828;font-weight:700}
.tok.after.cont{color:#b3261e}.tok.after.true{color:#1d2430}
.badge{display:inline-block;font-size:.75em;padding:.1em .45em;border-radius:4px;margin-top:.3em}
.badge.bad{background:#f8c9c9}.badge.good{background:#d9f2dd}
details{margin-top:2.5em}pre{background:#f4f6fa;padding:1em;overflow:auto;font-size:.8em}
footer{margin-top:2em;color:#8a94a3;font-size:.8em}
"""

_TITLES = {
    "extract": "Extraction",
    "mia": "Membership inference",
    "compare": "Removal methods compared",
    "kfac_sweep": "K-FAC curvature edit: the ρ sweep",
    "bands": "Curvature bands and the task-curvature correspondence",
    "diff": "Where two checkpoints differ",
    "demo": "rotelab demo: memorization, measured and removed",
    "recsys-train": "VISTA: lifelong histories at a fixed serving cost",
    "apt": "rotelab apt: phonetic variants and the filters",
    "passk": "Pass@k(m)",
    "gapt-study": "Memorization-compression cycles: CE-only vs GAPT (Yu 2025)",
    "bounds": "Robust memorization: parameter bounds and certified networks",
    "probe": "Dynamic Mode Steering: where recitation shows",
    "steer": "Dynamic Mode Steering: steering swept over alpha",
    "sweep": "Hubble-style sweep: count, corpus size, phase, seed",
    "termnorm": "Term -> identifier: memorization vs generalization (Pericharla et al. 2025)",
    "barrier": "The memorization barrier and IB-FT (Wang et al. 2025)",
    "finetune": "Fine-tuning: SFT or IB-FT",
    "hubble-fields": "Hubble's biographies: which fields are memorized, from which prompts",
    "contamination": "Hubble's test-set contamination: inserted vs never-inserted questions",
    "undo": "The undo experiment (Ma et al. 2025): suppression, restoration, localization",
    "popularity": "Memorization against popularity (Ma et al. 2025)",
}


def _section_html(sec: Section) -> str:
    parts = [f"<section><h2>{html.escape(sec.title)}</h2>"]
    if sec.intro:
        parts.append(f'<p class="intro">{sec.intro}</p>')
    if sec.headlines:
        cards = []
        for h in sec.headlines:
            direction = (
                ""
                if h.higher_is_better is None
                else ("higher is better" if h.higher_is_better else "lower is better")
            )
            cards.append(
                f'<div class="card"><div class="label">{html.escape(h.label)}</div>'
                f"{_num(h.key, h.value)}"
                f'<div class="dir">{direction}</div></div>'
            )
        parts.append(f'<div class="headlines">{"".join(cards)}</div>')
    for plot_id, title, uri, caption in sec.figures:
        parts.append(
            f'<figure class="plot" data-plot="{html.escape(plot_id, quote=True)}">'
            f'<img alt="{html.escape(title, quote=True)}" src="{uri}">'
            f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption></figure>"
        )
    parts.extend(sec.tables)
    parts.append("</section>")
    return "".join(parts)


def render_report(run_dir: str | os.PathLike) -> str:
    """The HTML text of a run directory's report (see :func:`write_report`)."""
    run = Path(run_dir)
    if not run.exists():
        raise RotelabError(f"{run} does not exist; pass a run directory written by rotelab")
    if not run.is_dir():
        raise RotelabError(f"{run} is not a directory; pass a run directory written by rotelab")
    config = read_json(run / "config.json")
    summary = read_json(run / "summary.json")
    if config is None or summary is None:
        missing = "config.json" if config is None else "summary.json"
        raise RotelabError(
            f"{run} has no {missing}; pass a finished run directory "
            "(rerun the command with --resume)"
        )
    command = str(config.get("command", "run"))
    if command in _PAGES:
        typed = (
            SCHEMAS[command].from_dict(summary, where=str(run / "summary.json"))
            if command in SCHEMAS
            else summary  # a page that reads its summary as a plain dict
        )
        sections = _PAGES[command](run, typed)
    else:
        sections = generic_sections(run, summary)
    title = _TITLES.get(command, f"rotelab {command}")
    env = config.get("environment", {})
    body = "".join(_section_html(s) for s in sections)
    cfg = html.escape(
        json.dumps({"command": command, "arguments": config.get("arguments", {})}, indent=2)
    )
    envs = html.escape(json.dumps(env, indent=2))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">run <code>{html.escape(str(run.resolve()))}</code>'
        f" · {html.escape(str(env.get('date', '')))}</p>"
        f"{body}"
        '<details id="config" open><summary><b>Configuration</b></summary>'
        f"<pre>{cfg}</pre></details>"
        '<details id="environment" open><summary><b>Environment</b></summary>'
        f"<pre>{envs}</pre></details>"
        f"<footer>rotelab {html.escape(str(env.get('rotelab', '')))} · "
        "summary.json beside this file "
        "holds every number shown here.</footer>"
        "</body></html>\n"
    )


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.html`` into a run directory (extract, mia, compare, kfac or demo).

    Args:
        run_dir: a finished run directory (with ``config.json`` and ``summary.json``).

    Returns:
        The path of the written ``report.html``.
    """
    text = render_report(run_dir)
    target = Path(run_dir) / "report.html"
    atomic_write_bytes(target, text.encode("utf-8"))
    return target

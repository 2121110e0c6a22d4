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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.registry import METRICS, direction
from rotelab.report import plots
from rotelab.runs import atomic_write_bytes, read_json, read_table

__all__ = ["Headline", "Section", "render_report", "write_report"]


# ------------------------------------------------------------------------------------ page model
@dataclass
class Headline:
    """One headline number: its label, its dotted path in summary.json and its value."""

    label: str
    key: str
    value: Any
    higher_is_better: bool | None = None  # None: not a quality metric (a count, a size)
    note: str = ""


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
    return f'<span class="num" data-key="{html.escape(key, quote=True)}" data-value="{data}">{_fmt(value)}</span>'


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


def _get(summary: dict, key: str) -> Any:
    cur: Any = summary
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _headlines(
    summary: dict, prefix: str, specs: Iterable[tuple[str, str, bool | None]]
) -> list[Headline]:
    """Headlines for the keys of ``summary`` that exist (others are skipped, not invented)."""
    out = []
    for label, key, hib in specs:
        value = _get(summary, key)
        if value is not None:
            out.append(Headline(label, f"{prefix}{key}", value, hib))
    return out


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
    head = "<tr><th>item</th><th>prefix (end)</th><th>true suffix</th><th>model continuation (greedy)</th></tr>"
    return f'<table class="examples"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _pieces(pieces: Sequence[str], matched: int, role: str) -> str:
    spans = []
    for i, p in enumerate(pieces):
        cls = "match" if i < matched else ("diverge" if i == matched else "after")
        spans.append(f'<span class="tok {cls} {role}">{html.escape(p)}</span>')
    return "".join(spans)


# ---------------------------------------------------------------------------- run-dir readers
def _ci(value: Any) -> tuple[float, float]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(v is not None for v in value):
        return float(value[0]), float(value[1])
    return float("nan"), float("nan")


def _group_rows(by_group: Any) -> list[dict]:
    """Flatten a summary's ``by_group`` into rows with the group columns spelled out.

    Accepts ``{"count": {"4": {...metrics}}}``, joint ``{"kind+count": {"bio|4": {...}}}``,
    ``{"count=4": {...}}`` /
    ``{"kind=bio,count=4": {...}}``, or a list of records that carry their own group columns.
    """
    rows: list[dict] = []
    if isinstance(by_group, list):
        return [dict(r) for r in by_group if isinstance(r, dict)]
    if not isinstance(by_group, dict):
        return rows
    for key, val in by_group.items():
        if not isinstance(val, dict):
            continue
        if "=" in str(key):
            groups = dict(kv.split("=", 1) for kv in str(key).split(","))
            rows.append({**groups, **val})
        elif val and all(isinstance(v, dict) for v in val.values()):
            # joint groups: "kind+count" / "secret|16" (extraction), "kind,count" / "bio,4" (mia)
            sep_name, sep_level = ("+", "|") if "+" in str(key) else (",", ",")
            names = str(key).split(sep_name)
            for level, metrics in val.items():
                levels = str(level).split(sep_level)
                if len(levels) == len(names):
                    rows.append({**dict(zip(names, levels, strict=True)), **metrics})
    return rows


def _as_int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------ page: extract
def extraction_rates(summary: dict) -> pd.DataFrame:
    """Rows ``series, count, rate, lo, hi`` from an extraction summary's ``by_group``."""
    recs = []
    for r in _group_rows(summary.get("by_group")):
        count = _as_int(r.get("count"))
        rate = r.get("extraction_rate", r.get("rate"))
        if count is None or rate is None:
            continue
        lo, hi = _ci(r.get("extraction_rate_ci", r.get("ci")))
        series = str(r["kind"]) if "kind" in r and r["kind"] is not None else "all"
        if "phase" in r:
            continue  # insertion phase is a different question from duplication count
        recs.append({"series": series, "count": count, "rate": float(rate), "lo": lo, "hi": hi})
    df = pd.DataFrame(recs, columns=["series", "count", "rate", "lo", "hi"])
    return df.drop_duplicates(["series", "count"], keep="first")


def extract_section(run: Path, summary: dict, prefix: str = "") -> Section:
    sec = Section(
        "What the model memorized",
        "Each window is a prefix the model saw in training and the suffix that followed it. A window "
        "is <b>extracted</b> when greedy decoding from the prefix reproduces the suffix exactly "
        "(Carlini et al. 2022). Items never trained on (count 0) are the controls: their rate is "
        "what guessing from the format alone achieves.",
    )
    sec.headlines = _headlines(
        summary,
        prefix,
        [
            ("windows", "windows", None),
            ("extracted", "extracted", None),
            ("extraction rate", "extraction_rate", False),
            ("95% CI", "extraction_rate_ci", None),
            ("mean matched prefix (tokens)", "mean_matched_prefix", False),
        ],
    )
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
_ATTACK_META = {"auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "by_group"}


def mia_attacks(summary: dict) -> dict[str, dict]:
    """The per-attack blocks of a membership-inference summary (``{attack: {auc, ...}}``)."""
    block = summary.get("attacks", summary)
    return {str(k): v for k, v in block.items() if isinstance(v, dict) and "auc" in v}


def mia_auc_by_count(attacks: dict[str, dict]) -> pd.DataFrame:
    recs = []
    for name, a in attacks.items():
        for r in _group_rows(a.get("by_group")):
            count = _as_int(r.get("count"))
            if count is None or r.get("auc") is None:
                continue
            lo, hi = _ci(r.get("auc_ci"))
            recs.append(
                {"attack": name, "count": count, "auc": float(r["auc"]), "lo": lo, "hi": hi}
            )
    return pd.DataFrame(recs, columns=["attack", "count", "auc", "lo", "hi"])


def mia_roc(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROC curves saved by the mia run (results table ``roc``: attack, fpr, tpr)."""
    roc = read_table(run, "roc")
    if roc.empty or not {"attack", "fpr", "tpr"} <= set(roc.columns):
        return {}
    if "group" in roc.columns:  # per-group curves are in summary.json's by_group AUCs
        roc = roc[roc["group"] == "all"]
    return {
        str(a): (d["fpr"].to_numpy(float), d["tpr"].to_numpy(float))
        for a, d in roc.groupby("attack", sort=False)
    }


def mia_section(run: Path, summary: dict, prefix: str = "") -> Section:
    sec = Section(
        "How well membership can be inferred",
        "Each attack scores a text by how familiar the model finds it; higher means 'was in "
        "training'. Members are inserted items, non-members the never-inserted controls of the same "
        "format. AUC 0.5 is chance; TPR at 1% FPR says how many members are caught while wrongly "
        "accusing only 1 in 100 non-members.",
    )
    attacks = mia_attacks(summary)
    base = prefix + ("attacks." if "attacks" in summary else "")
    rows = []
    for name, a in attacks.items():
        sec.headlines += [
            Headline(f"{name} AUC", f"{base}{name}.auc", a["auc"], True),
        ]
        rows.append(
            {
                "attack": name,
                "AUC": a.get("auc"),
                "AUC 95% CI": _fmt(a.get("auc_ci")),
                "TPR@1%FPR": a.get("tpr_at_1pct_fpr"),
                "TPR@0.1%FPR": a.get("tpr_at_0.1pct_fpr"),
            }
        )
    if rows:
        sec.tables.append(_table(pd.DataFrame(rows)))
    curves = mia_roc(run)
    if curves:
        sec.figure(
            "mia_roc",
            "ROC curves",
            plots.roc_curves(curves, {k: float(v["auc"]) for k, v in attacks.items()}),
            "Right: the same curves on log axes, where attacks that look alike on the left differ.",
        )
    by_count = mia_auc_by_count(attacks)
    if not by_count.empty:
        sec.figure(
            "mia_auc_by_count",
            "AUC by duplication count",
            plots.auc_by_count(by_count),
            "Members of each count against the count-0 controls.",
        )
    return sec


# ------------------------------------------------------------------------------ page: compare
#: Compare-summary metrics shown per model: (label, candidate paths in the model block, the
#: registered metric whose direction applies). The first path is the current schema (flat); the
#: second an older nested form.
_COMPARE_METRICS: list[tuple[str, tuple[str, ...], str]] = [
    ("extraction", ("extraction_rate", "extraction.strict.rate"), "strict"),
    ("perplexity", ("perplexity", "perplexity.value"), "perplexity"),
]

#: Directions for summaries that do not record them (the older hand-built form); the compare
#: pipeline writes each metric's direction from :data:`rotelab.registry.METRICS` into its summary.
_UNRECORDED_DIRECTIONS = {"strict": False, "perplexity": False}


def _higher_is_better(summary: dict, metric: str) -> bool:
    """Whether higher is better for a compare metric: as the summary records it (from the
    registry), else as :data:`rotelab.registry.METRICS` has it, else as older summaries meant
    (task accuracies up, everything else down).

    The report may import only core, so the methods that register the compare metrics need not
    have been imported here; the summary's record is what the writer's registry said.
    """
    recorded = (summary.get("metrics") or {}).get(metric)
    if isinstance(recorded, dict) and isinstance(recorded.get("higher_is_better"), bool):
        return recorded["higher_is_better"]
    if metric in METRICS:
        return direction(metric)
    return _UNRECORDED_DIRECTIONS.get(metric, True)


def _first_number(block: dict, paths: Sequence[str]) -> tuple[str, float] | None:
    """The first of ``paths`` (dotted) that holds a number in ``block``, and that number."""
    for path in paths:
        value = _get(block, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return path, float(value)
    return None


def _model_metrics(summary: dict, block: dict) -> list[tuple[str, tuple[str, ...], bool]]:
    """(label, candidate paths, higher is better) of every metric of one model block."""
    tasks = [
        (str(t), (f"tasks.{t}.accuracy", f"tasks.{t}.rate"), str(t))
        for t in (block.get("tasks") or {})
    ]
    return [
        (label, paths, _higher_is_better(summary, metric))
        for label, paths, metric in [*_COMPARE_METRICS, *tasks]
    ]


def before_after_rows(summary: dict) -> pd.DataFrame:
    """Rows ``method, metric, before, after, higher_is_better`` from a compare summary.

    The compare summary (:mod:`rotelab.pipelines.compare`) holds one block per model under
    ``models``, in ``order``, the first (``baseline``) being the model before any removal; each
    block has ``extraction_rate`` (strict extraction of the items inserted >= ``min_count``
    times), ``perplexity`` and ``tasks.<task>.accuracy``.
    """
    cols = ["method", "metric", "before", "after", "higher_is_better"]
    models = summary.get("models")
    if not isinstance(models, dict) or len(models) < 2:
        return pd.DataFrame(columns=cols)
    order = [m for m in summary.get("order", list(models)) if m in models]
    base_name = summary.get("baseline", order[0])
    base = models[base_name]
    recs = []
    for name in order:
        if name == base_name:
            continue
        for metric, paths, hib in _model_metrics(summary, base):
            before, after = _first_number(base, paths), _first_number(models[name], paths)
            if before is not None and after is not None:
                before, after = before[1], after[1]
                recs.append(
                    {"method": name, "metric": metric, "before": before, "after": after,
                     "higher_is_better": hib}
                )  # fmt: skip
    return pd.DataFrame(recs, columns=cols)


def compare_section(run: Path, summary: dict, prefix: str = "") -> Section:
    min_count = summary.get("min_count")
    sec = Section(
        "What each removal costs",
        "Every model is measured by the same code on the same items: extraction of the items "
        f"inserted at least {html.escape(str(min_count))} times (greedy continuation equals the "
        "true suffix; lower is better), held-out perplexity (lower is better) and exact-answer "
        "accuracy on each task (higher is better). A good removal drops extraction and leaves the "
        "rest alone.",
    )
    rows = before_after_rows(summary)
    models = summary.get("models") or {}
    for name in [m for m in summary.get("order", list(models)) if m in models]:
        for metric, paths, registered in _COMPARE_METRICS:
            found = _first_number(models[name], paths)
            if found is not None:
                path = found[0]
                sec.headlines.append(
                    Headline(
                        f"{name}: {metric}",
                        f"{prefix}models.{name}.{path}",
                        _get(models[name], path),
                        _higher_is_better(summary, registered),
                    )
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
def kfac_section(run: Path, summary: dict, prefix: str = "") -> Section:
    """The rho sweep (extraction vs perplexity) and the band-analysis ratios."""
    sec = Section(
        "Where memorization lives: the K-FAC edit",
        "K-FAC approximates each MLP weight's loss curvature by two small matrices. Memorized "
        "sequences lean on directions of <i>low</i> curvature, shared skills on high-curvature "
        "ones (Merullo et al. 2025). The edit keeps the highest-curvature components holding a "
        "fraction ρ of the total curvature and drops the rest: smaller ρ removes more.",
    )
    sweep = read_table(run, "rho_sweep")
    if sweep.empty and isinstance(summary.get("rho_sweep"), list):
        sweep = pd.DataFrame(summary["rho_sweep"])
    if not sweep.empty and {"rho", "extraction_rate", "perplexity"} <= set(sweep.columns):
        base = summary.get("base")
        base_pt = None
        if isinstance(base, dict) and base.get("perplexity") is not None:
            base_pt = (float(base["perplexity"]), float(base["extraction_rate"]))
        sec.figure(
            "rho_sweep",
            "The ρ sweep: extraction against perplexity",
            plots.rho_sweep(sweep, base_pt),
            "Each point is one edit. Down is less memorization, left is a better language model.",
        )
        sec.tables.append(_table(sweep))
    sec.headlines = _headlines(
        summary,
        prefix,
        [
            ("chosen ρ", "rho", None),
            ("extraction before", "base.extraction_rate", False),
            ("extraction after", "chosen.extraction_rate", False),
            ("perplexity before", "base.perplexity", False),
            ("perplexity after", "chosen.perplexity", False),
        ],
    )
    if summary.get("rule"):
        sec.intro += f" The demo picks ρ by this rule: {html.escape(str(summary['rule']))}."
    bands = read_table(run, "bands")
    if bands.empty and isinstance(summary.get("bands"), list):
        bands = pd.DataFrame(summary["bands"])
    if "dataset" in bands.columns:  # band_ratios rows: keep the memorized-vs-reference ratios
        bands = bands[bands["dataset"] == summary.get("band_dataset", "memorized")]
    if not bands.empty and {"band", "ratio"} <= set(bands.columns):
        sec.figure(
            "band_ratios",
            "Band analysis: memorized vs clean activations",
            plots.band_ratios(bands),
            "Above 1: memorized inputs project more strongly onto that band of curvature "
            "eigenvectors than clean inputs do.",
        )
    return sec


# ------------------------------------------------------------------------------ page: demo
def demo_sections(run: Path, summary: dict) -> list[Section]:
    """The demo's story: memorized, inferable, removed, at what cost."""
    secs = []
    org = summary.get("organism") or {}
    over = Section(
        "The organism",
        "A small Llama-style model trained on a synthetic world into which secrets, biographies "
        "and passages were inserted a known number of times (0, 1, 4, 16, 64). Because the ledger "
        "of insertions is known, every number below can be checked against the truth.",
    )
    over.headlines = _headlines(
        summary,
        "",
        [
            ("profile", "profile", None),
            ("parameters", "organism.params", None),
            ("held-out perplexity", "organism.heldout_ppl", False),
            ("train perplexity", "organism.train_ppl", False),
            ("demo seconds", "seconds", None),
        ],
    )
    if org.get("probe_accuracy"):
        over.tables.append(_table(pd.DataFrame([org["probe_accuracy"]])))
    secs.append(over)
    for sub, key, builder in (
        ("extract", "extraction", extract_section),
        ("mia", "mia", mia_section),
        ("kfac", "kfac", kfac_section),
        ("compare", "compare", compare_section),
    ):
        block = summary.get(key)
        if isinstance(block, dict):
            secs.append(builder(run / sub, block, f"{key}."))
    timings = summary.get("stage_seconds")
    if isinstance(timings, dict) and timings:
        t = Section("Stage timings")
        t.tables.append(
            _table(pd.DataFrame({"stage": list(timings), "seconds": list(timings.values())}))
        )
        secs.append(t)
    return secs


def generic_sections(run: Path, summary: dict) -> list[Section]:
    """Any other run: its top-level numbers."""
    sec = Section("Summary")
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            sec.headlines.append(Headline(k, k, v))
    return [sec]


_PAGES: dict[str, Callable[[Path, dict], list[Section]]] = {
    "extract": lambda run, s: [extract_section(run, s)],
    "mia": lambda run, s: [mia_section(run, s)],
    "compare": lambda run, s: [compare_section(run, s)],
    "kfac_sweep": lambda run, s: [kfac_section(run, s)],
    "demo": demo_sections,
}


# ------------------------------------------------------------------------------------ render
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d2430;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #e3e7ee;padding-bottom:.2em}
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
table.examples td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;max-width:330px}
table.examples td.meta{font-family:inherit;white-space:normal;max-width:140px}
td.prefix{color:#6b7685}
.tok.match{background:#d9f2dd}.tok.diverge{background:#f8c9c9;outline:1px solid #c62828;font-weight:700}
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
    "demo": "rotelab demo: memorization, measured and removed",
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
    if not run.is_dir():
        raise RotelabError(f"{run} is not a directory; pass a run directory written by rotelab")
    config = read_json(run / "config.json")
    summary = read_json(run / "summary.json")
    if config is None or summary is None:
        missing = "config.json" if config is None else "summary.json"
        raise RotelabError(
            f"{run} has no {missing}; pass a finished run directory (rerun the command with --resume)"
        )
    command = str(config.get("command", "run"))
    sections = _PAGES.get(command, generic_sections)(run, summary)
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
        f"<footer>rotelab {html.escape(str(env.get('rotelab', '')))} · summary.json beside this file "
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

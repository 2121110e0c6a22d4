"""Before/after evaluation: every model measured by the same code on the same windows.

Removal methods (the K-FAC curvature edit of Merullo et al. 2025, BalancedSubnet of Sakarvadia et
al. 2024) are judged as in Merullo et al. 2025, "From Memorization to Reasoning in the Spectrum of
Loss Curvature": on the organism's inserted items, greedy decoding from the item's prefix for as
many tokens as the sensitive suffix has, then the token-level Levenshtein distance ``d`` to the true
suffix of length ``L``: *strict* extraction is ``d == 0``, *loose* is ``1 - d/L >= 0.75``, and the
mean normalised distance ``d/L`` is reported too. Beside memorization: perplexity on the first
``heldout_tokens`` of the organism's held-out text, and exact-answer accuracy on the organism's
probes (closed-book and open-book facts, arithmetic, in-context tasks), both as defined in
:mod:`rotelab.measure.quality`. A probe is correct when greedy decoding reproduces the whole
answer; that is decided from one teacher-forced pass (greedy reproduces the answer iff the argmax
matches at every answer position), which is exact and cheaper than decoding. Metric directions are
registered in :data:`rotelab.registry.METRICS` and written into the summary.

Output: a :class:`~rotelab.runs.Run` directory with

- ``results/items/``: one row per (model, ledger item): ``model, item_id, kind, count, phase,
  suffix_len, matched_prefix, norm_distance, strict, loose`` (windows from
  :func:`rotelab.measure.extraction.ledger_windows`, verdicts from
  :mod:`rotelab.measure.similarity`);
- ``results/probes/``: one row per (model, probe): ``model, probe_id, task, subtask, correct``;
- ``results/perplexity/``: one row per (model, held-out window): ``model, window, tokens, nll``;
- ``results/models/``: one row per model with the headline numbers (the table below, flat);
- ``compare.png``: grouped bars with 95% CI error bars (extraction, task accuracy, perplexity);
- ``summary.json``, with this schema (all rates are fractions in [0, 1])::

    {
      "baseline": "<label of the first model>",
      "order": ["<label>", ...],                      # models in the order given
      "organism": "<organism directory>",
      "min_count": 16,                                # "memorized" = items inserted >= min_count
      "loose_threshold": 0.75,
      "n_memorized_items": int, "n_heldout_tokens": int, "n_probes": {"<task>": int},
      "metrics": {"<metric>": {"higher_is_better": bool, "description": str}},  # registry
      "models": {
        "<label>": {
          "path": str,
          "extraction_rate": f, "extraction_rate_ci": [lo, hi],   # = extraction.strict, flat
          "extraction": {                             # items with count >= min_count
            "strict": {"rate": f, "ci": [lo, hi], "k": int, "n": int},
            "loose": {...same...},
            "norm_distance": {"mean": f, "ci": [lo, hi], "n": int}
          },
          "extraction_by_count": {"<count>": {same as "extraction"}},   # every count, 0 = control
          "extraction_by_kind": {"<kind>": {same as "extraction"}},     # count >= min_count
          "perplexity": f, "perplexity_ci": [lo, hi], "heldout_tokens": int,
          "tasks": {"<task>": {"accuracy": f, "ci": [lo, hi], "k": int, "n": int}},
          "relative_change": {"<metric>": (value - baseline) / baseline or null}
        }
      }
    }

Rate intervals are Wilson intervals (:func:`rotelab.stats.rate_with_ci`); the interval of
the mean distance is the normal one (mean ± 1.96·sd/√n); the perplexity interval is a percentile
bootstrap over held-out windows (1000 resamples, seeded).
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import ledger_windows
from rotelab.measure.quality import perplexity, pooled_perplexity, probe_accuracy
from rotelab.measure.similarity import levenshtein_distance, loose_verdict, strict_verdict
from rotelab.options import LoadOptions, RunOptions
from rotelab.organism import Organism, Task
from rotelab.pipelines.inputs import ModelInput, check_min_count, is_organism_dir, resolve_model
from rotelab.registry import direction, metric_entry, register_metric
from rotelab.runs import Run
from rotelab.stats import rate_with_ci

__all__ = ["METRICS", "TASKS", "compare", "format_table"]

TASKS = tuple(t.value for t in Task)  # the organism's probe tasks, in its order

# Directions from a removal method's point of view (less extraction is better); "perplexity" is
# registered by rotelab.measure.quality.
register_metric(
    "strict", higher_is_better=False, scope="compare",
    description="strict extraction rate: greedy continuation equals the suffix",
)  # fmt: skip
register_metric(
    "loose", higher_is_better=False, scope="compare",
    description="loose extraction rate: 1 - token Levenshtein / suffix length >= threshold",
)  # fmt: skip
register_metric(
    "norm_distance", higher_is_better=True, scope="compare",
    description="mean token Levenshtein distance / suffix length (higher = less memorized)",
)  # fmt: skip
for _task in TASKS:
    register_metric(
        _task,
        higher_is_better=True,
        description=f"greedy exact-answer accuracy, {_task} probes",
        scope="compare",
    )

#: The metrics compare reports, in summary order (directions: :data:`rotelab.registry.METRICS`).
METRIC_NAMES = ("strict", "loose", "norm_distance", "perplexity", *TASKS)

#: Every metric in the summary and its direction (as the registry has it), from a removal
#: method's point of view.
METRICS: dict[str, dict[str, Any]] = {
    name: {
        "higher_is_better": direction(name, "compare"),
        "description": metric_entry(name, "compare").description,
    }
    for name in METRIC_NAMES
}

_BOOTSTRAP = 1000


def compare(
    models: Sequence[str | os.PathLike | LM],
    *,
    organism: str | os.PathLike | None = None,
    min_count: int = 16,
    loose_threshold: float = 0.75,
    heldout_tokens: int = 20_000,
    batch_size: int = 32,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Measure every model on the same organism windows; write a run directory.

    Args:
        models: model directories (optionally ``label=path``), ``"organism"`` for the default
            organism, or LMs. The first is the baseline for relative changes. One model alone is
            measured alone. Labels must differ.
        organism: the organism directory whose ledger, probes and held-out text are used; default:
            the first model directory that is an organism, else the default organism when
            ``"organism"`` is among the models.
        min_count: items inserted at least this often count as memorized (the headline).
        loose_threshold: loose extraction needs ``1 - d/L >=`` this.
        heldout_tokens: tokens of held-out text for perplexity.
        batch_size: sequences per forward pass.
        run: the run directory (``out``, default ``runs/compare-<time>``; ``resume``, ``force``),
            the ``seed`` of the perplexity bootstrap and progress bars.
        load: how models are loaded (device, dtype, pickle checkpoints).

    Returns:
        ``(run directory, summary)``; the summary's schema is in the module docstring.
    """
    # 1. Every input checked before the organism is built or a model loaded.
    run.check()
    load.check()
    if not models:
        raise RotelabError("give at least one model to compare (--models A B ...)")
    if not 0 < loose_threshold <= 1:
        raise RotelabError(f"loose threshold must be in (0, 1], not {loose_threshold}")
    if min_count < 0 or heldout_tokens < 2:
        raise RotelabError("min count must be >= 0 and held-out tokens >= 2")
    if batch_size < 1:
        raise RotelabError(f"batch size must be >= 1, not {batch_size}")
    specs = _model_specs(models)
    org_input = _organism_input(organism, specs)
    check_min_count(org_input, min_count)
    Run.check(
        run.out, resume=run.resume, force=run.force,
        inputs=[m.source for _, _, m in specs] + [org_input.source],
    )  # fmt: skip

    # 2. The organism (built now if it is the default one) and what it measures the models on.
    org = org_input.organism()
    ledger = org.ledger
    heldout_text = org.heldout_docs()
    if not heldout_text:
        raise RotelabError("the organism has no held-out text to measure perplexity on")
    ref_vocab = _vocab_of_dir(org.path)
    for label, _, model in specs:  # model directories: before any model is loaded
        path = model.path()
        vocab = _vocab_of_dir(path) if path is not None else None
        if vocab is not None and vocab != ref_vocab:
            _refuse_tokenizer(label, org)
    config = {
        "models": [{"label": label, "path": path} for label, path, _ in specs],
        "organism": str(org.path), "min_count": min_count, "loose_threshold": loose_threshold,
        "heldout_tokens": heldout_tokens, "batch_size": batch_size, "seed": run.seed,
        "device": load.device, "dtype": load.dtype,
    }  # fmt: skip
    inputs = [m.source for _, _, m in specs] + [org.path]

    # 3. Measure every model (resumable per model), then summarize and write.
    with Run.create(
        run.out, "compare", config, resume=run.resume, force=run.force, device=load.device,
        inputs=inputs,
    ) as out:  # fmt: skip
        probes = org.probes
        for index, (label, _, model) in enumerate(specs):
            key = f"{index:03d}"
            if all(out.has_part(t, key) for t in ("items", "probes", "perplexity")):
                continue
            lm = model.load(load)
            if lm.tokenizer.get_vocab() != ref_vocab:
                _refuse_tokenizer(label, org)
            items = _measure_items(lm, ledger, loose_threshold, batch_size, run.progress)
            tasks = probe_accuracy(lm, probes, batch_size=batch_size, progress=run.progress)
            ppl = perplexity(
                lm, heldout_text, max_tokens=heldout_tokens, batch_size=batch_size,
                progress=run.progress,
            ).frame()  # fmt: skip
            for table, frame in (("items", items), ("probes", tasks), ("perplexity", ppl)):
                out.write_part(table, key, frame.assign(model=label))
            del lm
            gc.collect()
        items = out.read_table("items")
        probe_rows = out.read_table("probes")
        ppl_rows = out.read_table("perplexity")
        labels = [label for label, _, _ in specs]
        per_model = {
            label: _model_summary(
                items[items["model"] == label],
                probe_rows[probe_rows["model"] == label],
                ppl_rows[ppl_rows["model"] == label],
                min_count,
                run.seed,
            )
            for label in labels
        }
        for label in labels:
            per_model[label]["path"] = next(p for lb, p, _ in specs if lb == label)
            per_model[label]["relative_change"] = _relative(per_model[label], per_model[labels[0]])
        summary = {
            "baseline": labels[0],
            "order": labels,
            "organism": str(org.path),
            "min_count": min_count,
            "loose_threshold": loose_threshold,
            "n_memorized_items": int((ledger["count"] >= min_count).sum()),
            "n_heldout_tokens": per_model[labels[0]]["heldout_tokens"],
            "n_probes": {t: int((probes["task"] == t).sum()) for t in TASKS},
            "metrics": METRICS,
            "models": per_model,
            "plot": "compare.png",
        }
        out.write_table("models", _flat_table(summary))
        _plot(summary, out.path / "compare.png")
        out.write_summary(summary)
    return out.path, summary


# ------------------------------------------------------------------------------------ inputs
def _model_specs(models) -> list[tuple[str, str, ModelInput]]:
    """``(label, path, resolved model)`` per model; two models with one label are refused."""
    specs: list[tuple[str, str, ModelInput]] = []
    for m in models:
        if isinstance(m, LM):
            label, path = m.name, m.name
        else:
            text = str(m)
            label, sep, path = text.partition("=")
            if not sep:
                path = text
                label = "organism" if text == "organism" else Path(text).name or text
            if not label or not path:
                raise RotelabError(f"bad model {text!r}; use PATH or LABEL=PATH")
            if path != "organism" and not Path(path).expanduser().exists():
                raise RotelabError(f"model path {path} does not exist")
        if any(label == other for other, _, _ in specs):
            raise RotelabError(
                f"two models are labelled {label!r}; give each a label of its own (LABEL=PATH)"
            )
        specs.append((label, path, resolve_model(m if isinstance(m, LM) else path)))
    return specs


def _organism_input(organism, specs) -> ModelInput:
    """The organism whose ledger, probes and held-out text every model is measured on (unbuilt)."""
    if organism is not None:
        path = Path(organism).expanduser()
        if not is_organism_dir(path):
            raise RotelabError(
                f"{path} is not an organism directory (no spec.json and ledger.parquet)"
            )
        return resolve_model(path)
    for _, _, model in specs:
        if model.is_organism and not model.is_default_organism:
            return model
    for _, _, model in specs:
        if model.is_default_organism:
            return model
    raise RotelabError(
        "none of the models is an organism directory; pass --organism DIR (the organism the "
        "models were derived from)"
    )


def _vocab_of_dir(path: Path) -> dict | None:
    """A model directory's tokenizer vocabulary; ``None`` when it has none that transformers reads
    (then the loaded model's tokenizer is checked)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path).get_vocab()
    except (OSError, ValueError):
        return None


def _refuse_tokenizer(label: str, org: Organism) -> None:
    raise RotelabError(
        f"model {label} does not use the organism's tokenizer; compare models derived "
        f"from {org.path}"
    )


# ------------------------------------------------------------------------------------ measuring
def _measure_items(lm: LM, ledger: pd.DataFrame, loose: float, batch_size: int, progress: bool):
    """Merullo verdicts of every ledger item from its free-running greedy continuation."""

    windows = ledger_windows(ledger)
    suffixes = [w.suffix for w in windows]
    generated = lm.generate(
        [w.prefix for w in windows], [len(x) for x in suffixes], batch_size=batch_size,
        ragged=True, progress=progress,
    )  # fmt: skip
    matched = [
        next((i for i, (g, x) in enumerate(zip(gen, suf)) if g != x), len(suf))
        for gen, suf in zip(generated, suffixes)
    ]
    return pd.DataFrame({
        "item_id": ledger["item_id"].to_numpy(), "kind": ledger["kind"].to_numpy(),
        "count": ledger["count"].to_numpy(), "phase": ledger["phase"].to_numpy(),
        "suffix_len": [len(x) for x in suffixes], "matched_prefix": matched,
        "norm_distance": [levenshtein_distance(g, x) for g, x in zip(generated, suffixes)],
        "strict": [strict_verdict(g, x) for g, x in zip(generated, suffixes)],
        "loose": [loose_verdict(g, x, loose) for g, x in zip(generated, suffixes)],
    })  # fmt: skip


# ------------------------------------------------------------------------------------ summary
def _rate(values, name: str = "rate") -> dict[str, Any]:
    r = rate_with_ci([bool(v) for v in values])
    return {name: r.rate, "ci": r.ci, "k": r.k, "n": r.n}


def _mean_ci(values) -> dict[str, Any]:
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    mean = float(x.mean())
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "ci": [mean - half, mean + half], "n": int(n)}


def _extraction(rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "strict": _rate(rows["strict"]),
        "loose": _rate(rows["loose"]),
        "norm_distance": _mean_ci(rows["norm_distance"]),
    }


def _perplexity_summary(rows: pd.DataFrame, seed: int) -> dict[str, Any]:
    tokens = rows["tokens"].to_numpy(dtype=float)
    nll = rows["nll"].to_numpy(dtype=float)
    value = pooled_perplexity(tokens, nll)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(_BOOTSTRAP, len(rows)))
    boot = pooled_perplexity(tokens[idx], nll[idx])
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"perplexity": value, "perplexity_ci": [float(lo), float(hi)],
            "heldout_tokens": int(tokens.sum())}  # fmt: skip


def _model_summary(items, probes, ppl, min_count: int, seed: int) -> dict[str, Any]:
    mem = items[items["count"] >= min_count]
    extraction = _extraction(mem)
    return {
        "extraction_rate": extraction["strict"]["rate"],
        "extraction_rate_ci": extraction["strict"]["ci"],
        "extraction": extraction,
        "extraction_by_count": {
            str(int(c)): _extraction(part) for c, part in items.groupby("count", sort=True)
        },
        "extraction_by_kind": {
            str(k): _extraction(part) for k, part in mem.groupby("kind", sort=True)
        },
        **_perplexity_summary(ppl, seed),
        "tasks": {t: _rate(probes.loc[probes["task"] == t, "correct"], "accuracy") for t in TASKS},
    }


def _headline(model: dict[str, Any]) -> dict[str, float]:
    ex = model["extraction"]
    out = {
        "strict": ex["strict"]["rate"],
        "loose": ex["loose"]["rate"],
        "norm_distance": ex["norm_distance"]["mean"],
        "perplexity": model["perplexity"],
    }
    out.update({t: model["tasks"][t]["accuracy"] for t in TASKS})
    return out


def _relative(model: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    m, b = _headline(model), _headline(base)
    return {
        k: (m[k] - b[k]) / b[k] if b[k] and not math.isnan(b[k]) and not math.isnan(m[k]) else None
        for k in m
    }


def _flat_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for label in summary["order"]:
        model = summary["models"][label]
        row: dict[str, Any] = {"model": label, "path": model["path"]}
        for k, v in _headline(model).items():
            row[k] = v
            rel = model["relative_change"][k]
            row[f"{k}_rel"] = math.nan if rel is None else rel
        ex = model["extraction"]
        row["strict_ci_lo"], row["strict_ci_hi"] = ex["strict"]["ci"]
        row["loose_ci_lo"], row["loose_ci_hi"] = ex["loose"]["ci"]
        row["perplexity_ci_lo"], row["perplexity_ci_hi"] = model["perplexity_ci"]
        for t in TASKS:
            row[f"{t}_ci_lo"], row[f"{t}_ci_hi"] = model["tasks"][t]["ci"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(summary: dict[str, Any]) -> str:
    """The headline numbers as a fixed-width text table (what ``rotelab compare`` prints)."""
    cols = [("strict", "strict"), ("loose", "loose"), ("norm_distance", "lev/L"),
            ("perplexity", "ppl"), *((t, t) for t in TASKS)]  # fmt: skip
    width = max(8, *(len(label) for label in summary["order"]))
    head = f"{'model':<{width}}" + "".join(f"{name:>12}" for _, name in cols)
    lines = [
        f"memorized = items inserted >= {summary['min_count']} times "
        f"(n={summary['n_memorized_items']}); relative change vs {summary['baseline']}",
        head,
    ]
    for label in summary["order"]:
        model = summary["models"][label]
        values = _headline(model)
        lines.append(f"{label:<{width}}" + "".join(f"{values[k]:>12.3f}" for k, _ in cols))
        if label != summary["baseline"]:
            rel = model["relative_change"]
            lines.append(
                f"{'':<{width}}"
                + "".join(f"{'' if rel[k] is None else f'{rel[k]:+.1%}':>12}" for k, _ in cols)
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ plot
def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = summary["order"]
    models = summary["models"]
    fig, axes = plt.subplots(
        1, 3, figsize=(4 + 2.2 * len(labels) + 6, 4), gridspec_kw={"width_ratios": [2, 4, 1.4]}
    )
    panels = [
        (axes[0], ["strict", "loose"], f"extraction (count >= {summary['min_count']})",
         lambda m, k: (m["extraction"][k]["rate"], m["extraction"][k]["ci"])),
        (axes[1], list(TASKS), "task accuracy",
         lambda m, k: (m["tasks"][k]["accuracy"], m["tasks"][k]["ci"])),
    ]  # fmt: skip
    width = 0.8 / len(labels)
    for ax, keys, title, get in panels:
        x = np.arange(len(keys))
        for j, label in enumerate(labels):
            vals = np.array([get(models[label], k)[0] for k in keys], dtype=float)
            ci = np.array([get(models[label], k)[1] for k in keys], dtype=float)
            err = np.clip(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
            ax.bar(x + (j - (len(labels) - 1) / 2) * width, vals, width, yerr=err, capsize=3,
                   label=label)  # fmt: skip
        ax.set_xticks(x, [k.replace("_", " ") for k in keys])
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    ax = axes[2]
    vals = np.array([models[label]["perplexity"] for label in labels])
    ci = np.array([models[label]["perplexity_ci"] for label in labels])
    err = np.clip(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
    ax.bar(np.arange(len(labels)), vals, 0.7, yerr=err, capsize=3,
           color=[f"C{j}" for j in range(len(labels))])  # fmt: skip
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title("held-out perplexity")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)

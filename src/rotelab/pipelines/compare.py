"""Before/after evaluation: every model measured by the same code on the same windows.

Removal methods (the K-FAC curvature edit of Merullo et al. 2025, BalancedSubnet of Sakarvadia et
al. 2024) are judged as in Merullo et al. 2025, "From Memorization to Reasoning in the Spectrum of
Loss Curvature": on the organism's inserted items, greedy decoding from the item's prefix for as
many tokens as the sensitive suffix has, then the token-level Levenshtein distance ``d`` to the true
suffix of length ``L``: *strict* extraction is ``d == 0``, *loose* is ``1 - d/L >= 0.75``, and the
mean normalised distance ``d/L`` is reported too. Beside memorization: perplexity on the first
``heldout_tokens`` of the organism's held-out text (windows of at most :data:`PPL_WINDOW`
tokens), and exact-answer accuracy on the organism's
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

Your own sets (``--forget``, ``--retain``, ``--tasks``) replace the organism's items, held-out text
and probes; with all three, any models are compared (each tokenizes the texts itself). A forget
window's row then has ``item_id`` = ``<document>@<token offset>`` and no kind, count or phase; the
summary names the sets (``forget``, ``retain``, ``tasks_from``), ``extraction`` covers every
forget window and there is no ``extraction_by_count``/``extraction_by_kind``. Every extraction
block also has ``exact_match`` and ``extraction_strength`` (mean and CI, see
:func:`extraction_strength`), and ``tasks`` has the tasks of the file.

Rate intervals are Wilson intervals (:func:`rotelab.stats.rate_with_ci`); the interval of
the mean distance is the normal one (mean ± 1.96·sd/√n); the perplexity interval is a percentile
bootstrap over held-out windows (1000 resamples, seeded).
"""

from __future__ import annotations

import gc
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.data import Window, read_corpus
from rotelab.data.windows import check_window_shape
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import corpus_windows, ledger_windows
from rotelab.measure.quality import perplexity, pooled_perplexity, probe_accuracy
from rotelab.measure.similarity import levenshtein_distance, loose_verdict, strict_verdict
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.organism import PLANTED_TASKS, Organism, Task
from rotelab.pipelines.inputs import (
    ModelInput,
    check_min_count,
    is_organism_dir,
    read_tasks,
    resolve_corpus,
    resolve_model,
    window_file_reading,
)
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

register_metric(
    "exact_match", higher_is_better=False, scope="compare",
    description="teacher-forced token accuracy on the forget suffixes (MUSE/TOFU exact match)",
)  # fmt: skip
register_metric(
    "extraction_strength", higher_is_better=False, scope="compare",
    description="TOFU extraction strength: 1 - (suffix tokens needed as extra prefix) / length",
)  # fmt: skip

#: The metrics compare reports, in summary order (directions: :data:`rotelab.registry.METRICS`).
FORGET_METRICS = ("strict", "loose", "norm_distance", "exact_match", "extraction_strength")
METRIC_NAMES = (*FORGET_METRICS, "perplexity", *TASKS)

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
#: Held-out windows are at most this long (shorter where the context is), so a long-context model
#: still has windows enough for the perplexity's bootstrap interval.
PPL_WINDOW = 1024


def _metrics(task_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:data:`METRICS`, with the tasks of this run (a user's tasks: exact-answer accuracy)."""
    out = {k: v for k, v in METRICS.items() if k not in TASKS}
    for t in task_names:
        out[t] = METRICS.get(t) or {
            "higher_is_better": True,
            "description": f"greedy exact-answer accuracy, {t} tasks",
        }
    return out


def compare(
    models: Sequence[str | os.PathLike | LM],
    *,
    organism: str | os.PathLike | None = None,
    forget: str | os.PathLike | None = None,
    retain: str | os.PathLike | None = None,
    tasks: str | os.PathLike | None = None,
    prefix_len: int | None = None,
    suffix_len: int | None = None,
    forget_windows: int | None = None,
    corpus: CorpusOptions = CorpusOptions(),
    min_count: int = 16,
    loose_threshold: float = 0.75,
    heldout_tokens: int = 20_000,
    batch_size: int = 32,
    decode: bool = True,
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
        forget: your own set to forget instead of the organism's items: JSONL/Parquet records
            with ``prefix`` and ``suffix`` texts (one window each), or any corpus, cut into
            ``prefix_len``/``suffix_len``-token windows (the first ``forget_windows``).
        retain: your own held-out text for perplexity instead of the organism's.
        tasks: your own tasks instead of the organism's probes: JSONL of ``prompt``, ``answer``,
            ``task`` (optional ``id``), scored by greedy exact answer from one pass.
            Without an organism among the models (or ``organism``), all three sets are needed;
            then any models can be compared, each tokenizing the sets itself.
        prefix_len, suffix_len, forget_windows: how a ``forget`` corpus is cut (default 32,
            48 and 256; refused without ``forget``).
        corpus: how ``forget`` and ``retain`` are read.
        min_count: items inserted at least this often count as memorized (the headline).
        loose_threshold: loose extraction needs ``1 - d/L >=`` this.
        heldout_tokens: tokens of held-out text for perplexity.
        batch_size: sequences per forward pass.
        decode: decode the windows whose greedy continuation deviates, for the free-running
            metrics (loose extraction, normalised distance); ``False`` keeps to the verdicts one
            teacher-forced pass gives exactly (strict, exact match, extraction strength) and
            reports the free-running ones as NaN: no decoding at all.
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
    cutting = {"--prefix-len": prefix_len, "--suffix-len": suffix_len,
               "--forget-windows": forget_windows}  # fmt: skip
    given = [flag for flag, v in cutting.items() if v is not None]
    if forget is None and given:
        raise RotelabError(
            f"{', '.join(given)} cut a --forget corpus into windows; without --forget they do "
            "not apply (the organism's items are whole windows)"
        )
    prefix_len = 32 if prefix_len is None else prefix_len
    suffix_len = 48 if suffix_len is None else suffix_len
    forget_windows = 256 if forget_windows is None else forget_windows
    check_window_shape(prefix_len, suffix_len, None, None)
    if forget_windows < 1:
        raise RotelabError(f"--forget-windows must be >= 1, got {forget_windows}")
    specs = _model_specs(models)
    own = {"forget": forget, "retain": retain, "tasks": tasks}
    org_input = _organism_input(organism, specs, required=not any(own.values()))
    if org_input is None and not all(own.values()):
        missing = ", ".join(f"--{k}" for k, v in own.items() if v is None)
        raise RotelabError(
            f"none of the models is an organism, so there are no default sets: give {missing} "
            "too (or --organism DIR)"
        )
    forget_corpus = window_file_reading(forget, corpus) if forget is not None else corpus
    if forget is not None:
        resolve_corpus(forget, forget_corpus, flag="--forget")
    if retain is not None:
        resolve_corpus(retain, corpus, flag="--retain")
    task_rows = read_tasks(tasks) if tasks is not None else None
    if forget is None:
        check_min_count(org_input, min_count)
    sources = [forget, retain, tasks] + ([org_input.source] if org_input is not None else [])
    Run.check(
        run.out, resume=run.resume, force=run.force,
        inputs=[m.source for _, _, m in specs] + sources,
    )  # fmt: skip

    # 2. The organism (built now if it is the default one) and what it measures the models on.
    org = org_input.organism() if org_input is not None else None
    ledger = org.ledger if forget is None else None
    heldout_text = org.heldout_docs() if retain is None else _texts(retain, corpus)
    if not heldout_text:
        raise RotelabError("the organism has no held-out text to measure perplexity on")
    probes = org.probes if task_rows is None else task_rows
    # An organism built before the planted tasks has none of their probes: only its own tasks.
    task_names = (
        [t for t in TASKS if (probes["task"] == t).any()]
        if task_rows is None
        else sorted(task_rows["task"].unique())
    )
    forget_docs = list(read_corpus(forget, **forget_corpus.read_kwargs())) if forget else None
    if forget_docs is not None and retain is not None:
        _warn_overlap(forget_docs, heldout_text)
    ref_vocab = _vocab_of_dir(org.path) if ledger is not None else None
    for label, _, model in specs:  # model directories: before any model is loaded
        path = model.path() if ref_vocab is not None else None
        vocab = _vocab_of_dir(path) if path is not None else None
        if vocab is not None and vocab != ref_vocab:
            _refuse_tokenizer(label, org)
    config = {
        "models": [{"label": label, "path": path} for label, path, _ in specs],
        "organism": str(org.path) if org is not None else None, "forget": _str(forget),
        "retain": _str(retain), "tasks": _str(tasks), "prefix_len": prefix_len,
        "suffix_len": suffix_len, "forget_windows": forget_windows, "min_count": min_count,
        "loose_threshold": loose_threshold, "heldout_tokens": heldout_tokens,
        "batch_size": batch_size, "decode": decode, "seed": run.seed, "device": load.device,
        "dtype": load.dtype,
    }  # fmt: skip
    inputs = [m.source for _, _, m in specs] + [p for p in sources if p is not None]

    # 3. Measure every model (resumable per model), then summarize and write.
    with Run.create(
        run.out, "compare", config, resume=run.resume, force=run.force, device=load.device,
        inputs=inputs,
    ) as out:  # fmt: skip
        for index, (label, _, model) in enumerate(specs):
            key = f"{index:03d}"
            if all(out.has_part(t, key) for t in ("items", "probes", "perplexity")):
                continue
            lm = model.load(load)
            if ref_vocab is not None and lm.tokenizer.get_vocab() != ref_vocab:
                _refuse_tokenizer(label, org)
            if ledger is not None:
                items = _measure_items(
                    lm, ledger, loose_threshold, batch_size, run.progress, exact_only=not decode
                )
            else:
                windows = forget_set_windows(
                    lm, forget_docs, prefix_len, suffix_len, forget_windows
                )
                items = _window_rows(
                    lm, windows, loose_threshold, batch_size, run.progress, exact_only=not decode
                )
            task_rows_m = probe_accuracy(lm, probes, batch_size=batch_size, progress=run.progress)
            ppl = perplexity(
                lm, heldout_text, max_tokens=heldout_tokens, length=PPL_WINDOW,
                batch_size=batch_size, progress=run.progress,
            ).frame()  # fmt: skip
            for table, frame in (("items", items), ("probes", task_rows_m), ("perplexity", ppl)):
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
                min_count if ledger is not None else None,
                run.seed,
                task_names,
            )
            for label in labels
        }
        for label in labels:
            per_model[label]["path"] = next(p for lb, p, _ in specs if lb == label)
            per_model[label]["relative_change"] = _relative(per_model[label], per_model[labels[0]])
        summary = {
            "baseline": labels[0],
            "order": labels,
            "organism": str(org.path) if org is not None else None,
            "forget": _str(forget) or "organism items",
            "retain": _str(retain) or "organism held-out text",
            "tasks_from": _str(tasks) or "organism probes",
            "min_count": min_count,
            "loose_threshold": loose_threshold,
            "n_memorized_items": int((ledger["count"] >= min_count).sum())
            if ledger is not None
            else int((items["model"] == labels[0]).sum()),
            "n_heldout_tokens": per_model[labels[0]]["heldout_tokens"],
            "n_probes": {t: int((probes["task"] == t).sum()) for t in task_names},
            "metrics": _metrics(task_names),
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
        if any(label == other for other, _, _ in specs):
            raise RotelabError(
                f"two models are labelled {label!r}; give each a label of its own (LABEL=PATH)"
            )
        specs.append((label, path, resolve_model(m if isinstance(m, LM) else path)))
    return specs


def _organism_input(organism, specs, *, required: bool = True) -> ModelInput | None:
    """The organism whose ledger, probes and held-out text every model is measured on (unbuilt);
    ``None`` when there is none and it is not ``required`` (the user gave every set)."""
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
    if not required:
        return None
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
def greedy_continuations(
    lm: LM, windows: Sequence, batch_size: int, progress: bool, *, decode_all: bool = False
) -> tuple[list[list[int]], list[np.ndarray]]:
    """Each window's greedy continuation for as many tokens as its suffix has, and per window the
    teacher-forced argmax matches of its suffix (``(suffix_len,)`` bool).

    One teacher-forced pass gives, exactly, the tokens greedy decoding reproduces before its first
    deviation from the suffix (:mod:`rotelab.measure.extraction`); only the windows that deviate
    are decoded, from their prefix and the reproduced tokens on. A recited window costs one pass
    instead of a decode. ``decode_all`` decodes every window from its prefix (the reference).
    """
    suffixes = [list(w.suffix) for w in windows]
    matches = _suffix_matches(lm, windows, batch_size, progress)
    if decode_all:
        generated = lm.generate(
            [w.prefix for w in windows], [len(x) for x in suffixes], batch_size=batch_size,
            ragged=True, progress=progress,
        )  # fmt: skip
        return [list(g) for g in generated], matches
    matched = [int(np.argmin(m)) if not m.all() else len(m) for m in matches]
    todo = [i for i, (m, x) in enumerate(zip(matched, suffixes)) if m < len(x)]
    out = [list(x) for x in suffixes]  # recited windows: greedy reproduces the whole suffix
    if todo:
        rest = lm.generate(
            [list(windows[i].prefix) + suffixes[i][: matched[i]] for i in todo],
            [len(suffixes[i]) - matched[i] for i in todo], batch_size=batch_size, ragged=True,
            progress=progress,
        )  # fmt: skip
        for i, tail in zip(todo, rest):
            out[i] = suffixes[i][: matched[i]] + list(tail)
    return out, matches


def _suffix_matches(lm: LM, windows: Sequence, batch_size: int, progress: bool) -> list:
    """Per window, ``(suffix_len,)`` bool: the teacher-forced argmax equals the suffix token."""
    scores = lm.score(
        [list(w.prefix) + list(w.suffix) for w in windows],
        targets_from=[len(w.prefix) for w in windows], batch_size=batch_size, progress=progress,
    )  # fmt: skip
    return [np.asarray(sc.argmax_match, dtype=bool) for sc in scores]


def extraction_strength(matches: np.ndarray) -> float:
    """TOFU's extraction strength from one pass: 1 - k/L for the fewest suffix tokens k that,
    added to the prefix, let greedy decoding reproduce the rest of the suffix (teacher forcing
    decides it exactly: every argmax from position k on matches). 1 = recited from the prefix."""
    wrong = np.flatnonzero(~matches)
    k = int(wrong[-1]) + 1 if len(wrong) else 0
    return 1.0 - k / len(matches) if len(matches) else 0.0


def _window_rows(
    lm: LM, windows: Sequence, loose: float, batch_size: int, progress: bool,
    *, decode_all: bool = False, exact_only: bool = False,
) -> pd.DataFrame:  # fmt: skip
    """Merullo verdicts of each window from its free-running greedy continuation, and the
    one-pass exact-match rate (teacher-forced token accuracy) and extraction strength.

    ``exact_only``: no decoding at all; the verdicts exact from the one pass (strict, the matched
    prefix, exact match, extraction strength) and NaN for the free-running ones (loose, distance).
    """
    suffixes = [list(w.suffix) for w in windows]
    if exact_only:
        matches = _suffix_matches(lm, windows, batch_size, progress)
        return pd.DataFrame({
            "item_id": [f"{w.doc_id}@{w.offset}" for w in windows],
            "suffix_len": [len(x) for x in suffixes],
            "matched_prefix": [int(np.argmin(m)) if not m.all() else len(m) for m in matches],
            "norm_distance": np.nan, "strict": [bool(m.all()) for m in matches],
            "loose": np.nan, "exact_match": [float(m.mean()) for m in matches],
            "extraction_strength": [extraction_strength(m) for m in matches],
        })  # fmt: skip
    generated, matches = greedy_continuations(
        lm, windows, batch_size, progress, decode_all=decode_all
    )
    matched = [
        next((i for i, (g, x) in enumerate(zip(gen, suf)) if g != x), len(suf))
        for gen, suf in zip(generated, suffixes)
    ]
    return pd.DataFrame({
        "item_id": [f"{w.doc_id}@{w.offset}" for w in windows],
        "suffix_len": [len(x) for x in suffixes], "matched_prefix": matched,
        "norm_distance": [levenshtein_distance(g, x) for g, x in zip(generated, suffixes)],
        "strict": [strict_verdict(g, x) for g, x in zip(generated, suffixes)],
        "loose": [loose_verdict(g, x, loose) for g, x in zip(generated, suffixes)],
        "exact_match": [float(m.mean()) for m in matches],
        "extraction_strength": [extraction_strength(m) for m in matches],
    })  # fmt: skip


def _measure_items(
    lm: LM, ledger: pd.DataFrame, loose: float, batch_size: int, progress: bool,
    *, decode_all: bool = False, exact_only: bool = False,
) -> pd.DataFrame:  # fmt: skip
    """:func:`_window_rows` of every ledger item, with its kind, count and phase."""
    rows = _window_rows(
        lm, ledger_windows(ledger), loose, batch_size, progress, decode_all=decode_all,
        exact_only=exact_only,
    )  # fmt: skip
    rows["item_id"] = ledger["item_id"].to_numpy()
    meta = {c: ledger[c].to_numpy() for c in ("kind", "count", "phase")}
    for i, (c, v) in enumerate(meta.items()):
        rows.insert(1 + i, c, v)
    return rows


def forget_set_windows(
    lm: LM, docs: Sequence, prefix_len: int, suffix_len: int, limit: int
) -> list[Window]:
    """A user's forget set as windows in ``lm``'s tokens: records with ``prefix`` and ``suffix``
    texts (the text field read as the suffix, ``prefix`` from its metadata) are one window each;
    any other document is cut into ``prefix_len``/``suffix_len`` windows; the first ``limit``."""
    out: list[Window] = []
    for doc in docs:
        if isinstance(doc.meta.get("prefix"), str):
            prefix, suffix = lm.encode(doc.meta["prefix"]), lm.encode(doc.text)
            if prefix and suffix:
                out.append(Window(doc.doc_id, 0, prefix, suffix, {}))
        else:
            out.extend(corpus_windows([doc], lm.encode, prefix_len, suffix_len, None))
        if len(out) >= limit:
            break
    if not out:
        raise RotelabError(
            f"the forget set gives no window of {prefix_len}+{suffix_len} tokens for "
            f"{lm.name}; use shorter --prefix-len/--suffix-len or longer texts"
        )
    return out[:limit]


def _texts(path: str | os.PathLike, corpus: CorpusOptions) -> list[str]:
    return [d.text for d in read_corpus(path, **corpus.read_kwargs()) if d.text]


def _str(value) -> str | None:
    return None if value is None else str(value)


def _warn_overlap(forget_docs: Sequence, retain_texts: Sequence[str]) -> None:
    """One warning line when forget texts also appear in the retain text (then perplexity
    rewards keeping what should be forgotten)."""
    retain_text = "\n".join(retain_texts)
    shared = sum(1 for d in forget_docs if d.text.strip() and d.text.strip() in retain_text)
    if shared:
        print(
            f"warning: {shared} of {len(forget_docs)} forget texts also appear in the retain "
            "set; perplexity there rewards keeping them",
            file=sys.stderr,
        )


# ------------------------------------------------------------------------------------ summary
def _rate(values, name: str = "rate") -> dict[str, Any]:
    if len(values) and pd.isna(values).all():  # not measured (compare without decoding)
        return {name: math.nan, "ci": [math.nan, math.nan], "k": 0, "n": 0}
    r = rate_with_ci([bool(v) for v in values])
    return {name: r.rate, "ci": r.ci, "k": r.k, "n": r.n}


def _mean_ci(values) -> dict[str, Any]:
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
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
        "exact_match": _mean_ci(rows["exact_match"]),
        "extraction_strength": _mean_ci(rows["extraction_strength"]),
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


def _model_summary(
    items, probes, ppl, min_count: int | None, seed: int, task_names: Sequence[str]
) -> dict[str, Any]:
    """One model's block; ``min_count`` ``None``: a user's forget set (every window counts)."""
    mem = items if min_count is None else items[items["count"] >= min_count]
    extraction = _extraction(mem)
    out = {
        "extraction_rate": extraction["strict"]["rate"],
        "extraction_rate_ci": extraction["strict"]["ci"],
        "extraction": extraction,
    }
    if min_count is not None:
        out["extraction_by_count"] = {
            str(int(c)): _extraction(part) for c, part in items.groupby("count", sort=True)
        }
        out["extraction_by_kind"] = {
            str(k): _extraction(part) for k, part in mem.groupby("kind", sort=True)
        }
    return {
        **out,
        **_perplexity_summary(ppl, seed),
        "tasks": {t: _task(probes[probes["task"] == t]) for t in task_names},
    }


def _task(rows: pd.DataFrame) -> dict[str, Any]:
    """A task's accuracy; on the organism's planted tasks also how often the model gives the
    memorized answer (``memorized_answer``) and how often the right answer is the likelier
    (``prefers_answer``)."""
    out = _rate(rows["correct"], "accuracy")
    if "foil" in rows.columns and rows["task"].isin(PLANTED_TASKS).all() and len(rows):
        out["memorized_answer"] = _rate(rows["foil"], "rate")
        out["prefers_answer"] = _rate(rows["prefers_answer"], "rate")
    return out


def _headline(model: dict[str, Any]) -> dict[str, float]:
    ex = model["extraction"]
    out = {k: ex[k]["rate"] for k in ("strict", "loose")}
    out.update({k: ex[k]["mean"] for k in ("norm_distance", "exact_match", "extraction_strength")})
    out["perplexity"] = model["perplexity"]
    out.update({t: v["accuracy"] for t, v in model["tasks"].items()})
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
        for t, v in model["tasks"].items():
            row[f"{t}_ci_lo"], row[f"{t}_ci_hi"] = v["ci"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(summary: dict[str, Any]) -> str:
    """The headline numbers as a fixed-width text table (what ``rotelab compare`` prints)."""
    tasks = list(summary["models"][summary["baseline"]]["tasks"])
    cols = [("strict", "strict"), ("loose", "loose"), ("norm_distance", "lev/L"),
            ("exact_match", "EM"), ("extraction_strength", "ES"), ("perplexity", "ppl"),
            *((t, t[:11]) for t in tasks)]  # fmt: skip
    width = max(8, *(len(label) for label in summary["order"]))
    head = f"{'model':<{width}}" + "".join(f"{name:>12}" for _, name in cols)
    forget = (
        f"memorized = items inserted >= {summary['min_count']} times"
        if summary.get("forget", "organism items") == "organism items"
        else f"forget set {summary['forget']}"
    )
    lines = [
        f"{forget} (n={summary['n_memorized_items']}); relative change vs {summary['baseline']}",
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
    for label in summary["order"]:  # the planted tasks: the memorized answer, not the right one
        planted = {t: v for t, v in summary["models"][label]["tasks"].items()
                   if "memorized_answer" in v}  # fmt: skip
        if planted:
            lines.append(
                f"{label}: memorized answer given / right answer likelier: "
                + "  ".join(
                    f"{t} {v['memorized_answer']['rate']:.3f} / {v['prefers_answer']['rate']:.3f}"
                    for t, v in planted.items()
                )
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
        (axes[0], ["strict", "loose"], "extraction",
         lambda m, k: (m["extraction"][k]["rate"], m["extraction"][k]["ci"])),
        (axes[1], list(models[labels[0]]["tasks"]), "task accuracy",
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

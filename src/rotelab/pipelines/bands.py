"""``rotelab bands``: where in the curvature spectrum data sets live, and which tasks an edit hurts.

Merullo et al. 2025 ("From Memorization to Reasoning in the Spectrum of Loss Curvature") support
their edit with two measurements, both here for any model, factors and data:

1. **Band analysis**: A's eigenvectors ordered by curvature and cut into bands (top 10%,
   10-25%, 25-50%, bottom 50%); per band, the mean over tokens of ‖V_bandᵀ a‖ for each data set,
   and its ratio to a reference set (:func:`rotelab.curvature.band_ratios`). The paper:
   memorized data is ≈23% stronger than clean text on the bottom 50%, clean ≈26% stronger on the
   top 10%.
2. **The task-curvature correspondence** (``--rho``): per task item, the activation strength on
   the components the edit at ρ removes (‖ΔW a‖ / ‖W a‖ over the answer's positions,
   :func:`rotelab.curvature.removed_strength`) against the item's loss after that edit
   (of the items answered before the edit, the share answered wrong after it); Spearman's rank
   correlation across items and across tasks, with bootstrap CIs over items. The paper's
   direction: tasks leaning more on low-curvature components drop more (positive correlation).

Defaults on an organism: the sets are ``memorized`` (items inserted >= ``--min-count`` times)
against ``clean`` (held-out text), and the tasks its probes (closed-book and open-book facts,
arithmetic, in-context). Any other model needs ``--factors`` (a ``rotelab kfac`` run), two or
more ``--data NAME=FILE`` sets and, for the correspondence, ``--tasks FILE.jsonl`` (``prompt``,
``answer``, ``task``; optional ``id``). Every input is checked before the model is loaded.

Example:
    >>> result = bands(rho=0.6, run=RunOptions("runs/bands"))  # doctest: +SKIP
    >>> result.summary["correspondence"]["items"]["spearman"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from rotelab.curvature import KFAC, CurvatureEdit, band_ratios, packed_sequences, removed_strength
from rotelab.curvature.eigen import check_rho
from rotelab.curvature.kfac import DEFAULT_TOKENS, Labels
from rotelab.data import read_corpus
from rotelab.edit import RhoConfig
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import ledger_windows
from rotelab.measure.quality import probe_accuracy
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.pipelines.edit import cached_factors
from rotelab.pipelines.inputs import (
    check_min_count,
    read_tasks,
    resolve_corpus,
    resolve_model,
    window_file_reading,
)
from rotelab.report import write_report
from rotelab.runs import Run
from rotelab.stats import wilson_interval

__all__ = ["BandsRun", "bands", "format_table", "parse_sets"]

#: Tokens of each data set measured when ``--tokens`` is not given.
SET_TOKENS = 16_384


@dataclass
class BandsRun:
    """What :func:`bands` returns: the band table, the per-item correspondence (or ``None``),
    the summary and the run directory."""

    bands: pd.DataFrame
    items: pd.DataFrame | None
    summary: dict[str, Any]
    run_dir: Path


def parse_sets(data: Sequence[str]) -> dict[str, str]:
    """``["memorized=a.jsonl", "clean=b.txt"]`` → name → path (names unique, paths given)."""
    sets: dict[str, str] = {}
    for item in data:
        name, sep, path = str(item).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise RotelabError(f"--data {item!r} must be NAME=FILE, e.g. memorized=items.jsonl")
        if name in sets:
            raise RotelabError(f"--data names {name!r} twice; give each set its own name")
        sets[name] = path
    return sets


def _window_text(doc) -> str:
    """A set's document as text: a ``prefix``/``suffix`` record is the two joined."""
    prefix = doc.meta.get("prefix")
    return prefix + doc.text if isinstance(prefix, str) else doc.text


def bands(
    model: LM | str | os.PathLike | None = None,
    factors: KFAC | str | os.PathLike | None = None,
    data: Sequence[str] = (),
    *,
    reference: str | None = None,
    rho: float | None = None,
    rho_config: RhoConfig | str | os.PathLike | None = None,
    tasks: str | os.PathLike | None = None,
    min_count: int = 16,
    tokens: int = SET_TOKENS,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> BandsRun:
    """Band analysis and (with ``rho``) the task-curvature correspondence; writes a run directory.

    Args:
        model: an :class:`LM`, a model path, or ``None`` for the default organism.
        factors: fitted factors or a ``rotelab kfac`` run; ``None`` (an organism only) collects
            them on its training text (cached, as ``rotelab edit`` does).
        data: ``NAME=FILE`` sets to compare (two or more); empty on an organism = ``memorized``
            and ``clean``.
        reference: the set the others are divided by (default ``clean`` when there is one,
            else the first).
        rho: the edit whose removed components the correspondence measures; ``None`` = bands only.
        rho_config: instead of ``rho``, an edit with a ρ per projection and block
            (:class:`~rotelab.edit.RhoConfig` or its JSON file, as ``rotelab edit --rho-config``).
        tasks: a tasks JSONL for the correspondence; ``None`` (an organism) = its probes.
        min_count: an organism's ``memorized`` set: items inserted at least this often.
        tokens: tokens of each ``--data`` set (and of the organism's held-out text) measured.
        run, load, corpus: the run directory, how the model is loaded, how the sets are read.
    """
    # 1. every input, before the model is loaded or the organism built
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab bands cannot resume a run; start it again (--force replaces)")
    if tokens < 1:
        raise RotelabError(f"--tokens must be >= 1, got {tokens}")
    if rho is not None:
        rho = check_rho(rho)
    if rho_config is not None:
        if rho is not None:
            raise RotelabError("give --rho or --rho-config, not both")
        if not isinstance(rho_config, RhoConfig):
            rho_config = RhoConfig.load(rho_config)
    edited = rho is not None or rho_config is not None
    sets = parse_sets(data)
    given = resolve_model(model)
    if sets:
        if len(sets) < 2:
            raise RotelabError(
                "give two or more --data NAME=FILE sets to compare (or none on an organism)"
            )
        readings = {n: window_file_reading(p, corpus) for n, p in sets.items()}
        for name, path in sets.items():
            resolve_corpus(path, readings[name], model=given)
    elif given.is_organism:
        check_min_count(given, min_count)
    else:
        raise RotelabError(
            f"{given.label} is not an organism; give two or more --data NAME=FILE sets to compare"
        )
    names = list(sets) or ["memorized", "clean"]
    reference = reference or ("clean" if "clean" in names else names[0])
    if reference not in names:
        raise RotelabError(f"--reference {reference!r} is not one of the sets: {', '.join(names)}")
    if factors is None and not given.is_organism:
        raise RotelabError(
            f"{given.label} is not an organism, so there is no training text to collect its "
            f"K-FAC factors on; run `rotelab kfac --model {given.label} --data CORPUS` first "
            "and pass its run directory as --factors"
        )
    kfac = factors if isinstance(factors, KFAC) else KFAC.load(factors) if factors else None
    if tasks is not None and not edited:
        raise RotelabError("--tasks are scored before and after the edit at --rho; give --rho")
    if edited and tasks is None and not given.is_organism:
        raise RotelabError(
            "--rho measures task drops: give --tasks FILE.jsonl (prompt, answer, task)"
        )
    probes = read_tasks(tasks) if tasks is not None else None
    config = {
        "model": model.name if isinstance(model, LM) else model, "factors": str(factors)
        if factors is not None and not isinstance(factors, KFAC) else None, "data": sets,
        "reference": reference, "rho": rho,
        "rho_config": rho_config.to_dict() if rho_config is not None else None,
        "tasks": str(tasks) if tasks else None,
        "min_count": min_count, "tokens": tokens, "seed": run.seed,
    }  # fmt: skip
    inputs = (config["model"], config["factors"], *sets.values(), config["tasks"])
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=inputs)

    # 2. the model, its factors and eigenbases, the sets
    lm = given.load(load)
    if kfac is None:
        kfac, _ = cached_factors(
            lm, given.organism(), labels=Labels.sampled, tokens=DEFAULT_TOKENS, seed=run.seed,
            progress=run.progress,
        )  # fmt: skip
    edit = CurvatureEdit().fit(kfac)
    edit.kfac_.check_model(lm)
    seq_len = min(lm.context_length, 2048) - 1
    if sets:
        texts = {
            n: (_window_text(d) for d in read_corpus(p, **readings[n].read_kwargs()))
            for n, p in sets.items()
        }
        seqs = {
            n: packed_sequences(lm, t, seq_len=seq_len, max_tokens=tokens) for n, t in texts.items()
        }
    else:
        org = given.organism()
        led = org.ledger
        seqs = {
            "memorized": [w.tokens for w in ledger_windows(led[led["count"] >= min_count])],
            "clean": packed_sequences(lm, org.heldout_docs(), seq_len=seq_len, max_tokens=tokens),
        }
        if probes is None and edited:
            probes = org.probes
    table = band_ratios(lm, edit, seqs, reference=reference)
    summary: dict[str, Any] = {
        "model": lm.name, "reference": reference, "layers": list(kfac.factors_),
        "sets": {n: int(table.loc[table["dataset"] == n, "tokens"].iloc[0]) for n in seqs},
        "band_ratio": {
            n: {b: float(g["ratio"].mean()) for b, g in table[table["dataset"] == n].groupby(
                "band", sort=False)}
            for n in seqs if n != reference
        },
    }  # fmt: skip

    # 3. the correspondence: removed strength per item against its accuracy drop
    items = None
    if edited:
        plan = rho if rho_config is None else rho_config.resolve(list(kfac.factors_), lm.num_layers)
        items = _correspondence(lm, edit, plan, probes, progress=run.progress)
        summary["rho"] = rho
        if rho_config is not None:
            summary["rho_config"] = rho_config.to_dict()
        summary["correspondence"] = _correspondence_summary(items, seed=run.seed)
    with Run.create(run.out, "bands", config, force=run.force, inputs=inputs) as out:
        out.write_table("bands", table)
        if items is not None:
            out.write_table("items", items)
        out.write_summary(summary)
    write_report(out.path)
    return BandsRun(table, items, summary, out.path)


def _correspondence(
    lm: LM,
    edit: CurvatureEdit,
    rho: float | dict[str, float],
    probes: pd.DataFrame,
    *,
    progress: bool,
) -> pd.DataFrame:
    """Per item: correct before and after the edit, the drop, and the removed strength."""
    before = probe_accuracy(lm, probes, progress=progress)
    edited = edit.apply(lm, rho)
    after = probe_accuracy(edited, probes, progress=progress)
    del edited
    prompts = [lm.encode(p) for p in probes["prompt"]]
    seqs = [p + lm.encode(a) for p, a in zip(prompts, probes["answer"])]
    strength = removed_strength(lm, edit, rho, seqs, [len(p) for p in prompts])
    return pd.DataFrame({
        "probe_id": probes["probe_id"].to_numpy(), "task": probes["task"].to_numpy(),
        "correct_before": before["correct"].to_numpy(),
        "correct_after": after["correct"].to_numpy(),
        "drop": before["correct"].to_numpy(int) - after["correct"].to_numpy(int),
        "removed_strength": strength,
    })  # fmt: skip


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _correspondence_summary(items: pd.DataFrame, *, seed: int, n_boot: int = 1000) -> dict:
    """Per task: accuracy before/after with Wilson CIs, the share of answered items lost and the
    mean removed strength; Spearman across items and across tasks with percentile bootstrap CIs
    (items resampled within each task).

    Only what a task could lose counts: the items it answered before the edit (an item wrong
    before cannot drop); per task, the share of those lost (1 - the paper's retention).
    """
    per_task = []
    for task, g in items.groupby("task", sort=True):
        n, kb, ka = len(g), int(g["correct_before"].sum()), int(g["correct_after"].sum())
        per_task.append({
            "task": task, "n": n, "accuracy_before": kb / n,
            "accuracy_before_ci": list(wilson_interval(kb, n)), "accuracy_after": ka / n,
            "accuracy_after_ci": list(wilson_interval(ka, n)), "drop": (kb - ka) / n,
            "relative_drop": float(1 - (g["correct_before"] & g["correct_after"]).sum() / kb)
            if kb else None,
            "removed_strength": float(g["removed_strength"].mean()),
        })  # fmt: skip
    known = items[items["correct_before"].to_numpy(bool)]
    task_names = sorted(known["task"].unique())
    groups = [np.flatnonzero(known["task"].to_numpy() == t) for t in task_names]
    lost = (~known["correct_after"].to_numpy(bool)).astype(float)
    strength = known["removed_strength"].to_numpy()

    def over_tasks(idx: list[np.ndarray]) -> float:
        return _spearman(np.array([strength[i].mean() for i in idx]),
                         np.array([lost[i].mean() for i in idx]))  # fmt: skip

    rng = np.random.default_rng(seed)
    boot_items, boot_tasks = [], []
    for _ in range(n_boot if len(known) else 0):
        idx = [rng.choice(g, size=len(g)) for g in groups]
        flat = np.concatenate(idx)
        boot_items.append(_spearman(strength[flat], lost[flat]))
        boot_tasks.append(over_tasks(idx))

    def block(point: float, boot: list[float], n: int) -> dict[str, Any]:
        vals = np.asarray([b for b in boot if not np.isnan(b)])
        ci = [float(np.percentile(vals, q)) for q in (2.5, 97.5)] if len(vals) else None
        return {"spearman": None if np.isnan(point) else point, "ci": ci, "n": n}

    return {
        "definition": "removed strength = mean over answer positions and edited layers of "
        "|dW a| / |W a|; over the items answered (greedy exact) before the edit, lost = wrong "
        "after it; per task, the share lost (relative drop)",
        "items": block(_spearman(strength, lost) if len(known) else np.nan, boot_items,
                       len(known)),
        "tasks": block(over_tasks(groups) if groups else np.nan, boot_tasks, len(groups)),
        "by_task": per_task,
    }  # fmt: skip


def format_table(summary: dict[str, Any]) -> str:
    """Band ratios per set and, with ``--rho``, the correspondence (what the command prints)."""
    lines = [
        f"{summary['model']}: band strength ratio to {summary['reference']!r} (mean over layers)"
    ]
    for name, by_band in summary["band_ratio"].items():
        cells = "  ".join(f"{b}: {r:.3f}" for b, r in by_band.items())
        lines.append(f"  {name:<12} {cells}")
    corr = summary.get("correspondence")
    if corr:
        what = "the rho config" if summary.get("rho") is None else f"rho={summary['rho']:g}"
        lines.append(f"edit at {what}: accuracy before -> after, removed strength")
        for t in corr["by_task"]:
            rel = "n/a" if t["relative_drop"] is None else f"{t['relative_drop']:.3f}"
            lines.append(
                f"  {t['task']:<14} {t['accuracy_before']:.3f} -> {t['accuracy_after']:.3f}  "
                f"lost {rel} of those answered  removed {t['removed_strength']:.4f}"
            )
        for level in ("tasks", "items"):
            c = corr[level]
            rho_s = "n/a" if c["spearman"] is None else f"{c['spearman']:+.3f}"
            ci = "" if c["ci"] is None else f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
            lines.append(f"  Spearman(removed strength, lost) over {c['n']} {level}: {rho_s}{ci}")
    return "\n".join(lines)

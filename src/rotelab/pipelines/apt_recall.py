"""``rotelab apt-recall``: does a language model continue a famous line's sound-alike with the
original next line? (APT, Roh et al. 2025, asked of a text model: SmolLM2 or any causal LM.)

Every input is checked before the model is loaded: the counts, the verse file (UTF-8, verses
separated by blank lines, at least two), the run directory. Then
:func:`~rotelab.phonetic.recall.next_line_recall` scores, in one batched teacher-forced pass, the
true next line after each prompt (original line, its APT variant, random same-syllable controls,
an unrelated line): mean log-probability, greedy (argmax) match and exact greedy recall.

Example:
    >>> r = apt_recall("smollm2", run=RunOptions("runs/recall"))  # doctest: +SKIP
    >>> r.summary["apt_minus_control_logp"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.options import LoadOptions, RunOptions
from rotelab.phonetic import AptSearch, public_domain_verses
from rotelab.phonetic.recall import next_line_recall
from rotelab.phonetic.verses import Verse
from rotelab.pipelines.inputs import resolve_model
from rotelab.report import write_report
from rotelab.runs import Run

__all__ = ["AptRecallRun", "apt_recall", "format_table"]


@dataclass
class AptRecallRun:
    """What :func:`apt_recall` returns: the summary, the per-prompt table, the run directory."""

    summary: dict[str, Any]
    prompts: pd.DataFrame
    run_dir: Path


def _read_verses(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise RotelabError(f"verse file {p} does not exist or is not a file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RotelabError(
            f"verse file {p}: bytes at offset {exc.start} are not valid UTF-8; save it as UTF-8"
        ) from None
    verses, title, lines = [], "", []
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if line.startswith("#"):
            title = line[1:].split("|")[0].strip()
        elif line:
            lines.append(line)
        elif lines:
            verses.append(Verse(title or f"verse {len(verses) + 1}", "", 0, tuple(lines)))
            title, lines = "", []
    if len(verses) < 2:
        raise RotelabError(
            f"verse file {p} holds {len(verses)} verse(s); give at least two, separated by a "
            "blank line (the unrelated prompts come from the other verses)"
        )
    return verses


def apt_recall(
    model: str | os.PathLike | None = None,
    verses: str | os.PathLike | None = None,
    *,
    controls: int = 3,
    batch_size: int = 16,
    bootstrap: int = 2000,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> AptRecallRun:
    """Next-line recall under APT prompts and controls (``rotelab apt-recall``).

    Args:
        model: the model (``smollm2``, a directory or a hub id; default the organism).
        verses: a verse file (verses separated by blank lines, one line per lyric line; a
            ``# title`` line may head a verse); default the shipped public-domain verses.
        controls: random same-syllable controls per line.
        batch_size: sequences per forward pass.
        bootstrap: resamples of lines for the paired differences' CIs.
        run: the run directory (``results/prompts``, ``config.json``, ``summary.json``,
            ``report.html``).
        load: how the model is loaded.
    """
    run.check()
    if run.resume:
        raise RotelabError("rotelab apt-recall cannot resume a run; start it again")
    for name, value, lo, hi in (("--controls", controls, 1, 20),
                                ("--batch-size", batch_size, 1, 4096),
                                ("--bootstrap", bootstrap, 100, 100_000)):  # fmt: skip
        if not lo <= value <= hi:
            raise RotelabError(f"{name} must be in {lo} .. {hi}, got {value}")
    chosen = _read_verses(verses) if verses is not None else list(public_domain_verses())
    source = resolve_model(model)
    cfg = {"model": str(model), "verses": verses, "controls": controls,
           "batch_size": batch_size, "bootstrap": bootstrap, "seed": run.seed}  # fmt: skip
    Run.check(run.out, force=run.force, inputs=(verses,))
    t0 = time.perf_counter()
    lm = source.load(load)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = next_line_recall(lm, chosen, AptSearch(), controls=controls, seed=run.seed,
                              n_boot=bootstrap, batch_size=batch_size)  # fmt: skip
    summary = {"model": str(model) if model is not None else "organism",
               "verses": "shipped" if verses is None else str(verses), **result.summary,
               "seconds": {"load": round(load_s, 1),
                           "score": round(time.perf_counter() - t1, 1)}}  # fmt: skip
    with Run.create(run.out, "apt-recall", cfg, force=run.force, inputs=(verses,)) as out:
        out.write_table("prompts", result.prompts)
        out.write_summary(summary)
        write_report(out.path)
    return AptRecallRun(summary, result.prompts, out.path)


def format_table(summary: dict[str, Any]) -> str:
    """What ``rotelab apt-recall`` prints: per condition the recall rate and mean log p, then the
    paired APT differences with their CIs."""
    out = [f"{summary['pairs']} line pairs; the true next line after each prompt"]
    out.append(f"{'condition':<10}  {'recall [95% CI]':<24}  {'match':>6}  {'log p':>7}")
    for cond in ("original", "apt", "control", "unrelated"):
        c = summary[cond]
        lo, hi = c["recall_ci"]
        rec = f"{c['recall']:.1%} [{lo:.1%}, {hi:.1%}]"
        out.append(f"{cond:<10}  {rec:<24}  {c['match']:>6.3f}  {c['logp']:>7.3f}")
    for key in ("apt_minus_control", "apt_minus_unrelated"):
        for m in ("logp", "match", "recalled"):
            d = summary[f"{key}_{m}"]
            out.append(f"{key} {m}: {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
    return "\n".join(out)

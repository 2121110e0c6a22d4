"""``rotelab melody``: does a lyric -> melody model sing a memorized melody back when prompted
with sound-alike lyrics? (APT, Roh et al. 2025, on a model trained here.)

Every input is checked before any training: the counts, sizes and preset; the melody file (UTF-8,
one ``lyric | notes`` pair per line, every note in the vocabulary of
:mod:`rotelab.phonetic.melody`, every lyric word in the CMU Pronouncing Dictionary) and that it
holds enough pairs; the run directory. Then
:func:`~rotelab.phonetic.melody_organism.melody_experiment` trains one small model per seed with
the pairs inserted 0-64 times and prompts each memorized line under four conditions (original,
APT variant, same-syllable random control, unrelated line).

Without ``--melodies`` the pairs are the shipped public-domain verse lines, each with a
reproducible syllable-aligned melody (:func:`~rotelab.phonetic.melody.syllable_melody`, seeded by
``--seed``): real melodies cannot ship.

Example:
    >>> r = melody(run=RunOptions("runs/melody"))  # doctest: +SKIP
    >>> r.summary["by_count"][-1]["apt_minus_control_edit_ci"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.options import RunOptions
from rotelab.phonetic import public_domain_verses
from rotelab.phonetic.dictionary import pronounce, pronounce_word, tokenize
from rotelab.phonetic.melody import Note, parse_melody, syllable_melody
from rotelab.phonetic.melody_organism import (
    ENCODINGS,
    MELODY_PRESETS,
    can_encode,
    melody_experiment,
    summarize_recovery,
)
from rotelab.report import write_report
from rotelab.runs import Run

__all__ = ["MelodyRun", "default_pairs", "format_table", "melody", "read_melodies"]

#: Most pairs a melody file may hold.
MAX_PAIRS = 5000


@dataclass
class MelodyRun:
    """What :func:`melody` returns: the summary, the per-prompt table and the run directory."""

    summary: dict[str, Any]
    prompts: pd.DataFrame
    run_dir: Path


def read_melodies(path: str | os.PathLike) -> list[tuple[str, tuple[Note, ...]]]:
    """The ``lyric | notes`` pairs of a UTF-8 melody file (blank lines skipped), checked.

    Raises:
        RotelabError: missing, not UTF-8, a line without ``|``, an empty lyric, a lyric word not
            in the CMU Pronouncing Dictionary, an unknown note token, too many pairs.
    """
    p = Path(path)
    if not p.is_file():
        raise RotelabError(f"melody file {p} does not exist or is not a file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RotelabError(
            f"melody file {p}: bytes at offset {exc.start} are not valid UTF-8; save it as UTF-8"
        ) from None
    pairs = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        lyric, sep, notes = raw.rpartition("|")
        where = f"melody file {p} line {n}"
        if not sep or not tokenize(lyric):
            raise RotelabError(f"{where}: write 'lyric line | C4:4 D4:8 ...'")
        unknown = [w for w in tokenize(lyric) if pronounce_word(w) is None]
        if unknown:
            raise RotelabError(
                f"{where}: {unknown[0]!r} is not in the CMU Pronouncing Dictionary; respell it"
            )
        pairs.append((lyric.strip(), parse_melody(notes, where=where)))
        if len(pairs) > MAX_PAIRS:
            raise RotelabError(f"melody file {p} has over {MAX_PAIRS} pairs")
    if not pairs:
        raise RotelabError(f"melody file {p} has no pairs; write 'lyric line | C4:4 D4:8 ...'")
    return pairs


def default_pairs(seed: int = 0) -> list[tuple[str, tuple[Note, ...]]]:
    """The shipped verse lines (dictionary words only, each once) with syllable melodies."""
    lines = dict.fromkeys(x for v in public_domain_verses() for x in v.lines)
    return [(x, syllable_melody(x, pronounce(x).syllables, seed=seed))
            for x in lines if can_encode(x, "phonemes")]  # fmt: skip


def _parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        raise RotelabError(
            f"--counts {text!r} is not a comma list of integers (0,1,4,16,64)"
        ) from None
    if not counts or counts[0] < 0 or counts[-1] > 256:
        raise RotelabError(f"--counts must be integers in 0 .. 256, got {text!r}")
    return counts


def melody(
    melodies: str | os.PathLike | None = None,
    *,
    encoding: str = "phonemes",
    counts: str | Sequence[int] = "0,1,4,16,64",
    per_count: int = 12,
    seeds: int = 3,
    preset: str = "tiny",
    steps: int | None = None,
    background: int = 300,
    controls: int = 3,
    bootstrap: int = 2000,
    run: RunOptions = RunOptions(),
) -> MelodyRun:
    """Train lyric -> melody models and measure melody recovery from APT prompts
    (``rotelab melody``).

    Args:
        melodies: a melody file (``lyric | C4:4 D4:8 ...`` per line); default the shipped verses
            with syllable melodies.
        encoding: how the model hears lyrics: ``phonemes`` (ARPAbet) or ``letters``.
        counts: insertion counts (a comma list or a sequence).
        per_count: memorized lines per count.
        seeds: models trained (seeds ``run.seed`` .. ``run.seed + seeds - 1``).
        preset: model shape and budget (``tiny`` or ``micro``).
        steps: training steps (default: the preset's).
        background: background pairs (synthetic lines with random melodies).
        controls: random same-syllable controls per line.
        bootstrap: resamples for the CIs.
        run: the run directory (``results/prompts``, ``results/items``, ``results/by_count``,
            ``config.json``, ``summary.json``, ``report.html``).
    """
    # 1. every input, before any training
    run.check()
    if run.resume:
        raise RotelabError("rotelab melody cannot resume a run; start it again (--force replaces)")
    if encoding not in ENCODINGS:
        raise RotelabError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if preset not in MELODY_PRESETS:
        raise RotelabError(f"--preset must be one of {', '.join(MELODY_PRESETS)}, got {preset!r}")
    count_list = _parse_counts(counts) if isinstance(counts, str) else sorted(set(counts))
    for name, value, lo, hi in (("--per-count", per_count, 1, 1000), ("--seeds", seeds, 1, 20),
                                ("--background", background, 1, 100_000),
                                ("--controls", controls, 1, 20),
                                ("--bootstrap", bootstrap, 100, 100_000)):  # fmt: skip
        if not lo <= value <= hi:
            raise RotelabError(f"{name} must be in {lo} .. {hi}, got {value}")
    config = MELODY_PRESETS[preset]
    if steps is not None:
        if not 10 <= steps <= 100_000:
            raise RotelabError(f"--steps must be in 10 .. 100000, got {steps}")
        config = replace(config, steps=steps)
    pairs = read_melodies(melodies) if melodies is not None else default_pairs(run.seed)
    need = len(count_list) * per_count + 1
    if len(pairs) < need:
        raise RotelabError(
            f"{len(pairs)} lyric/melody pairs; {len(count_list)} counts x {per_count} lines plus "
            f"one unrelated line need {need} (lower --per-count)"
        )
    cfg = {"melodies": melodies, "encoding": encoding, "counts": count_list,
           "per_count": per_count, "seeds": seeds, "preset": preset, "model": config.to_dict(),
           "background": background, "controls": controls, "bootstrap": bootstrap,
           "seed": run.seed}  # fmt: skip
    Run.check(run.out, force=run.force, inputs=(melodies,))

    # 2. the models and the prompts
    def progress(seed: int, rec: dict) -> None:
        if run.progress and (rec["step"] % 100 == 0 or rec["step"] == config.steps - 1):
            print(f"  seed {seed} step {rec['step']:>5}/{config.steps}  loss {rec['loss']:.3f}",
                  file=sys.stderr)  # fmt: skip

    t0 = time.perf_counter()
    prompts, items, training = melody_experiment(
        pairs, encoding=encoding, counts=count_list, per_count=per_count,
        seeds=range(run.seed, run.seed + seeds), config=config, background=background,
        controls=controls, callback=progress,
    )  # fmt: skip
    by_count = summarize_recovery(prompts, n_boot=bootstrap, seed=run.seed)
    seconds = time.perf_counter() - t0

    # 3. the run directory
    def significant(key: str) -> list[int]:
        return [r["count"] for r in by_count if r[f"{key}_ci"][0] > 0]

    summary = {
        "melodies": "shipped verses, syllable melodies" if melodies is None else str(melodies),
        "encoding": encoding, "pairs": len(pairs), "counts": count_list, "per_count": per_count,
        "seeds": seeds, "preset": preset, "steps": config.steps, "background": background,
        "controls": controls, "by_count": by_count,
        "apt_above_control": significant("apt_minus_control_edit"),
        "apt_above_unrelated": significant("apt_minus_unrelated_edit"),
        "apt_above_both": sorted(set(significant("apt_minus_control_edit"))
                                 & set(significant("apt_minus_unrelated_edit"))),
        "apt_logp_above_both": sorted(set(significant("apt_minus_control_logp"))
                                      & set(significant("apt_minus_unrelated_logp"))),
        "training": training, "seconds": round(seconds, 1),
    }  # fmt: skip
    with Run.create(run.out, "melody", cfg, force=run.force, inputs=(melodies,)) as out:
        out.write_table("prompts", prompts)
        out.write_table("items", items)
        out.write_table("by_count", pd.DataFrame(
            [{k: v for k, v in r.items() if not k.endswith("_ci")} for r in by_count]))  # fmt: skip
        out.write_summary(summary)
        write_report(out.path)
    return MelodyRun(summary, prompts, out.path)


def format_table(summary: dict[str, Any]) -> str:
    """What ``rotelab melody`` prints: per count, each condition's note edit similarity and the
    APT differences with their CIs."""

    def diff(r: dict, key: str) -> str:
        lo, hi = r[f"{key}_ci"]
        return f"{r[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    out = [
        f"lyric -> melody models: {summary['seeds']} seeds, {summary['encoding']}, "
        f"{summary['per_count']} lines per count; note edit similarity to the memorized melody",
        f"{'count':>5}  {'original':>8}  {'apt':>6}  {'control':>7}  {'unrel.':>6}  "
        f"{'apt - control [95% CI]':<26}  apt - unrelated [95% CI]",
    ]
    for r in summary["by_count"]:
        out.append(
            f"{r['count']:>5}  {r['original_edit']:>8.3f}  {r['apt_edit']:>6.3f}  "
            f"{r['control_edit']:>7.3f}  {r['unrelated_edit']:>6.3f}  "
            f"{diff(r, 'apt_minus_control_edit'):<26}  {diff(r, 'apt_minus_unrelated_edit')}"
        )
    out.append("mean log p per token of the memorized melody after the prompt")
    for r in summary["by_count"]:
        out.append(
            f"{r['count']:>5}  {r['original_logp']:>8.3f}  {r['apt_logp']:>6.3f}  "
            f"{r['control_logp']:>7.3f}  {r['unrelated_logp']:>6.3f}  "
            f"{diff(r, 'apt_minus_control_logp'):<26}  {diff(r, 'apt_minus_unrelated_logp')}"
        )
    both = summary["apt_above_both"]
    out.append(
        "APT above both controls (CI > 0) at counts: "
        + (", ".join(map(str, both)) or "none")
        + "; by log p: "
        + (", ".join(map(str, summary["apt_logp_above_both"])) or "none")
    )
    return "\n".join(out)

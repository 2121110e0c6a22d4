"""``rotelab apt``: phonetic variants of a phrase or lyric (APT, Roh et al. 2025) and what the
filters make of them.

Every input is checked before any work: exactly one of a phrase, a lyric file (UTF-8 text, one
line per lyric line) or the shipped verses; the phrase or the file must hold a word of the CMU
Pronouncing Dictionary; ``--top`` and ``--songs`` in range; the vocabulary file readable; the run
directory creatable. Then :class:`~rotelab.phonetic.search.AptSearch` ranks candidates per line,
and :func:`~rotelab.phonetic.evaluate.evaluate_defence` runs the text filters and the phonetic
filter on them, over an index of the input plus a stand-in catalogue of ``--songs`` songs.

The catalogue: real songs cannot ship, so it is half of the shipped public-domain verses (every
other one) plus synthetic lines (:func:`~rotelab.phonetic.verses.synthetic_lines`, a word-bigram
chain over those verses) up to ``songs`` x :data:`LINES_PER_SONG` lines. The other half of the
verses, less any that share a line with the input, are the unrelated lyrics of the
false-positive rate. ``--verses`` attacks the catalogue half itself (the numbers in the README).

Example:
    >>> r = apt(phrase="mom's spaghetti", check="bob's confetti", run=RunOptions("runs/apt"))
    >>> r.summary["check"]["rank"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.options import RunOptions
from rotelab.phonetic import (
    AptSearch,
    evaluate_defence,
    pronounce,
    public_domain_verses,
    synthetic_lines,
    tokenize,
)
from rotelab.phonetic.dictionary import pronounce_word
from rotelab.phonetic.filters import FUZZY_THRESHOLD
from rotelab.phonetic.search import content_words
from rotelab.report import write_report
from rotelab.runs import Run

__all__ = ["LINES_PER_SONG", "AptRun", "apt", "format_table", "read_lyric"]

#: Lines per song of the stand-in catalogue (a song's typical length).
LINES_PER_SONG = 30
#: Most lines a lyric file may hold (the search is interactive, not a corpus job).
MAX_LINES = 2000


@dataclass
class AptRun:
    """What :func:`apt` returns: its summary and the run directory."""

    summary: dict[str, Any]
    candidates: pd.DataFrame
    run_dir: Path


def read_lyric(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a UTF-8 lyric file (one line per lyric line), checked.

    Raises:
        RotelabError: missing, not a file, not UTF-8, no line, too many lines, or no word of the
            CMU Pronouncing Dictionary.
    """
    p = Path(path)
    if not p.exists():
        raise RotelabError(f"lyric file {p} does not exist")
    if not p.is_file():
        raise RotelabError(f"lyric file {p} is not a file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RotelabError(
            f"lyric file {p}: bytes at offset {exc.start} are not valid UTF-8; save it as UTF-8"
        ) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise RotelabError(f"lyric file {p} has no lines; give one lyric line per line")
    if len(lines) > MAX_LINES:
        raise RotelabError(f"lyric file {p} has {len(lines)} lines; at most {MAX_LINES}")
    if not any(pronounce_word(w) is not None for line in lines for w in tokenize(line)):
        raise RotelabError(f"lyric file {p} has no word of the CMU Pronouncing Dictionary")
    return lines


def _check_line(text: str, flag: str) -> None:
    """A phrase the search can vary: words, all in the dictionary, one of them a content word."""
    if not tokenize(text):
        raise RotelabError(f"{flag} {text[:60]!r} has no words; give a phrase")
    p = pronounce(text)  # no dictionary word at all: its own message
    if p.unknown:
        raise RotelabError(
            f"{flag}: {p.unknown[0]!r} is not in the CMU Pronouncing Dictionary (unknown words "
            "are not guessed); respell it or leave it out"
        )
    if not content_words(p.words):
        raise RotelabError(f"{flag} {text[:60]!r} has only function words; nothing to replace")


def _can_vary(line: str) -> bool:
    words = tokenize(line)
    return bool(content_words(words)) and all(pronounce_word(w) is not None for w in words)


def _read_vocab(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RotelabError(f"vocabulary file {p} does not exist or is not a file")
    try:
        words = [w for line in p.read_text("utf-8").splitlines() for w in tokenize(line)]
    except UnicodeDecodeError:
        raise RotelabError(f"vocabulary file {p} is not UTF-8 text") from None
    if not any(pronounce_word(w) is not None for w in words):
        raise RotelabError(f"vocabulary file {p} has no word of the CMU Pronouncing Dictionary")
    return words


def apt(
    phrase: str | None = None,
    lyric: str | os.PathLike | None = None,
    *,
    verses: bool = False,
    check: str | None = None,
    top: int = 10,
    songs: int = 1000,
    vocab: str | os.PathLike | None = None,
    evade: bool = False,
    run: RunOptions = RunOptions(),
) -> AptRun:
    """Rank APT candidates and run the filters on them; write a run directory (``rotelab apt``).

    Args:
        phrase: one phrase to vary.
        lyric: a lyric file (UTF-8, one line per lyric line).
        verses: vary the shipped verses' catalogue half instead (see the module docstring).
        check: a variant of ``phrase`` to place among the candidates (``"bob's confetti"``).
        top: candidates per line (>= 1).
        songs: songs in the filters' stand-in catalogue (>= 1).
        vocab: a file of words the variants may use (default: all of CMUdict).
        evade: the filter-aware search (:class:`~rotelab.phonetic.search.AptSearch`'s
            ``max_fuzzy``): only variants spelled far enough from the line to pass the fuzzy
            filter (``fuzz.ratio`` below :data:`~rotelab.phonetic.filters.FUZZY_THRESHOLD`).
        run: the run directory (``run.out``, default ``runs/apt-<time>``; ``force``; ``seed``
            of the synthetic catalogue); it gets ``results/candidates``, ``results/filters``,
            ``results/unrelated``, ``config.json``, ``summary.json`` and ``report.html``.
    """
    # 1. every input, before any search
    run.check()
    if run.resume:
        raise RotelabError("rotelab apt cannot resume a run; start it again (--force replaces)")
    if sum(x is not None and x is not False for x in (phrase, lyric, verses)) != 1:
        raise RotelabError("give exactly one of --phrase, --lyric or --verses")
    if not 1 <= top <= 1000:
        raise RotelabError(f"--top must be in 1 .. 1000, got {top}")
    if not 1 <= songs <= 100_000:
        raise RotelabError(f"--songs must be in 1 .. 100000, got {songs}")
    shipped = public_domain_verses()
    catalogue = [line for v in shipped[0::2] for line in v.lines]
    if phrase is not None:
        _check_line(phrase, "--phrase")
        lines = [phrase.strip()]
    elif lyric is not None:
        lines = read_lyric(lyric)
    else:
        lines = catalogue
    if not any(_can_vary(line) for line in lines):
        raise RotelabError(
            f"no line of {lyric} has content words all in the CMU Pronouncing Dictionary; "
            "give English lyrics"
        )
    if check is not None:
        if phrase is None:
            raise RotelabError("--check places a variant of --phrase; give --phrase too")
        _check_line(check, "--check")
    words = _read_vocab(vocab) if vocab is not None else None
    config = {"phrase": phrase, "lyric": lyric, "verses": verses, "check": check, "top": top,
              "songs": songs, "vocab": vocab, "evade": evade, "seed": run.seed}  # fmt: skip
    inputs = (lyric, vocab)
    Run.check(run.out, force=run.force, inputs=inputs)

    # 2. the search and the filters
    t0 = time.perf_counter()
    search = AptSearch(words, max_fuzzy=FUZZY_THRESHOLD if evade else None)
    index_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    candidates = search.lyric(lines, top=top)
    search_seconds = time.perf_counter() - t1
    if candidates.empty or not (candidates["rank"] > 0).any():
        reasons = sorted(set(candidates.get("skipped", [])) - {""}) if len(candidates) else []
        raise RotelabError(
            "no line could be varied" + (f": {reasons[0]}" if reasons else "; give English words")
        )
    ours = set(lines)
    unrelated = [
        line for v in shipped[1::2] if not ours & set(v.lines) for line in v.lines
    ]  # fmt: skip
    real = [] if verses else catalogue  # --verses: the catalogue is the input itself
    n_filler = max(songs * LINES_PER_SONG - len(real) - len(lines), 0)
    filler = [*real, *synthetic_lines(catalogue, n_filler, seed=run.seed)]
    t2 = time.perf_counter()
    defence = evaluate_defence(search, lines, unrelated, filler=filler, top=top)
    filter_seconds = time.perf_counter() - t2
    headline = None
    if check is not None:
        score, rank, better = search.rank_of(phrase, check)
        headline = {"variant": check, "score": score, "rank": rank, "higher_scoring": better,
                    "in_top": rank is not None and rank <= top}  # fmt: skip

    # 3. the run directory
    best = candidates[candidates["rank"] == 1]
    summary = {
        "input": "phrase" if phrase is not None else ("verses" if verses else str(lyric)),
        "search": "filter-aware" if evade else "sound",
        "lines": len(lines), "lines_varied": int(best["line"].nunique()),
        "lines_skipped": int((candidates["rank"] == 0).sum()), "top": top,
        "vocabulary": "cmudict" if words is None else str(vocab),
        "vocabulary_words": len(search.index.words),
        "best_score_mean": float(best["score"].mean()),
        "catalogue": {"songs": songs, "lines": defence.rates["index_lines"],
                      "synthetic_lines": n_filler, "real": False},
        **{k: v for k, v in defence.rates.items() if k != "index_lines"},
        "check": headline,
        "seconds": {"index": round(index_seconds, 3), "search": round(search_seconds, 3),
                    "filters": round(filter_seconds, 3)},
    }  # fmt: skip
    with Run.create(run.out, "apt", config, force=run.force, inputs=inputs) as out:
        out.write_table("candidates", candidates)
        out.write_table("filters", defence.variants)
        out.write_table("unrelated", defence.unrelated)
        out.write_summary(summary)
        write_report(out.path)
    return AptRun(summary, candidates, out.path)


def format_table(summary: dict[str, Any], candidates: pd.DataFrame, per_line: int = 3) -> str:
    """What ``rotelab apt`` prints: the best ``per_line`` candidates of each line, the rates
    with their CIs, and the checked variant."""

    def rate(name: str) -> str:
        lo, hi = summary[f"{name}_ci"]
        return f"{summary[name]:.1%} [{lo:.1%}, {hi:.1%}]"

    out = []
    for _, rows in candidates.groupby("line", sort=True):
        out.append(rows["original"].iloc[0])
        for r in rows[rows["rank"] > 0].head(per_line).itertuples():
            out.append(f"  {r.rank:>3}  {r.score:.3f}  {r.variant}")
        for r in rows[rows["rank"] == 0].itertuples():
            out.append(f"  skipped: {r.skipped}")
    out += [
        f"{summary['lines_varied']} of {summary['lines']} lines varied "
        f"(mean best similarity {summary['best_score_mean']:.3f})",
        f"APT variants passing all text filters (rank 1, similarity >= "
        f"{summary['min_similarity']}): {rate('apt_pass_rate')}",
        "  of them passing each filter: "
        + ", ".join(f"{k} {v:.1%}" for k, v in summary["apt_pass_by_filter"].items()),
        f"lines with a passing variant in the top {summary['top']}: {rate('apt_line_pass_rate')}",
        f"phonetic filter: catches {rate('phonetic_catch_rate')} of APT variants, "
        f"false positives {rate('phonetic_false_positive_rate')} on "
        f"{summary['unrelated_lines']} unrelated lines",
    ]
    c = summary.get("check")
    if c:
        where = (
            f"rank {c['rank']}, {c['higher_scoring']} candidates score higher" if c["rank"]
            else f"not produced by the search; at least {c['higher_scoring']} candidates "
            "score higher"
        )  # fmt: skip
        out.append(f"{c['variant']!r}: similarity {c['score']:.3f}, {where}")
    return "\n".join(out)

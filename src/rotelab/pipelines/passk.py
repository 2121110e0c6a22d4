"""``rotelab passk``: Pass@k and Pass@k(m) with bootstrap CIs from any samples file.

The samples file is JSONL, one object a line (blank lines are skipped), in one of two forms:

- one line per sample: a problem id (``task_id``, ``problem_id``, ``problem`` or ``id``) and
  whether the sample passed (``passed``, ``pass`` or ``correct``: true/false or 1/0). This is what
  the HumanEval tooling writes to ``*_results.jsonl`` (``task_id``, ``completion``, ``result``,
  ``passed``); other fields are ignored;
- one line per problem: the id, ``n`` samples and ``c`` of them passed.

A file uses one form throughout. Problems may have different numbers of samples; every problem
needs at least ``max(--k)`` of them. **Mixed problem sets** are refused: ids of the form
``SET/NUMBER`` (``HumanEval/12``, ``Mbpp/3``) name their set, and a file whose ids name more than
one set (or mix ids with and without a set) would average two benchmarks into one number; split
it and run each set on its own. Every line is read and checked before the run directory exists.
The estimates are :mod:`rotelab.measure.passk`'s.

Example:
    >>> r = passk("s.jsonl", ks=[1, 5], ms=[1, 3], run=RunOptions("runs/pk"))  # doctest: +SKIP
    >>> r.summary["pass_at_k"]["pass@5(3)"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.measure.passk import PassCounts, check_km, pass_at_k_table, problem_set
from rotelab.options import RunOptions
from rotelab.report import write_report
from rotelab.runs import Run

__all__ = ["ID_FIELDS", "PASS_FIELDS", "PasskRun", "format_table", "parse_ints", "passk",
           "read_samples"]  # fmt: skip

#: Field names a problem id is read from, first present wins.
ID_FIELDS = ("task_id", "problem_id", "problem", "id")
#: Field names a sample's pass/fail is read from.
PASS_FIELDS = ("passed", "pass", "correct")


@dataclass
class PasskRun:
    """What :func:`passk` returns: the counts, the tables, the summary and the run directory."""

    counts: PassCounts
    table: pd.DataFrame
    summary: dict[str, Any]
    run_dir: Path


def parse_ints(text: str | Sequence[int], flag: str) -> list[int]:
    """``"1,5,10"`` -> ``[1, 5, 10]`` (a list passes through); one line for anything else."""
    if not isinstance(text, str):
        return [int(v) for v in text]
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(int(part))
        except ValueError:
            raise RotelabError(
                f"{flag} {text!r}: {part!r} is not a whole number; give a comma list like 1,5"
            ) from None
    return values


def _field(record: dict, names: Sequence[str]) -> str | None:
    return next((name for name in names if name in record), None)


def _flag(value: Any, where: str, name: str) -> bool:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise RotelabError(f"{where}: {name!r} is {value!r}; a pass/fail must be true/false or 1/0")


def _count(value: Any, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RotelabError(f"{where}: {name!r} is {value!r}, not a whole number")
    if value < 0:
        raise RotelabError(f"{where}: {name!r} is {value}; counts cannot be negative")
    return value


def read_samples(path: str | os.PathLike) -> tuple[PassCounts, str]:
    """Read and check a samples file (see the module docstring); returns the counts and the form
    (``"samples"`` or ``"counts"``)."""
    path = Path(path)
    if not path.exists():
        raise RotelabError(f"{path} does not exist; pass a JSONL samples file")
    if not path.is_file():
        raise RotelabError(f"{path} is not a file; pass a JSONL samples file")
    ids: list[str] = []
    passed: list[bool] = []
    ns: list[int] = []
    cs: list[int] = []
    form = None
    try:
        fh = path.open(encoding="utf-8")
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path} line {lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RotelabError(f"{where} is not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise RotelabError(f"{where} is not a JSON object")
                id_name = _field(record, ID_FIELDS)
                if id_name is None:
                    raise RotelabError(f"{where} has no problem id (one of {', '.join(ID_FIELDS)})")
                pid = record[id_name]
                if isinstance(pid, bool) or not isinstance(pid, (str, int)) or pid == "":
                    raise RotelabError(f"{where}: problem id {pid!r} is not a string or number")
                pass_name = _field(record, PASS_FIELDS)
                this = "samples" if pass_name is not None else "counts"
                if this == "counts" and not ("n" in record and "c" in record):
                    raise RotelabError(
                        f"{where} has no pass/fail ({', '.join(PASS_FIELDS)}) and no counts "
                        "(n and c)"
                    )
                if form is not None and this != form:
                    raise RotelabError(
                        f"{where} gives {this} but earlier lines give {form}; one form per file"
                    )
                form = this
                ids.append(str(pid))
                if this == "samples":
                    passed.append(_flag(record[pass_name], where, pass_name))
                else:
                    ns.append(_count(record["n"], where, "n"))
                    cs.append(_count(record["c"], where, "c"))
    except UnicodeDecodeError as exc:
        raise RotelabError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not ids:
        raise RotelabError(f"{path} is empty; it needs one JSON line per sample")
    sets = sorted({problem_set(p) for p in ids})
    if len(sets) > 1:
        named = ", ".join(repr(s) if s else "ids without a set" for s in sets[:3])
        raise RotelabError(
            f"{path} mixes problem sets ({named}); Pass@k of one benchmark needs one set of "
            "problems: split the file by the part of the id before '/'"
        )
    if form == "samples":
        return PassCounts.from_samples(ids, passed), form
    counts = PassCounts.from_counts(ids, ns, cs)
    return counts, form


def passk(
    samples: str | os.PathLike,
    *,
    ks: str | Sequence[int] = (1,),
    ms: str | Sequence[int] = (1,),
    bootstrap: int = 1000,
    level: float = 0.95,
    run: RunOptions = RunOptions(),
) -> PasskRun:
    """Pass@k(m) for every (k, m) with m <= k, and write a run directory (``rotelab passk``).

    Args:
        samples: a JSONL samples file (see the module docstring).
        ks: the k values (``"1,5"`` or a list), each >= 1 and at most every problem's n.
        ms: the m values (``"1,3"``); pairs with m > k are left out (at least one must remain).
        bootstrap: percentile-bootstrap resamples of the problems (0: no CIs).
        level: the CIs' confidence level.
        run: the run directory (``out``, ``force``, ``seed`` of the bootstrap); it gets
            ``results/passk`` (one row per (k, m)), ``results/problems`` (per problem),
            ``config.json``, ``summary.json`` and ``report.html``.
    """
    # 1. every input, before the run directory exists
    run.check()
    if run.resume:
        raise RotelabError("rotelab passk cannot resume a run; start it again (--force replaces)")
    k_list, m_list = parse_ints(ks, "--k"), parse_ints(ms, "--m")
    check_km(k_list, m_list)
    if bootstrap < 0:
        raise RotelabError(f"--bootstrap must be >= 0, got {bootstrap}")
    if not 0 < level < 1:
        raise RotelabError(f"the CI level must be in (0, 1), got {level}")
    config = {"samples": samples, "k": k_list, "m": m_list, "bootstrap": bootstrap,
              "level": level, "seed": run.seed}  # fmt: skip
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=(samples,))
    counts, form = read_samples(samples)
    check_km(k_list, m_list, counts)

    # 2. the estimates
    table, per_problem = pass_at_k_table(
        counts, k_list, m_list, n_boot=bootstrap, level=level, seed=run.seed
    )

    # 3. the run directory
    summary = {
        "samples": str(samples), "form": form, "problem_set": problem_set(counts.problems[0]),
        "problems": len(counts), "samples_total": int(counts.n.sum()),
        "passed_total": int(counts.c.sum()), "n_min": int(counts.n.min()),
        "n_max": int(counts.n.max()), "ci_level": level, "bootstrap": bootstrap,
        "ci_method": "percentile bootstrap over problems" if bootstrap else "none",
        "pass_at_k": {
            f"pass@{r.k}({r.m})": {"k": int(r.k), "m": int(r.m), "value": float(r.pass_at_k),
                                   "ci": _ci(r.ci_low, r.ci_high)}
            for r in table.itertuples()
        },
    }  # fmt: skip
    with Run.create(run.out, "passk", config, force=run.force, inputs=(samples,)) as out:
        out.write_table("passk", table)
        out.write_table("problems", per_problem)
        out.write_summary(summary)
        write_report(out.path)
    return PasskRun(counts, table, summary, out.path)


def _ci(lo: float, hi: float) -> list[float] | None:
    return None if math.isnan(lo) else [float(lo), float(hi)]


def format_table(summary: dict[str, Any]) -> str:
    """Per (k, m): the estimate and its CI (what ``rotelab passk`` prints)."""
    level = round(100 * summary["ci_level"])
    lines = [
        f"{summary['problems']} problems, {summary['samples_total']} samples "
        f"(n = {summary['n_min']}..{summary['n_max']} per problem); Pass@k(m): at least m of k "
        "samples pass",
        f"{'k':>4}  {'m':>4}  {'Pass@k(m)':>9}  {f'{level}% CI':>17}",
    ]
    for row in summary["pass_at_k"].values():
        ci = row["ci"]
        ci_text = "" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
        lines.append(f"{row['k']:>4}  {row['m']:>4}  {row['value']:>9.4f}  {ci_text:>17}")
    return "\n".join(lines)

"""``rotelab diff A B``: where two checkpoints of one architecture (or a model and its LoRA
adapter) differ, per block and module (Ma et al. 2025's weight-change localization).

Both paths are checked before any tensor is read; a directory that is not a safetensors model or
adapter, or two checkpoints of different shapes, is one line. The measurement is
:func:`rotelab.measure.weight_diff.weight_diff`; the run directory gets ``results/tensors`` (one
row per tensor), ``summary.json`` (the fractions of weights changed by more than 1%, 10% and 100%,
overall, per block, per module, lower vs upper half of the blocks) and ``report.html``.

Example:
    >>> result = diff("runs/base", "runs/adapter", run=RunOptions("runs/diff"))  # doctest: +SKIP
    >>> result.summary["fraction_changed"]["1pct"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.measure.weight_diff import is_adapter_dir, summarize, weight_diff
from rotelab.options import RunOptions
from rotelab.pipelines.inputs import is_organism_dir
from rotelab.report import write_report
from rotelab.runs import Run
from rotelab.sources import named_model_dir

__all__ = ["DiffRun", "diff", "format_table"]


@dataclass
class DiffRun:
    """What :func:`diff` returns: the per-tensor table, the summary and the run directory."""

    tensors: pd.DataFrame
    summary: dict[str, Any]
    run_dir: Path


def _checkpoint(path: str | os.PathLike, role: str) -> Path:
    """A local checkpoint directory (``smollm2`` names its cached safetensors directory)."""
    if str(path) == "smollm2":
        return named_model_dir("smollm2")
    p = Path(path).expanduser()
    if not p.exists():
        raise RotelabError(f"{role} {p} does not exist")
    if not p.is_dir() or not (
        any(p.glob("*.safetensors")) or is_adapter_dir(p) or is_organism_dir(p)
    ):
        raise RotelabError(
            f"{role} {p} is not a model or LoRA adapter directory with safetensors weights"
        )
    return p


def diff(a: str | os.PathLike, b: str | os.PathLike, *, run: RunOptions = RunOptions()) -> DiffRun:
    """Compare checkpoint ``b`` (or a LoRA adapter) with ``a``; write a run directory.

    Args:
        a: the reference checkpoint directory (or ``smollm2``).
        b: a checkpoint of the same architecture, or a PEFT LoRA adapter trained on ``a``.
        run: the run directory (``out``, default ``runs/diff-<time>``; ``force``).
    """
    run.check()
    if run.resume:
        raise RotelabError("rotelab diff cannot resume a run; start it again (--force replaces)")
    pa, pb = _checkpoint(a, "A"), _checkpoint(b, "B")
    if is_adapter_dir(pa):
        raise RotelabError(
            f"A {a} is a LoRA adapter; give the base model as A and the adapter as B"
        )
    config = {"a": str(a), "b": str(b), "b_is_adapter": is_adapter_dir(pb)}
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=(str(pa), str(pb)))
    table = weight_diff(pa, pb)
    if table.empty:
        raise RotelabError(f"{a} and {b} share no floating-point tensor to compare")
    summary = {"a": str(a), "b": str(b), "b_is_adapter": config["b_is_adapter"], **summarize(table)}
    with Run.create(run.out, "diff", config, force=run.force, inputs=(str(pa), str(pb))) as out:
        out.write_table("tensors", table)
        out.write_summary(summary)
    write_report(out.path)
    return DiffRun(table, summary, out.path)


def format_table(summary: dict[str, Any]) -> str:
    """Fractions of weights changed, overall and per block (what ``rotelab diff`` prints)."""
    f = summary["fraction_changed"]
    lines = [
        f"{summary['b']} vs {summary['a']}: {summary['weights']:,} weights in "
        f"{summary['tensors']} tensors; changed by >1% {f['1pct']:.2%}, >10% {f['10pct']:.2%}, "
        f">100% {f['100pct']:.3%}",
        f"{'block':>5}  {'>1%':>8}  {'>10%':>8}  {'>100%':>8}  {'|dW|/|W|':>9}",
    ]
    for block, row in summary["by_block"].items():
        lines.append(
            f"{block:>5}  {row['1pct']:>8.2%}  {row['10pct']:>8.2%}  {row['100pct']:>8.3%}  "
            f"{row['rel_change']:>9.4f}"
        )
    return "\n".join(lines)

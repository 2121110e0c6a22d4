"""``rotelab gapt-study --task multiply|interference``: CE-only vs GAPT on the two synthetic
settings of Yu 2025 ("Memorization-Compression Cycles Improve Generalization"): OOD
multiplication and two tasks learned in sequence.

Both train a small character-level Llama (:func:`rotelab.tasks.arith.fresh_model`: 2 blocks,
hidden 64, 0.13M parameters) from the same initialisation per seed, twice: ``ce`` (CE only,
with MBE and cos(∇CE, ∇MBE) measured every ``align_every`` steps, as the organism study's CE arm)
and ``gapt`` (:class:`rotelab.train.gapt.GAPT`). Training rows are packed problems
(:func:`rotelab.tasks.arith.training_rows`), fp32 (bf16 autocast is slower at this size).

- ``multiply``: pretraining on ``a*b`` with operands of 1-2 digits (90% of the 10,000 pairs;
  the other 10% are the in-distribution test); the OOD test is ``n_eval`` products of two
  3-digit operands, longer than any operand (and product) seen. Measured: the mean CE of the
  answer tokens and the exact-answer rate (greedy), in distribution and OOD, and the held-out MBE.
  The paper's figure: OOD CE 35% lower under GAPT.
- ``interference``: task A (``a*b``) for the first ``steps_a`` steps, then task B (``a+b``) on
  the same operand pairs for the rest, in one run (one learning-rate schedule; GAPT's gate sees
  the switch as a CE spike). Measured: A's answer CE when the switch happens and at the end
  (forgetting: the rise, in nats), B's at the end, and the separation of the two tasks'
  representations (:func:`rotelab.tasks.arith.separation` of the blocks' states at ``=``, mean
  over blocks) at the end. The paper's figure: separation 97% higher under GAPT.

The run directory holds ``results/arms`` (one row per arm and seed), ``results/steps`` (phase
log), ``results/alignment``, ``results/transitions`` and, for ``interference``,
``results/separation`` (per block, at the switch and at the end); ``summary.json`` pairs the arms
per seed (mean with a t interval over seeds).

Example:
    >>> study = gapt_task_study("multiply", seeds=(0, 1, 2), run=RunOptions("runs/ood"))
    ... # doctest: +SKIP
    >>> study.summary["ood_ce_change"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import block_outputs
from rotelab.measure.entropy import PATCH, patch_entropy
from rotelab.options import RunOptions
from rotelab.pipelines.gapt import (
    ARMS,
    GaptStudy,
    _mean_ci,
    _terms,
    alignment_summary,
    arm_logs,
    cycle_line,
    fmt_ci,
)
from rotelab.runs import Run
from rotelab.tasks import arith
from rotelab.train import TrainConfig, train
from rotelab.train.gapt import GAPT, check_patch

__all__ = ["TASKS", "TaskSettings", "format_task_table", "gapt_task_study"]

#: The synthetic settings (``organism`` is :func:`rotelab.pipelines.gapt.gapt_study`).
TASKS = ("multiply", "interference")
#: The paper's figures for these settings (relative changes, GAPT vs CE-only).
PAPER_TASKS = {"ood_ce_change": -0.35, "separation_change": 0.97}


@dataclass(frozen=True)
class TaskSettings:
    """The fixed recipe of both settings (recorded in ``config.json``)."""

    digits: tuple[int, int] = (1, 2)
    ood_digits: int = 3
    heldout: float = 0.1
    n_eval: int = 500
    hidden: int = 64
    blocks: int = 2
    heads: int = 4
    length: int = 64
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 20
    steps: int = 800  # multiply; interference: steps_a + steps_b
    steps_a: int = 400
    steps_b: int = 200


def _steps(task: str, s: TaskSettings) -> int:
    return s.steps if task == "multiply" else s.steps_a + s.steps_b


def check_task_study(task: str, seeds: Sequence[int], opts: dict[str, Any], s: TaskSettings) -> int:
    """Every option before any work; returns the run's steps."""
    if task not in TASKS:
        raise RotelabError(f"--task {task!r} is not one of organism, {', '.join(TASKS)}")
    if not seeds:
        raise RotelabError("--seeds is empty; pass e.g. 0,1,2")
    if len(set(seeds)) != len(seeds) or any(x < 0 for x in seeds):
        raise RotelabError(f"--seeds must be distinct and >= 0, got {list(seeds)}")
    steps = _steps(task, s)
    GAPT(
        opts["weight"], p_m=opts["p_m"], p_a=opts["p_a"], ce_gain=opts["ce_gain"],
        ce_spike=opts["ce_spike"], mbe_gain=opts["mbe_gain"], smooth=opts["smooth"],
        steps=steps, patch=opts["patch"],
    )  # fmt: skip
    check_patch(opts["patch"], s.length, what="the task's training rows")
    if opts["align_every"] < 1 or opts["align_every"] >= steps:
        raise RotelabError(
            f"--align-every must be in 1 .. {steps - 1} steps, got {opts['align_every']}"
        )
    return steps


@torch.no_grad()
def heldout_mbe(model: torch.nn.Module, rows: torch.Tensor, patch: int) -> list[float]:
    """MBE per block (mean over patches) of the model's block outputs on ``rows`` (inputs are
    ``rows[:, :-1]``, as in training)."""
    with block_outputs(model) as captured:
        model(input_ids=rows[:, :-1])
    return [float(patch_entropy(h.float(), patch).mean()) for h in captured]


def _score(model, pairs, op: str) -> tuple[float, float]:
    ce, exact = arith.answer_scores(model, pairs, op)
    return float(ce.mean()), float(exact.mean())


def _separation(model, pairs) -> list[float]:
    a = arith.prompt_states(model, pairs, "*")
    b = arith.prompt_states(model, pairs, "+")
    return [arith.separation(a[k], b[k]) for k in range(len(a))]


def _train_arm(
    task: str, arm: str, seed: int, opts: dict[str, Any], s: TaskSettings, progress: bool
) -> tuple[dict[str, Any], Any, pd.DataFrame]:
    """Train one arm from the seed's initialisation and measure it; returns its row, its term
    and (interference) the separation per block at the switch and at the end."""
    steps = _steps(task, s)
    train_pairs, test_pairs = arith.operand_pairs(s.digits, heldout=s.heldout, seed=seed)
    test_pairs = test_pairs[: s.n_eval]
    model = arith.fresh_model(
        hidden=s.hidden, blocks=s.blocks, heads=s.heads, context=s.length, seed=seed
    )
    first = arith.training_rows(train_pairs, "*", length=s.length, batch=s.batch, seed=seed)
    if task == "multiply":
        rows = first
    else:
        second = arith.training_rows(
            train_pairs, "+", length=s.length, batch=s.batch, seed=seed + 1
        )
        rows = itertools.chain(itertools.islice(first, s.steps_a), second)
    term = _terms(arm, steps, opts)
    cfg = TrainConfig(
        steps=steps, lr=s.lr, warmup_steps=s.warmup, precision="fp32", log_every=50, seed=seed
    )
    at_switch: dict[str, Any] = {}

    def after(done: int) -> None:
        if task == "interference" and done == s.steps_a:
            at_switch["a"] = _score(model, test_pairs, "*")
            at_switch["sep"] = _separation(model, test_pairs)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{task} {arm} s{seed}", leave=False)
    t0 = time.perf_counter()
    train(
        model, rows, cfg, terms=[term],
        after_step=lambda d: (after(d), bar.update(1) if bar is not None else None),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    eval_op = "*" if task == "multiply" else "+"
    mbe_rows = next(arith.training_rows(test_pairs, eval_op, length=s.length, batch=64, seed=seed))
    mbe = heldout_mbe(model, mbe_rows, opts["patch"])
    row: dict[str, Any] = {"arm": arm, "seed": seed, "heldout_mbe": float(np.mean(mbe)),
                           "train_seconds": round(seconds, 1)}  # fmt: skip
    sep = pd.DataFrame()
    if task == "multiply":
        ood = arith.ood_pairs(s.ood_digits, s.n_eval, seed=10_000 + seed)
        row["id_ce"], row["id_acc"] = _score(model, test_pairs, "*")
        row["ood_ce"], row["ood_acc"] = _score(model, ood, "*")
    else:
        row["a_ce_switch"], row["a_acc_switch"] = at_switch["a"]
        row["a_ce_end"], row["a_acc_end"] = _score(model, test_pairs, "*")
        row["b_ce_end"], row["b_acc_end"] = _score(model, test_pairs, "+")
        row["forgetting_ce"] = row["a_ce_end"] - row["a_ce_switch"]
        row["forgetting_acc"] = row["a_acc_switch"] - row["a_acc_end"]
        end = _separation(model, test_pairs)
        row["separation_switch"] = float(np.mean(at_switch["sep"]))
        row["separation_end"] = float(np.mean(end))
        sep = pd.DataFrame({
            "block": list(range(len(end))) * 2,
            "when": ["switch"] * len(end) + ["end"] * len(end),
            "separation": [*at_switch["sep"], *end],
        })  # fmt: skip
    return row, term, sep


#: Per task: the arms' columns summarised, and the paired changes (name, column, kind).
_COLUMNS = {
    "multiply": ("id_ce", "id_acc", "ood_ce", "ood_acc", "heldout_mbe"),
    "interference": (
        "a_ce_switch", "a_ce_end", "a_acc_switch", "a_acc_end", "b_ce_end", "b_acc_end",
        "forgetting_ce", "forgetting_acc", "separation_switch", "separation_end", "heldout_mbe",
    ),
}  # fmt: skip
_PAIRED = {
    "multiply": (
        ("ood_ce_change", "ood_ce", "ratio"), ("id_ce_change", "id_ce", "ratio"),
        ("ood_acc_change", "ood_acc", "diff"), ("id_acc_change", "id_acc", "diff"),
        ("mbe_ratio", "heldout_mbe", "ratio1"),
    ),
    "interference": (
        ("separation_change", "separation_end", "ratio"),
        ("separation_geo_ratio", "separation_end", "log"),
        ("forgetting_ce_change", "forgetting_ce", "diff"),
        ("forgetting_acc_change", "forgetting_acc", "diff"),
        ("a_ce_end_change", "a_ce_end", "ratio"), ("b_ce_end_change", "b_ce_end", "ratio"),
        ("mbe_ratio", "heldout_mbe", "ratio1"),
    ),
}  # fmt: skip


def summarize_task(task: str, arms: pd.DataFrame, align: pd.DataFrame) -> dict[str, Any]:
    """Per-arm means and the per-seed paired changes GAPT vs CE-only, with t intervals:
    ``ratio``: gapt/ce − 1, ``ratio1``: gapt/ce, ``diff``: gapt − ce, ``log``: the geometric
    mean of gapt/ce (the t interval of log(gapt/ce), exponentiated: a ratio that can swing by
    orders of magnitude from seed to seed, as a Fisher ratio whose within-task spread collapses
    does, is averaged on the log scale)."""
    out: dict[str, Any] = {
        "seeds_done": {a: sorted(arms[arms.arm == a].seed.tolist()) for a in ARMS},
        "arms": {
            a: {
                k: _mean_ci(arms[arms.arm == a][k])
                for k in (*_COLUMNS[task], "compress_fraction", "transitions", "train_seconds")
            }  # fmt: skip
            for a in ARMS
        },
    }
    wide = arms.pivot(index="seed", columns="arm").dropna()
    for name, col, kind in _PAIRED[task]:
        if not len(wide):
            break
        g, c = wide[(col, "gapt")], wide[(col, "ce")]
        if kind == "log":
            cell = _mean_ci(np.log(g / c).tolist())
            out[name] = {
                "mean": math.exp(cell["mean"]), "n": cell["n"],
                "ci": [math.exp(x) for x in cell["ci"]] if cell["ci"] else None,
                "per_seed": (g / c).round(4).tolist(),
            }  # fmt: skip
            continue
        v = g / c - 1 if kind == "ratio" else g / c if kind == "ratio1" else g - c
        out[name] = {**_mean_ci(v.tolist()), "per_seed": v.round(4).tolist()}
    out["alignment_ce"] = alignment_summary(arms, align)
    out["paper"] = PAPER_TASKS
    return out


def gapt_task_study(
    task: str,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    weight: float = 0.1,
    p_m: int = 20,
    p_a: int = 20,
    ce_gain: float = 0.01,
    ce_spike: float = 0.10,
    mbe_gain: float = 0.01,
    smooth: float = 0.9,
    patch: int = PATCH,
    align_every: int = 10,
    settings: TaskSettings = TaskSettings(),
    run: RunOptions = RunOptions(),
) -> GaptStudy:
    """Train CE-only and GAPT arms of ``task`` per seed, measure them, write the run.

    Args:
        task: ``multiply`` (OOD multiplication) or ``interference`` (two tasks in sequence).
        seeds: each its own operand split, data order and initialisation (shared by both arms).
        weight, p_m, p_a, ce_gain, ce_spike, mbe_gain, smooth, patch, align_every: as
            :func:`rotelab.pipelines.gapt.gapt_study`.
        settings: the model, data and schedule (:class:`TaskSettings`).
        run: the run directory (``resume`` continues after the last whole arm).
    """
    run.check()
    seeds = [int(x) for x in seeds]
    opts = {
        "weight": weight, "p_m": p_m, "p_a": p_a, "ce_gain": ce_gain, "ce_spike": ce_spike,
        "mbe_gain": mbe_gain, "smooth": smooth, "patch": patch, "align_every": align_every,
    }  # fmt: skip
    steps = check_task_study(task, seeds, opts, settings)
    config = {"task": task, "seeds": seeds, **opts, "settings": asdict(settings)}
    if run.out is not None:
        Run.check(run.out, resume=run.resume, force=run.force)
    t0 = time.perf_counter()
    torch_threads = torch.get_num_threads()
    with Run.create(run.out, "gapt-study", config, resume=run.resume, force=run.force) as out:
        for seed in seeds:
            for arm in ARMS:
                key = f"{arm}-s{seed}"
                if out.has_part("arms", key):
                    continue
                row, term, sep = _train_arm(task, arm, seed, opts, settings, run.progress)
                tag = {"arm": arm, "seed": seed}
                steps_log, align, trans, stats = arm_logs(term, tag)
                row.update(stats)
                out.write_part("steps", key, steps_log)
                out.write_part("alignment", key, align)
                out.write_part("transitions", key, trans)
                if len(sep):
                    out.write_part("separation", key, sep.assign(**tag))
                out.write_part("arms", key, pd.DataFrame([row]))  # last: marks the arm done
        summary = {
            "task": task, "seeds": seeds, "steps": steps, **opts, "precision": "fp32",
            "settings": asdict(settings), "threads": torch_threads,
            **summarize_task(task, out.read_table("arms"), out.read_table("alignment")),
            "seconds": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        out.write_summary(summary)
        from rotelab.pipelines.gapt import _plots

        _plots(out.path)
    from rotelab.report import write_report

    write_report(out.path)
    return GaptStudy(summary, out.path)


def format_task_table(summary: dict[str, Any]) -> str:
    """The headline numbers beside the paper's (what ``rotelab gapt-study --task`` prints)."""
    ci = fmt_ci
    arms = summary["arms"]
    lines = [
        f"GAPT study, task {summary['task']}, seeds {summary['seeds']} "
        f"(λ={summary['weight']}, p_m={summary['p_m']}, p_a={summary['p_a']}, "
        f"{summary['steps']} steps)",
        f"  MBE ratio gapt/ce {ci(summary.get('mbe_ratio'))}",
    ]
    if summary["task"] == "multiply":
        for k, what in (("id", "in distribution"), ("ood", "OOD (3-digit operands)")):
            lines.append(
                f"  {what}: answer CE ce {ci(arms['ce'][f'{k}_ce'])} gapt "
                f"{ci(arms['gapt'][f'{k}_ce'])}; exact ce {ci(arms['ce'][f'{k}_acc'])} gapt "
                f"{ci(arms['gapt'][f'{k}_acc'])}"
            )
        lines.append(
            f"  OOD CE change {ci(summary.get('ood_ce_change'), pct=True)} (paper -35%); "
            f"in-distribution {ci(summary.get('id_ce_change'), pct=True)}"
        )
    else:
        lines += [
            f"  task A (a*b) CE at the switch ce {ci(arms['ce']['a_ce_switch'])} gapt "
            f"{ci(arms['gapt']['a_ce_switch'])}; at the end ce {ci(arms['ce']['a_ce_end'])} "
            f"gapt {ci(arms['gapt']['a_ce_end'])}",
            f"  forgetting (A's CE rise, nats) ce {ci(arms['ce']['forgetting_ce'])} gapt "
            f"{ci(arms['gapt']['forgetting_ce'])}; "
            f"change {ci(summary.get('forgetting_ce_change'))}",
            f"  task B (a+b) CE at the end ce {ci(arms['ce']['b_ce_end'])} gapt "
            f"{ci(arms['gapt']['b_ce_end'])}",
            f"  separation A/B at the end ce {ci(arms['ce']['separation_end'])} gapt "
            f"{ci(arms['gapt']['separation_end'])}; change "
            f"{ci(summary.get('separation_change'), pct=True)} (paper +97%); geometric-mean "
            f"ratio gapt/ce {ci(summary.get('separation_geo_ratio'))}",
        ]
    al = summary["alignment_ce"]
    lines.append(
        f"  alignment sign changes in CE-only, per seed {al['sign_changes_per_seed']} "
        f"(independent signs {al['expected_if_independent']})"
    )
    lines.append(cycle_line(al))
    return "\n".join(lines)

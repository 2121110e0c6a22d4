"""``rotelab barrier``: the memorization barrier and IB-FT on the program task (Wang et al. 2025,
"Breaking Memorization Barriers in LLM Code Fine-Tuning via Information Bottleneck").

Per seed and per insertion count (``copies``, e.g. 0 and 64) a fresh small model is pretrained
on the program task's pretraining problems, the memorized base also on the first
``n_finetune`` fine-tuning problems paired with a spurious (wrong) solution inserted ``copies``
times (:func:`rotelab.tasks.barrier.pretrain_docs`); each base is measured (Min-K% of the
fine-tuning data, Pass@k(m) on held-out evaluation problems and on the fine-tuning problems),
then fine-tuned twice on the fine-tuning problems' correct programs, with plain SFT and with
IB-FT (:func:`rotelab.train.finetune.finetune`, alpha = 0.2, beta = 0.01), and measured again.
Each base and each fine-tuned arm is one unit of work, written when done; ``--resume``
continues after the last whole unit and ``budget_s`` stops after the unit that crosses it, so
the experiment runs in short slices.

The run directory::

    config.json  summary.json  report.html  plots/*.png
    models/base-c<copies>-s<seed>/   each base (a Hugging Face model directory)
    results/units    one row per base and arm: Min-K%, Pass@k(m) per split, seconds
    results/passk    one row per (unit, split, k, m): estimate and bootstrap CI over problems
    results/curves   the training curves (pretraining and fine-tuning; KL and CE_ib for IB-FT)
    results/mink     Min-K% of each fine-tuning text under each base (correct and spurious)

Example:
    >>> study = barrier(seeds=(0, 1, 2), run=RunOptions("runs/barrier"))  # doctest: +SKIP
    >>> study.summary["claims"]["barrier"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM, Sampler, progress_bar
from rotelab.measure.passk import check_km, pass_at_k_table
from rotelab.options import RunOptions
from rotelab.runs import Run
from rotelab.tasks.barrier import ModelShape, fresh_model, min_k_scores, pretrain_docs
from rotelab.tasks.programs import Problem, TaskSpec, generate_task, sample_pass_counts
from rotelab.train.finetune import FinetuneConfig, finetune, pack_rows
from rotelab.train.ib import IBConfig
from rotelab.train.trainer import TrainConfig, train

__all__ = ["ARMS", "PAPER", "BarrierConfig", "BarrierStudy", "barrier", "format_table", "summarize"]

#: The fine-tuning arms, in run order.
ARMS = ("sft", "ibft")
#: The paper's claims, as the signs the organism's numbers are read against.
PAPER = {
    "barrier": "the Pass@1 gain of SFT from the memorized base is smaller than from the clean base",
    "ibft_over_sft": "from the memorized base, IB-FT's Pass@1 after fine-tuning exceeds SFT's",
    "passkm_gain": "IB-FT's gain over SFT under Pass@k(m) is at least its gain under Pass@1",
}
#: Splits measured on every model: held-out problems and the fine-tuning problems themselves.
SPLITS = ("eval", "finetune")


@dataclass(frozen=True)
class BarrierConfig:
    """The experiment's sizes (defaults: about 4 minutes a seed on one CPU core).

    ``copies``: insertion counts of the spurious solutions, one base each (the first is the
    reference the others are compared with); ``n_finetune``: fine-tuning problems (inserted in
    the memorized base, then fine-tuned on); ``n_eval``: held-out problems measured;
    ``samples``: programs sampled per problem (temperature 0.8); ``ks``/``ms``: the Pass@k(m)
    grid (pairs with m <= k). Pretraining: ``pretrain_steps`` of ``batch_size`` rows of
    ``shape.context`` tokens at ``lr``; fine-tuning: ``finetune_steps`` of ``ft_batch_size``
    rows at ``ft_lr``; IB-FT with ``alpha``/``beta``."""

    copies: tuple[int, ...] = (0, 64)
    n_finetune: int = 100
    n_eval: int = 200
    samples: int = 10
    ks: tuple[int, ...] = (1, 5, 10)
    ms: tuple[int, ...] = (1, 3, 5)
    pretrain_steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    finetune_steps: int = 60
    ft_batch_size: int = 16
    ft_lr: float = 1e-3
    alpha: float = 0.2
    beta: float = 0.01
    shape: ModelShape = ModelShape()

    def check(self) -> BarrierConfig:
        if not self.copies or len(set(self.copies)) != len(self.copies):
            raise RotelabError(f"--copies must be distinct counts, e.g. 0,64; got {self.copies}")
        if any(c < 0 for c in self.copies):
            raise RotelabError(f"--copies must be >= 0, got {list(self.copies)}")
        if self.n_finetune < 1 or self.n_eval < 1:
            raise RotelabError("--n-finetune and --n-eval must be >= 1")
        if self.samples < 1:
            raise RotelabError(f"--samples must be >= 1, got {self.samples}")
        if min(self.pretrain_steps, self.finetune_steps, self.batch_size, self.ft_batch_size) < 1:
            raise RotelabError("steps and batch sizes must be >= 1")
        if not (self.lr > 0 and self.ft_lr > 0):
            raise RotelabError("learning rates must be > 0")
        check_km(self.ks, self.ms)
        if max(self.ks) > self.samples:
            raise RotelabError(f"k = {max(self.ks)} needs --samples >= {max(self.ks)}")
        IBConfig(self.alpha, self.beta).check()
        self.shape.check()
        return self


@dataclass
class BarrierStudy:
    """What :func:`barrier` returns."""

    summary: dict[str, Any]
    run_dir: Path
    complete: bool


def _mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean over seeds with a t interval (no interval from fewer than two values)."""
    from scipy import stats as st

    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return {"mean": None, "ci": None, "n": 0, "per_seed": []}
    mean = float(v.mean())
    ci = None
    if len(v) > 1:
        half = float(st.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
        ci = [mean - half, mean + half]
    return {"mean": mean, "ci": ci, "n": int(len(v)), "per_seed": [round(float(x), 4) for x in v]}


def _key(k: int, m: int) -> str:
    return f"pass@{k}({m})"


def _measure(
    lm: LM, problems: dict[str, list[Problem]], cfg: BarrierConfig, seed: int
) -> tuple[dict[str, float], pd.DataFrame]:
    """Pass@k(m) of ``lm`` on each split: a flat row (``eval/pass@5(3)``...) and the table."""
    row: dict[str, float] = {}
    tables = []
    for split, probs in problems.items():
        counts, _ = sample_pass_counts(
            lm, probs, cfg.samples, sampler=Sampler(temperature=0.8), seed=seed
        )
        table, _ = pass_at_k_table(counts, cfg.ks, cfg.ms, seed=seed)
        tables.append(table.assign(split=split))
        for r in table.itertuples():
            row[f"{split}/{_key(r.k, r.m)}"] = float(r.pass_at_k)
    return row, pd.concat(tables, ignore_index=True)


def _curve(log: list[dict], **tag: Any) -> pd.DataFrame:
    cols = ["step", "loss", "lr", "kl", "ce_ib", "objective"]
    frame = pd.DataFrame(log)
    for c in cols:
        if c not in frame:
            frame[c] = np.nan
    return frame[cols].astype({"step": "int64"}).assign(**tag)


def barrier(
    seeds: Sequence[int] = (0, 1, 2),
    config: BarrierConfig = BarrierConfig(),
    *,
    task_seed: int = 0,
    tokenizer: str | os.PathLike | None = None,
    budget_s: float | None = None,
    run: RunOptions = RunOptions(),
) -> BarrierStudy:
    """Run (or continue) the barrier experiment and write its run directory.

    Args:
        seeds: model seeds (each: its own pretraining order, initialisation, spurious
            solutions and sampling); the task is the same for all (``task_seed``).
        config: the sizes (:class:`BarrierConfig`).
        task_seed: the program task's seed (:class:`rotelab.tasks.programs.TaskSpec`).
        tokenizer: a Hugging Face tokenizer directory; default the tiny organism's.
        budget_s: stop after the unit of work that passes this many seconds (the run is
            whole; ``--resume`` continues it). Not part of the run's arguments.
        run: the run directory (``resume`` continues after the last whole unit).
    """
    run.check()
    cfg = config.check()
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise RotelabError(f"--seeds must be distinct and >= 0, e.g. 0,1,2; got {seeds}")
    if budget_s is not None and not budget_s > 0:
        raise RotelabError(f"--budget must be > 0 seconds, got {budget_s}")
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise RotelabError(f"--tokenizer {tokenizer} is not a directory")
    spec = TaskSpec(seed=task_seed, n_finetune=cfg.n_finetune, n_eval=cfg.n_eval).check()
    args = {"seeds": seeds, "task_seed": task_seed, "tokenizer": tokenizer,
            **{k: v for k, v in cfg.__dict__.items() if k != "shape"},
            "shape": cfg.shape.__dict__}  # fmt: skip
    if run.out is not None:
        Run.check(run.out, resume=run.resume, force=run.force, inputs=[tokenizer])

    from transformers import AutoTokenizer

    if tokenizer is None:
        from rotelab.organism import default_organism

        tokenizer = default_organism("tiny").path
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    task = generate_task(spec)
    ft = task.split("finetune")
    problems = {"eval": task.split("eval"), "finetune": ft}
    seq = cfg.shape.context
    longest = max(len(tok.encode(p.text())) + 24 for p in task.problems)  # 24: sampled tokens
    if longest > seq:
        raise RotelabError(
            f"the model's context of {seq} tokens is shorter than the task's longest problem "
            f"and sample ({longest}); use a longer context"
        )
    t0 = time.perf_counter()
    complete, done = True, 0
    with Run.create(run.out, "barrier", args, resume=run.resume, force=run.force) as out:
        units = [(s, c, arm) for s in seeds for c in cfg.copies for arm in ("base", *ARMS)]
        with progress_bar(run.progress, len(units), "bases and arms") as advance:
            for seed, copies, arm in units:
                advance()
                key = f"{arm}-c{copies:03d}-s{seed}"
                if out.has_part("units", key):
                    continue
                if done and budget_s is not None and time.perf_counter() - t0 > budget_s:
                    complete = False  # this slice has used its time: the rest on --resume
                    break
                u0 = time.perf_counter()
                tag = {"unit": arm, "copies": copies, "seed": seed}
                base_dir = out.path / "models" / f"base-c{copies:03d}-s{seed}"
                row: dict[str, Any] = dict(tag)
                if arm == "base":
                    docs, counts = pretrain_docs(
                        task, tok.encode, copies=copies, finetune=ft, seed=seed,
                        tokens=cfg.pretrain_steps * cfg.batch_size * (seq + 1),
                    )  # fmt: skip
                    rows = pack_rows(docs, tok.eos_token_id, seq)
                    model = fresh_model(tok, cfg.shape, seed)
                    log = train(
                        model, (_torch_rows(rows, i, cfg.batch_size) for i in range(len(rows))),
                        TrainConfig(steps=cfg.pretrain_steps, lr=cfg.lr, seed=seed, log_every=10,
                                    warmup_steps=min(30, max(1, cfg.pretrain_steps // 10))),
                    )  # fmt: skip
                    model.save_pretrained(base_dir, safe_serialization=True)
                    tok.save_pretrained(base_dir)
                    lm = LM.from_model(model.eval(), tok, name=f"base-c{copies}-s{seed}")
                    correct = min_k_scores(lm, [p.text() for p in ft])
                    spurious = min_k_scores(lm, [p.text(p.wrong_solution(seed)) for p in ft])
                    out.write_part("mink", key, pd.DataFrame({
                        "problem": [p.id for p in ft], "min_k_correct": correct,
                        "min_k_spurious": spurious,
                    }).assign(**tag))  # fmt: skip
                    row.update(counts, min_k_correct=float(correct.mean()),
                               min_k_spurious=float(spurious.mean()))  # fmt: skip
                else:
                    if not base_dir.is_dir():
                        raise RotelabError(f"{base_dir} is missing; rerun with --force")
                    lm = LM.load(base_dir, device="cpu", dtype="float32")
                    model = lm.model
                    ft_rows = pack_rows([tok.encode(p.text()) for p in ft], tok.eos_token_id, seq)
                    ib = IBConfig(cfg.alpha, cfg.beta) if arm == "ibft" else None
                    log = finetune(model, ft_rows, FinetuneConfig(
                        steps=cfg.finetune_steps, batch_size=cfg.ft_batch_size, lr=cfg.ft_lr,
                        seed=seed), ib=ib)  # fmt: skip
                    lm = LM.from_model(model.eval(), tok, name=f"{arm}-c{copies}-s{seed}")
                measured, table = _measure(lm, problems, cfg, seed)
                row.update(measured, train_loss_last=float(log[-1]["loss"]))
                row["seconds"] = round(time.perf_counter() - u0, 1)
                out.write_part("curves", key, _curve(log, **tag))
                out.write_part("passk", key, table.assign(**tag))
                out.write_part("units", key, pd.DataFrame([row]))  # last: marks the unit done
                done += 1
        units_df = out.read_table("units")
        summary = {
            "seeds": seeds, "copies": list(cfg.copies), "task_seed": task_seed,
            "n_finetune": cfg.n_finetune, "n_eval": cfg.n_eval, "samples": cfg.samples,
            "pretrain_steps": cfg.pretrain_steps, "finetune_steps": cfg.finetune_steps,
            "alpha": cfg.alpha, "beta": cfg.beta, "complete": complete,
            **summarize(units_df, cfg),
            "seconds_this_slice": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        out.write_summary(summary)
        _plots(out.path)
    from rotelab.report import write_report

    write_report(out.path)
    return BarrierStudy(summary, out.path, complete)


def _torch_rows(rows: list[list[int]], i: int, size: int):
    """Batch ``i`` of the pretraining stream: ``size`` consecutive rows (wrapping), in order, so
    the stream is read once front to back as :func:`pretrain_docs` laid it out."""
    import torch

    n = len(rows)
    return torch.tensor([rows[(i * size + j) % n] for j in range(size)])


def summarize(units: pd.DataFrame, cfg: BarrierConfig) -> dict[str, Any]:
    """The experiment's numbers from its unit rows: per (copies, unit) means over seeds with t
    intervals; fine-tuning gains (arm minus its own base, paired by seed); the claims."""
    if not len(units):
        return {"cells": {}, "gains": {}, "claims": {}, "paper": PAPER}
    pairs = [_key(k, m) for k in sorted(set(cfg.ks)) for m in sorted(set(cfg.ms)) if m <= k]
    metrics = [f"{s}/{p}" for s in SPLITS for p in pairs if f"{s}/{p}" in units]
    cells: dict[str, Any] = {}
    for (copies, unit), g in units.groupby(["copies", "unit"]):
        cell = {m: _mean_ci(g[m].tolist()) for m in metrics if m in g}
        for extra in ("min_k_correct", "min_k_spurious", "train_loss_last", "seconds"):
            if extra in g and g[extra].notna().any():
                cell[extra] = _mean_ci(g[extra].tolist())
        cells[f"{unit}-c{int(copies)}"] = cell
    wide = units.set_index(["seed", "copies", "unit"])
    gains: dict[str, Any] = {}
    for copies in cfg.copies:
        for arm in ARMS:
            try:
                d = wide.xs((copies, arm), level=("copies", "unit"))[metrics] - wide.xs(
                    (copies, "base"), level=("copies", "unit"))[metrics]  # fmt: skip
            except KeyError:
                continue
            d = d.dropna()
            gains[f"{arm}-c{copies}"] = {m: _mean_ci(d[m].tolist()) for m in metrics}
    lo, hi = cfg.copies[0], cfg.copies[-1]
    claims: dict[str, Any] = {}

    p1, pkm = "eval/" + _key(1, 1), None
    km = [(k, m) for k in sorted(set(cfg.ks)) for m in sorted(set(cfg.ms)) if 1 < m <= k]
    if km:
        pkm = "eval/" + _key(*((5, 3) if (5, 3) in km else km[0]))

    def per_seed(copies: int, unit: str, metric: str) -> pd.Series:
        try:
            return wide.xs((copies, unit), level=("copies", "unit"))[metric]
        except KeyError:
            return pd.Series(dtype=float)

    def gain(copies: int, arm: str, metric: str) -> pd.Series:
        return per_seed(copies, arm, metric) - per_seed(copies, "base", metric)

    if lo != hi:
        # the paper's barrier is about held-out problems; the same comparison on the fine-tuning
        # problems themselves shows what the memorized base does with the data it memorized
        for metric, name in ((p1, "barrier"), ("finetune/" + _key(1, 1), "barrier_ft_problems")):
            d = (gain(lo, "sft", metric) - gain(hi, "sft", metric)).dropna()
            claims[name] = {
                "claim": PAPER["barrier"],
                "metric": metric,
                "gain_clean_minus_gain_memorized": _mean_ci(d.tolist()),
                "verdict": _verdict(d),
            }
        mk = {c: _mean_ci(per_seed(c, "base", "min_k_correct").tolist()) for c in (lo, hi)}
        claims["min_k"] = {f"c{c}": v for c, v in mk.items()}
    for metric, name in ((p1, "ibft_over_sft"), (pkm, "ibft_over_sft_passkm")):
        if metric is None:
            continue
        d = (per_seed(hi, "ibft", metric) - per_seed(hi, "sft", metric)).dropna()
        under = "" if metric == p1 else " (here under Pass@k(m))"
        claims[name] = {"claim": PAPER["ibft_over_sft"] + under, "metric": metric,
                        "ibft_minus_sft": _mean_ci(d.tolist()), "verdict": _verdict(d)}  # fmt: skip
    if pkm is not None:
        d1 = (per_seed(hi, "ibft", p1) - per_seed(hi, "sft", p1)).dropna()
        dk = (per_seed(hi, "ibft", pkm) - per_seed(hi, "sft", pkm)).dropna()
        diff = (dk - d1).dropna()
        claims["passkm_gain"] = {
            "claim": PAPER["passkm_gain"], "metric": f"({pkm} - {p1}) of IB-FT minus SFT",
            "gain_passkm_minus_gain_pass1": _mean_ci(diff.tolist()),
            "verdict": _verdict(diff),
        }  # fmt: skip
    return {"cells": cells, "gains": gains, "claims": claims, "paper": PAPER,
            "headline_metrics": {"pass1": p1, "passkm": pkm}}  # fmt: skip


def _verdict(d: pd.Series) -> str | None:
    """How a per-seed difference (positive = the paper's direction) reads: ``agrees`` or
    ``disagrees`` when its t interval over seeds excludes 0, else ``inconclusive`` with the sign
    of the mean; ``None`` without data."""
    if not len(d):
        return None
    cell = _mean_ci(d.tolist())
    mean = cell["mean"]
    sign = "+" if mean > 0 else "-" if mean < 0 else "0"
    if cell["ci"] is not None:
        lo, hi = cell["ci"]
        if lo > 0 or (lo == hi and mean > 0):
            return "agrees"
        if hi < 0 or (lo == hi and mean < 0):
            return "disagrees"
    return f"inconclusive (mean {sign})"


def _plots(run_dir: Path) -> None:
    """The report's figures, also as PNG files under ``plots/``."""
    from rotelab.report.barrier import figures
    from rotelab.report.plots import save_figures

    save_figures(run_dir, figures(run_dir))


def format_table(summary: dict[str, Any]) -> str:
    """The headline numbers beside the paper's claims (what ``rotelab barrier`` prints)."""

    def ci(d: dict | None) -> str:
        if not d or d.get("mean") is None:
            return "n/a"
        s = f"{d['mean']:+.3f}"
        return s + (f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d.get("ci") else "")

    def val(d: dict | None) -> str:
        if not d or d.get("mean") is None:
            return "n/a"
        s = f"{d['mean']:.3f}"
        return s + (f" [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]" if d.get("ci") else "")

    hm = summary.get("headline_metrics", {})
    shown = [m for m in (hm.get("pass1"), hm.get("passkm")) if m]
    lines = [f"memorization barrier, seeds {summary['seeds']}, copies {summary['copies']}"
             + ("" if summary["complete"] else "  (INCOMPLETE: --resume to continue)")]  # fmt: skip
    for name, cell in summary.get("cells", {}).items():
        parts = "   ".join(f"{m} {val(cell.get(m))}" for m in shown)
        mk = f"   Min-K% {val(cell['min_k_correct'])}" if "min_k_correct" in cell else ""
        lines.append(f"  {name:<10} {parts}{mk}")
    for name, g in summary.get("gains", {}).items():
        lines.append(f"  gain {name:<10} " + "   ".join(f"{m} {ci(g.get(m))}" for m in shown))
    for name, c in summary.get("claims", {}).items():
        if "verdict" not in c:
            continue
        value = next(v for k, v in c.items() if isinstance(v, dict) and "mean" in v)
        lines.append(f"  {name}: {c['metric']} {ci(value)} -> {c['verdict']} ({c['claim']})")
    return "\n".join(lines)

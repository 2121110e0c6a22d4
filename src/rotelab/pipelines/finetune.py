"""``rotelab finetune``: supervised fine-tuning, or IB-FT with ``--ib`` (Wang et al. 2025,
"Breaking Memorization Barriers in LLM Code Fine-Tuning via Information Bottleneck").

The model (an organism, the default organism, or any local Hugging Face causal LM) is
fine-tuned on one of:

- ``programs``: the program task's fine-tuning split (:mod:`rotelab.tasks.programs`, task seed
  0), each problem's prompt and correct program;
- a JSONL file of ``{"prompt": ..., "completion": ...}`` lines (other fields ignored), each
  example trained on as ``prompt + completion``.

Plain SFT is cross-entropy on the packed text; ``--ib`` adds IB-FT's ``alpha * (KL + beta *
CE_ib)`` from a variational adapter on the middle block's output (:mod:`rotelab.train.ib`;
alpha = 0.2, beta = 0.01 by default). ``--lora R`` trains LoRA adapters of rank R (peft) and
merges them into the saved model. With ``programs`` and ``eval_samples > 0`` the evaluation
problems' Pass@k(m) is measured before and after. Every input is checked before the model is
loaded or the run directory exists.

The run directory::

    config.json  summary.json  report.html
    model/           the fine-tuned model (a Hugging Face directory, the adapter dropped)
    results/curve    the training curve: CE per logged step (and KL, CE_ib for IB-FT)
    results/passk    with evaluation: Pass@k(m) before and after, bootstrap CIs

Example:
    >>> r = finetune("/path/to/org", "programs", FinetuneOptions(ib=True))  # doctest: +SKIP
    >>> r.summary["loss_last"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM, Sampler, progress_bar
from rotelab.measure.passk import pass_at_k_table
from rotelab.options import LoadOptions, RunOptions
from rotelab.pipelines.inputs import resolve_model
from rotelab.runs import Run
from rotelab.tasks.programs import TaskSpec, generate_task, sample_pass_counts
from rotelab.train.finetune import FinetuneConfig, merge_lora, pack_rows, with_lora
from rotelab.train.finetune import finetune as run_finetune
from rotelab.train.ib import IBConfig

__all__ = ["PROGRAMS", "FinetuneOptions", "FinetuneRun", "finetune", "format_table",
           "read_examples"]  # fmt: skip

#: ``--data`` naming the program task's fine-tuning split.
PROGRAMS = "programs"
#: Longest packed row (shorter where the model's context is).
MAX_ROW = 256


@dataclass(frozen=True)
class FinetuneOptions:
    """``rotelab finetune``'s settings: IB-FT on or off and its alpha/beta, LoRA rank (``None``:
    full fine-tuning), steps, batch size, learning rate, samples per evaluation problem."""

    ib: bool = False
    alpha: float = 0.2
    beta: float = 0.01
    lora: int | None = None
    steps: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    eval_samples: int = 0

    def check(self) -> FinetuneOptions:
        # alpha and beta are refused when negative also without --ib: a typo should not pass
        IBConfig(self.alpha, self.beta).check()
        FinetuneConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr).check()
        if self.lora is not None and self.lora < 1:
            raise RotelabError(f"--lora rank must be >= 1, got {self.lora}")
        if self.eval_samples < 0:
            raise RotelabError(f"--eval-samples must be >= 0, got {self.eval_samples}")
        return self


@dataclass
class FinetuneRun:
    """What :func:`finetune` returns: the summary, the training curve and the run directory."""

    summary: dict[str, Any]
    curve: pd.DataFrame
    run_dir: Path


def read_examples(path: str | os.PathLike) -> list[str]:
    """The training texts (``prompt + completion``) of a JSONL file, every line checked."""
    p = Path(path)
    if not p.is_file():
        raise RotelabError(f"--data {path} is neither 'programs' nor a JSONL file")
    texts = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RotelabError(f"{p}:{i} is not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise RotelabError(f"{p}:{i} is not a JSON object")
            missing = [k for k in ("prompt", "completion") if not isinstance(obj.get(k), str)]
            if missing:
                raise RotelabError(f"{p}:{i} has no string field {' or '.join(missing)}")
            if not obj["completion"]:
                raise RotelabError(f"{p}:{i} has an empty completion")
            texts.append(obj["prompt"] + obj["completion"])
    if not texts:
        raise RotelabError(f"{p} holds no examples")
    return texts


def _evaluate(lm: LM, problems, n: int, seed: int, stage: str) -> pd.DataFrame:
    counts, _ = sample_pass_counts(lm, problems, n, sampler=Sampler(temperature=0.8), seed=seed)
    ks = [k for k in (1, 5, 10) if k <= n]
    table, _ = pass_at_k_table(counts, ks, [1, 3], seed=seed)
    return table.assign(stage=stage)


def finetune(
    model: str | os.PathLike | LM | None = None,
    data: str | os.PathLike = PROGRAMS,
    options: FinetuneOptions = FinetuneOptions(),
    *,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> FinetuneRun:
    """Fine-tune ``model`` on ``data`` with SFT or IB-FT and write a run directory.

    Args:
        model: an :class:`LM`, a model directory (an organism's included), or ``None`` for the
            default organism.
        data: ``"programs"`` or a JSONL file of prompt/completion lines.
        options: :class:`FinetuneOptions`.
        run: the run directory (``seed``: data order, adapter noise, sampling).
        load: how the model is loaded (``dtype`` auto trains in float32).
    """
    # 1. every input, before the model is loaded
    run.check()
    load.check()
    opts = options.check()
    if run.resume:
        raise RotelabError("rotelab finetune cannot resume a run; start it again (--force)")
    programs = str(data) == PROGRAMS
    texts = None if programs else read_examples(data)
    if opts.eval_samples and not programs:
        raise RotelabError("--eval-samples needs --data programs (the task's hidden tests)")
    given = resolve_model(model)
    config = {"model": model.name if isinstance(model, LM) else model, "data": str(data),
              **asdict(opts), "seed": run.seed}  # fmt: skip
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=[config["model"], data])

    # 2. the model (float32 weights: bf16 autocast where native, never bf16 master weights)
    dtype = "float32" if load.dtype == "auto" else load.dtype
    lm = given.load(LoadOptions(load.device, dtype, load.allow_pickle))
    task = generate_task(TaskSpec(seed=0)) if programs else None
    if task is not None:
        texts = [p.text() for p in task.split("finetune")]
    assert texts is not None
    seq = min(lm.context_length, MAX_ROW) - 1
    rows = pack_rows([lm.encode(t) for t in texts], lm.tokenizer.eos_token_id, seq)
    t0 = time.perf_counter()
    with Run.create(run.out, "finetune", config, force=run.force) as out:
        tables = []
        if task is not None and opts.eval_samples:
            tables.append(_evaluate(lm, task.split("eval"), opts.eval_samples, run.seed, "before"))
        net = with_lora(lm.model, opts.lora) if opts.lora else lm.model
        ib = IBConfig(opts.alpha, opts.beta) if opts.ib else None
        cfg = FinetuneConfig(steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr,
                             seed=run.seed)  # fmt: skip
        with progress_bar(run.progress, cfg.steps, "fine-tuning") as advance:
            seen = [0]  # steps shown so far: records are logged every few steps

            def shown(record: dict) -> None:
                advance(record["step"] + 1 - seen[0])
                seen[0] = record["step"] + 1

            log = run_finetune(net, rows, cfg, ib=ib, callback=shown)
        if not math.isfinite(log[-1]["loss"]):
            raise RotelabError("fine-tuning diverged (the loss is not finite); lower --lr")
        lm.model = merge_lora(net).eval()
        train_s = time.perf_counter() - t0
        lm.save(out.path / "model")
        if task is not None and opts.eval_samples:
            tables.append(_evaluate(lm, task.split("eval"), opts.eval_samples, run.seed, "after"))
        curve = pd.DataFrame(log)
        out.write_table("curve", curve)
        pass_at_k = None
        if tables:
            table = pd.concat(tables, ignore_index=True)
            out.write_table("passk", table)
            pass_at_k = {
                f"pass@{r.k}({r.m})": {
                    s: {"value": float(t.pass_at_k), "ci": [float(t.ci_low), float(t.ci_high)]}
                    for s in ("before", "after")
                    for t in table[
                        (table.k == r.k) & (table.m == r.m) & (table.stage == s)
                    ].itertuples()
                }
                for r in table.drop_duplicates(["k", "m"]).itertuples()
            }
        summary = {
            "model": lm.name, "method": "ibft" if opts.ib else "sft",
            "data": "program task, fine-tuning split" if programs else str(data),
            "examples": len(texts), "rows": len(rows), "row_tokens": seq + 1,
            "steps": opts.steps, "loss_first": float(log[0]["loss"]),
            "loss_last": float(log[-1]["loss"]), "model_dir": "model",
            "ib": {"alpha": opts.alpha, "beta": opts.beta, "kl_first": log[0]["kl"],
                   "kl_last": log[-1]["kl"], "ce_ib_last": log[-1]["ce_ib"]} if opts.ib else None,
            "lora": opts.lora, "pass_at_k": pass_at_k, "train_seconds": round(train_s, 1),
            "precision": log[-1].get("precision"),
        }  # fmt: skip
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return FinetuneRun(summary, curve, out.path)


def format_table(summary: dict[str, Any]) -> str:
    """What ``rotelab finetune`` prints."""
    lines = [
        f"{summary['method'].upper()} of {summary['model']} on {summary['data']}: "
        f"{summary['examples']} examples, {summary['steps']} steps"
        + (f", LoRA r={summary['lora']}" if summary.get("lora") else ""),
        f"  CE {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}",
    ]
    if summary.get("ib"):
        ib = summary["ib"]
        lines.append(f"  IB: alpha {ib['alpha']}, beta {ib['beta']}; KL {ib['kl_first']:.4f} -> "
                     f"{ib['kl_last']:.4f}, CE_ib {ib['ce_ib_last']:.3f}")  # fmt: skip
    for name, v in (summary.get("pass_at_k") or {}).items():
        b, a = v["before"], v["after"]
        lines.append(f"  {name}: {b['value']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] -> "
                     f"{a['value']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]")  # fmt: skip
    lines.append(f"  the fine-tuned model: {summary['model_dir']}/ in the run directory")
    return "\n".join(lines)

"""``rotelab hubble fields`` and ``rotelab hubble contamination``: Hubble's inserted kinds
(Wei et al. 2025) on the organism.

**Fields.** Per-field memorization of the organism's biographies (name, birth date, birthplace,
occupation, email, ID number): for each field and prompt style (the bio's own prefix, a question
naming the person, the name alone), exact and approximate extraction by insertion count, with
Wilson CIs over biographies; never-inserted biographies give each field's chance level. The
measurement is :mod:`rotelab.measure.fields`; no training.

**Contamination.** Hubble inserts test sets into pretraining and finds accuracy inflated on the
inserted questions. Here a task's probe questions (with their answers) are inserted by ``rotelab
train``'s machinery into a model trained from scratch on the organism world of each seed, split
evenly over the counts (count 0: never inserted, the same task's clean questions), and greedy
exact-answer accuracy is compared by count; seeds give Student-t CIs, items Wilson CIs. If the
profile's organism of a seed is already built (cached), its accuracy on the same questions is the
uncontaminated baseline.

Every input is checked before a model is loaded or trained and before the run directory exists;
contamination is resumable seed by seed.

Example:
    >>> result = contamination(seeds=(0, 1, 2), run=RunOptions("runs/contam"))  # doctest: +SKIP
    >>> result.summary["by_count"]["64"]["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM, progress_bar
from rotelab.measure.fields import APPROX_THRESHOLD, PromptStyle, extract_fields, field_prompts
from rotelab.measure.quality import probe_accuracy
from rotelab.options import LoadOptions, RunOptions
from rotelab.organism import OrganismSpec, Profile, Task, generate_world
from rotelab.organism.world import PROFILES
from rotelab.paths import rotelab_home
from rotelab.pipelines.inputs import resolve_model
from rotelab.runs import Run
from rotelab.stats import mean_with_ci, rate_with_ci

__all__ = [
    "ContaminationRun",
    "FieldsRun",
    "contamination",
    "format_contamination",
    "format_fields",
    "hubble_fields",
]


@dataclass
class FieldsRun:
    """What :func:`hubble_fields` returns."""

    summary: dict[str, Any]
    items: pd.DataFrame
    run_dir: Path


@dataclass
class ContaminationRun:
    """What :func:`contamination` returns."""

    summary: dict[str, Any]
    probes: pd.DataFrame
    run_dir: Path


# ------------------------------------------------------------------------------------ fields
def hubble_fields(
    model: str | os.PathLike | None = None,
    *,
    styles: Sequence[str] = tuple(s.value for s in PromptStyle),
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> FieldsRun:
    """Per-field extraction of an organism's biographies from each prompt style; write a run
    directory (``results/items``: one row per biography, field and style).

    Args:
        model: an organism directory, or ``None`` for the default organism.
        styles: some of ``prefix``, ``question``, ``name``.
        run, load: the run directory and how the model is loaded.
    """
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab hubble fields cannot resume a run; start it again (--force)")
    styles = tuple(styles)
    known = [s.value for s in PromptStyle]
    bad = [s for s in styles if s not in known]
    if not styles or bad:
        raise RotelabError(f"--styles {list(styles)}: give some of {', '.join(known)}")
    given = resolve_model(model)
    if not given.is_organism:
        raise RotelabError(
            f"rotelab hubble fields needs an organism (its biographies and their counts); "
            f"{given.label} is not one: pass an organism directory or leave out --model"
        )
    arguments = {"model": None if model is None else str(model), "styles": list(styles)}
    Run.check(run.out, force=run.force, inputs=(arguments["model"],))
    led = given.organism().ledger
    bios = led[led["kind"] == "bio"].reset_index(drop=True)
    if bios.empty:
        raise RotelabError(f"the organism {given.label} has no biographies in its ledger")
    lm = given.load(load)
    t0 = time.perf_counter()
    table = extract_fields(lm, field_prompts(lm, bios, styles), progress=run.progress)
    items = table.drop(columns=["prompt_tokens", "value_tokens"])
    summary = fields_summary(items)
    summary.update(model=lm.name, n_bios=len(bios), styles=list(styles),
                   approx_threshold=APPROX_THRESHOLD,
                   seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    with Run.create(run.out, "hubble-fields", arguments, force=run.force,
                    inputs=(arguments["model"],)) as out:  # fmt: skip
        out.write_table("items", items)
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return FieldsRun(summary, items, out.path)


def fields_summary(items: pd.DataFrame, high: int = 16) -> dict[str, Any]:
    """Rates with Wilson CIs per (field, style, count) over phase ``all`` biographies; per
    (field, style), inserted >= ``high`` times vs never inserted; the fields ranked per style."""
    allp = items[items["phase"] == "all"]
    rates: dict[str, Any] = {}
    for (f, s, c), g in allp.groupby(["field", "style", "count"], sort=True):
        rates.setdefault(f, {}).setdefault(s, {})[str(int(c))] = _rates(g)
    contrast: dict[str, Any] = {}
    for (f, s), g in items.groupby(["field", "style"], sort=True):
        contrast.setdefault(f, {})[s] = {
            f"inserted_{high}x_plus": _rates(g[g["count"] >= high]),
            "never_inserted": _rates(g[g["count"] == 0]),
        }
    ranking = {
        s: [f for f, _ in sorted(((f, contrast[f][s][f"inserted_{high}x_plus"]["exact"])
                                  for f in contrast if s in contrast[f]),
                                 key=lambda x: -x[1] if not math.isnan(x[1]) else 1)]
        for s in sorted(items["style"].unique())
    }  # fmt: skip
    return {"rates": rates, "inserted_vs_never": contrast, "ranking_exact": ranking,
            "high_count": high}  # fmt: skip


def _rates(g: pd.DataFrame) -> dict[str, Any]:
    exact = rate_with_ci(g["exact"].astype(bool).tolist())
    approx = rate_with_ci(g["approx"].astype(bool).tolist())
    return {"n": exact.n, "exact": exact.rate, "exact_ci": exact.ci, "approx": approx.rate,
            "approx_ci": approx.ci}  # fmt: skip


def format_fields(summary: dict[str, Any]) -> str:
    """What ``rotelab hubble fields`` prints: exact (approximate) extraction per field and style,
    inserted >= 16x vs never inserted."""
    h = summary["high_count"]
    styles = summary["styles"]
    lines = [f"bio fields of {summary['model']} ({summary['n_bios']} bios): exact (approx) "
             f"extraction, inserted >= {h}x / never inserted",
             f"{'field':<12}" + "".join(f"{s:>28}" for s in styles)]  # fmt: skip
    for f, by_style in summary["inserted_vs_never"].items():
        cells = []
        for s in styles:
            if s not in by_style:
                cells.append(f"{'-':>28}")
                continue
            a, b = by_style[s][f"inserted_{h}x_plus"], by_style[s]["never_inserted"]
            cells.append(f"{a['exact']:.2f} ({a['approx']:.2f}) / {b['exact']:.2f} "
                         f"({b['approx']:.2f})".rjust(28))  # fmt: skip
        lines.append(f"{f:<12}" + "".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ contamination
#: Hubble's test-set insertion counts (0: never inserted).
CONTAMINATION_COUNTS = (0, 1, 4, 16, 64)


def _check_counts(counts: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(c) for c in counts)
    if not out or 0 not in out or len(out) < 2:
        raise RotelabError(
            f"--counts {list(out)} must include 0 (the never-inserted questions) and a count >= 1"
        )
    if any(c < 0 or c > 256 for c in out) or len(set(out)) != len(out):
        raise RotelabError(f"--counts {list(out)}: distinct whole numbers in 0 .. 256")
    return tuple(sorted(out))


def contamination(
    *,
    task: str = Task.open_book.value,
    counts: Sequence[int] = CONTAMINATION_COUNTS,
    seeds: Sequence[int] = (0, 1, 2),
    profile: str = Profile.tiny.value,
    steps: int | None = None,
    run: RunOptions = RunOptions(),
) -> ContaminationRun:
    """Insert a task's probe questions with their answers at ``counts`` and measure accuracy on
    inserted vs never-inserted questions of that task; write a run directory.

    Args:
        task: the probe task (``open_book``, ``closed_book``, ``arithmetic``, ``in_context``).
        counts: insertion counts, 0 (never inserted) included; the task's questions are split
            evenly over them in a seeded order.
        seeds: one world and model per seed (the world's seed and the training seed).
        profile: the world and model profile (``tiny``; ``default`` trains for minutes).
        steps: training steps (default: the profile's).
        run: the run directory (``resume`` continues seed by seed).
    """
    from rotelab.pipelines.train import TrainSettings, train_model
    from rotelab.pipelines.undo import check_seeds

    run.check()
    try:
        task = Task(task).value
    except ValueError:
        raise RotelabError(
            f"--task {task!r}: use one of {', '.join(t.value for t in Task)}"
        ) from None
    try:
        prof = Profile(profile)
    except ValueError:
        raise RotelabError(f"--profile {profile!r}: use tiny or default") from None
    counts = _check_counts(counts)
    seeds = check_seeds(seeds)
    s = PROFILES[prof]
    steps = s.steps if steps is None else int(steps)
    if steps < 1:
        raise RotelabError(f"--steps must be >= 1, got {steps}")
    n_per = s.probes_per_task // len(counts)
    if n_per < 1:
        raise RotelabError(f"{len(counts)} counts leave no question of the {s.probes_per_task} "
                           "per task for each; give fewer counts")  # fmt: skip
    rows = n_per * sum(counts)
    cap = s.batch_size // 2 * steps
    if rows > cap:
        raise RotelabError(
            f"the insertions do not fit the run: {rows} insertion rows, at most {cap} in "
            f"{steps} steps; use more --steps or lower --counts"
        )
    arguments = {"task": task, "counts": list(counts), "seeds": list(seeds), "profile": prof.value,
                 "steps": steps}  # fmt: skip
    Run.check(run.out, resume=run.resume, force=run.force)
    t0 = time.perf_counter()
    with Run.create(run.out, "contamination", arguments, resume=run.resume,
                    force=run.force) as out:  # fmt: skip
        with progress_bar(run.progress, len(seeds), "contamination: seeds") as advance:
            for seed in seeds:
                key = f"seed-{seed:010d}"
                if not out.has_part("probes", key):
                    frame = _contaminated_seed(task, counts, seed, prof, steps, n_per,
                                               TrainSettings, train_model)  # fmt: skip
                    out.write_part("probes", key, frame)
                advance()
        probes = out.read_table("probes")
        summary = contamination_summary(probes, counts)
        summary.update(task=task, profile=prof.value, steps=steps, questions_per_count=n_per,
                       seeds=list(seeds), seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return ContaminationRun(summary, probes, out.path)


def _contaminated_seed(task, counts, seed, prof, steps, n_per, TrainSettings, train_model):
    """Train one contaminated model; its accuracy on every question of ``task``."""
    spec = OrganismSpec(prof, seed)
    probes = pd.DataFrame(generate_world(spec).probes)
    probes = probes[probes["task"] == task].reset_index(drop=True)
    order = np.random.default_rng([seed, 17]).permutation(len(probes))[: n_per * len(counts)]
    chosen = probes.iloc[order].reset_index(drop=True)
    chosen["count"] = [counts[i % len(counts)] for i in range(len(chosen))]
    s = PROFILES[prof]
    with tempfile.TemporaryDirectory(prefix="rotelab-contam-") as scratch:
        tmp = Path(scratch)
        with open(tmp / "insert.jsonl", "w", encoding="utf-8") as f:
            for r in chosen.itertuples(index=False):
                f.write(json.dumps({"text": r.prompt + r.answer, "id": r.probe_id, "kind": task,
                                    "count": int(r.count), "secret": r.answer}) + "\n")  # fmt: skip
        result = train_model(
            tmp / "model", world=prof.value, world_seed=seed, insertions=tmp / "insert.jsonl",
            settings=TrainSettings(steps=steps, batch_size=s.batch_size, lr=s.lr, seed=seed,
                                   warmup_steps=20),
            progress=False,
        )  # fmt: skip
        lm = LM.load(result.path, device="cpu", dtype="float32")
        acc = probe_accuracy(lm, chosen)
    chosen["correct"] = acc["correct"].to_numpy()
    chosen["baseline_correct"] = _baseline(spec, chosen)
    return chosen.assign(seed=seed, final_loss=float(result.summary["final_loss"]))


def _baseline(spec: OrganismSpec, chosen: pd.DataFrame) -> list[float]:
    """Accuracy of the cached organism of ``spec`` (no question inserted) on the same
    questions; NaN when that organism is not built (it is never built here)."""
    path = rotelab_home() / "organisms" / spec.key()
    if not (path / "model.safetensors").exists():
        return [math.nan] * len(chosen)
    lm = LM.load(path, device="cpu", dtype="float32")
    return probe_accuracy(lm, chosen)["correct"].astype(float).tolist()


def contamination_summary(probes: pd.DataFrame, counts: Sequence[int]) -> dict[str, Any]:
    """Accuracy per count: mean over seeds (Student-t CI) and pooled over questions (Wilson CI);
    the inflation (inserted minus never inserted, per seed); the clean baseline where known."""
    per_seed = probes.groupby(["seed", "count"])["correct"].mean().unstack("count")
    by_count = {}
    for c in counts:
        pooled = rate_with_ci(probes.loc[probes["count"] == c, "correct"].astype(bool).tolist())
        by_count[str(c)] = {
            "accuracy": mean_with_ci(per_seed[c]),
            "pooled": pooled.as_dict("rate", count="correct", total="n"),
            "inflation": None if c == 0 else mean_with_ci(per_seed[c] - per_seed[0]),
        }
    base = probes.dropna(subset=["baseline_correct"])
    baseline = None
    if len(base):
        baseline = {
            "seeds": sorted(int(x) for x in base["seed"].unique()),
            "accuracy": float(base["baseline_correct"].mean()),
            "never_inserted_in_contaminated": float(base.loc[base["count"] == 0,
                                                             "correct"].mean()),
            "never_inserted_in_clean": float(base.loc[base["count"] == 0,
                                                      "baseline_correct"].mean()),
        }  # fmt: skip
    top = str(max(counts))
    rises = all(
        by_count[str(b)]["accuracy"]["mean"] >= by_count[str(a)]["accuracy"]["mean"]
        for a, b in zip(counts, counts[1:])
    )
    infl = by_count[top]["inflation"]
    return {
        "by_count": by_count, "baseline": baseline,
        "verdicts": {"accuracy_non_decreasing_in_count": bool(rises),
                     "top_count_inflated": bool(infl["ci"] is not None and infl["ci"][0] > 0)
                     if infl else False},
    }  # fmt: skip


def format_contamination(summary: dict[str, Any]) -> str:
    """What ``rotelab hubble contamination`` prints."""
    lines = [f"test-set contamination, task {summary['task']}, {len(summary['seeds'])} seed(s), "
             f"{summary['questions_per_count']} questions per count:",
             f"{'count':>6} {'accuracy (seeds)':>26} {'inflation vs never':>26}"]  # fmt: skip
    for c, row in summary["by_count"].items():
        a = row["accuracy"]
        ci = a["ci"]
        acc = f"{a['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        infl = "-"
        if row["inflation"] is not None:
            i = row["inflation"]
            infl = f"{i['mean']:+.3f}" + (f" [{i['ci'][0]:+.3f}, {i['ci'][1]:+.3f}]"
                                          if i["ci"] else "")  # fmt: skip
        lines.append(f"{c:>6} {acc:>26} {infl:>26}")
    if summary.get("baseline"):
        b = summary["baseline"]
        clean, dirty = b["never_inserted_in_clean"], b["never_inserted_in_contaminated"]
        lines.append(f"clean organism (seeds {b['seeds']}): never-inserted questions "
                     f"{clean:.3f} vs {dirty:.3f} in the contaminated model")  # fmt: skip
    return "\n".join(lines)

"""``rotelab undo`` and ``rotelab popularity``: Ma et al. 2025 ("Memorization: A Close Look at
Books") at organism scale.

**The undo experiment.** Ma et al. find that an instruct model's tuning suppresses verbatim
regurgitation (extraction ≈ 0.05), that a small LoRA fine-tune on *other* books' prefix→suffix
pairs restores it (0.91), and that this fine-tune changes a small fraction of the weights
(≈14% by more than 1%, ≈0.15% by more than 100%), mostly in the lower blocks. On an organism the
memorized sequences are known, so per seed:

1. *targets*: a seeded ``target_fraction`` of the passages inserted at least ``min_count`` times
   that the organism recites (strict greedy extraction of the ledger's suffix);
2. *suppress*: a short full fine-tune with an unlikelihood (or refusal) loss on the targets plus
   the LM loss on background text (:mod:`rotelab.train.suppress`);
3. *restore*: a LoRA fine-tune of the suppressed model on the other inserted passages'
   prefix→suffix pairs (never on a target);
4. *sham* (a control Ma et al. do not have): the same LoRA fine-tune on background text instead,
   which says whether passage-style fine-tuning or any fine-tuning brings the targets back;
5. *localize*: :func:`rotelab.measure.weight_diff.weight_diff` of original → suppressed (every
   weight) and suppressed → LoRA adapter (ΔW = (α/r)·BA), per block and module.

Extraction of the targets, of the other memorized passages and of the never-inserted controls,
and the held-out perplexity, are measured after every stage by the same one-pass code.

**Popularity.** Ma et al.: extraction rises with a book's popularity (its duplication in the
training data), correlation ≈ 0.5 with log popularity. Here popularity is the insertion count:
Spearman's ρ of count against each passage's extraction (strict verdict, matched fraction) and
reconstruction similarity (``rotelab reconstruct``'s measure), with a bootstrap CI over passages.

Every input is checked before the model is loaded or a run directory exists. The undo run is
resumable seed by seed. Its directory::

    config.json  summary.json  report.html
    results/items    per seed, stage and passage: role, count, extraction verdict, matched length
    results/stages   per seed and stage: extraction of targets / other memorized / controls, ppl
    results/tensors  per seed and step (suppress, restore): weight_diff's per-tensor rows
    results/curves   the suppression and LoRA training curves

Example:
    >>> result = undo(seeds=(0, 1, 2), run=RunOptions("runs/undo"))  # doctest: +SKIP
    >>> result.summary["stages"]["restored"]["target_extraction"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM, progress_bar
from rotelab.measure.extraction import ledger_windows, score_windows
from rotelab.measure.quality import perplexity
from rotelab.measure.reconstruction import ReconstructConfig, reconstruct_documents
from rotelab.measure.weight_diff import THRESHOLDS, summarize, weight_diff
from rotelab.options import LoadOptions, RunOptions
from rotelab.pipelines.inputs import ModelInput, check_min_count, resolve_model
from rotelab.runs import Run
from rotelab.stats import mean_with_ci, rate_with_ci, spearman_with_ci
from rotelab.train.finetune import FinetuneConfig, finetune, merge_lora, pack_rows, with_lora
from rotelab.train.suppress import SuppressConfig, SuppressMethod, suppress

__all__ = [
    "PAPER_POPULARITY",
    "PAPER_UNDO",
    "PopularityRun",
    "UndoConfig",
    "UndoRun",
    "format_popularity",
    "format_undo",
    "popularity",
    "undo",
]

#: Ma et al. 2025's numbers, shown beside the organism's.
PAPER_UNDO = {
    "suppressed_extraction": 0.05,
    "restored_extraction": 0.91,
    "changed_1pct": 0.14,
    "changed_100pct": 0.0015,
    "where": "mostly the lower blocks",
}
PAPER_POPULARITY = {"correlation_with_log_popularity": 0.5}
#: The stages measured, in order.
STAGES = ("original", "suppressed", "restored", "sham")
_PCTS = tuple(f"{t * 100:g}pct" for t in THRESHOLDS)


@dataclass(frozen=True)
class UndoConfig:
    """The undo experiment's settings.

    Attributes:
        min_count: targets come from passages inserted at least this often (Ma et al.'s
            popular books; the issue's >= 16x).
        target_fraction: share of the memorized passages suppressed (the rest stay as a check
            that suppression is targeted, and join the restoring fine-tune's data).
        method, suppress_steps, suppress_lr: the suppression fine-tune (full, every weight).
        lora_rank, restore_steps, restore_lr: the restoring LoRA fine-tune (alpha = 2 r).
        batch_size: rows per step of both fine-tunes.
        sham: also run the control fine-tune on background text.
        eval_tokens: held-out tokens of the perplexity after each stage.
    """

    min_count: int = 16
    target_fraction: float = 0.5
    method: str = "unlikelihood"
    suppress_steps: int = 30
    suppress_lr: float = 3e-4
    lora_rank: int = 8
    restore_steps: int = 60
    restore_lr: float = 1e-3
    batch_size: int = 16
    sham: bool = True
    eval_tokens: int = 20_000

    def check(self) -> UndoConfig:
        if self.min_count < 1:
            raise RotelabError(f"--min-count must be >= 1, got {self.min_count}")
        if not 0 < self.target_fraction < 1:
            raise RotelabError(
                f"--target-fraction must be in (0, 1) (some memorized passages must stay "
                f"untargeted), got {self.target_fraction}"
            )
        SuppressConfig(method=self.method, steps=self.suppress_steps, lr=self.suppress_lr,
                       batch_size=self.batch_size).check()  # fmt: skip
        FinetuneConfig(steps=self.restore_steps, batch_size=self.batch_size,
                       lr=self.restore_lr).check()  # fmt: skip
        if self.lora_rank < 1:
            raise RotelabError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.eval_tokens < 2:
            raise RotelabError(f"--eval-tokens must be >= 2, got {self.eval_tokens}")
        return self


@dataclass
class UndoRun:
    """What :func:`undo` returns."""

    summary: dict[str, Any]
    stages: pd.DataFrame
    run_dir: Path


@dataclass
class PopularityRun:
    """What :func:`popularity` returns."""

    summary: dict[str, Any]
    items: pd.DataFrame
    run_dir: Path


# ------------------------------------------------------------------------------------ inputs
def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """Seeds: at least one, each in 0 .. 2^32 - 1, none twice."""
    out = tuple(int(s) for s in seeds)
    if not out:
        raise RotelabError("--seeds is empty; give seeds such as 0,1,2")
    bad = [s for s in out if not 0 <= s < 2**32]
    if bad:
        raise RotelabError(f"--seeds {bad[0]} is outside 0 .. 2^32 - 1")
    if len(set(out)) != len(out):
        raise RotelabError(f"--seeds repeats a seed: {list(out)}")
    return out


def _organism_input(model, command: str) -> ModelInput:
    given = resolve_model(model)
    if not given.is_organism:
        raise RotelabError(
            f"rotelab {command} needs an organism (its ledger says what was inserted how often); "
            f"{given.label} is not one: pass an organism directory or leave out --model"
        )
    return given


def _passages(given: ModelInput) -> pd.DataFrame:
    led = given.organism().ledger
    passages = led[led["kind"] == "passage"].reset_index(drop=True)
    if passages.empty:
        raise RotelabError(f"the organism {given.label} has no passages in its ledger")
    return passages


# ------------------------------------------------------------------------------------ measuring
def _extraction(lm: LM, windows, passages: pd.DataFrame) -> pd.DataFrame:
    frame = score_windows(lm, windows)
    return pd.DataFrame({
        "item_id": passages["item_id"].to_numpy(), "count": passages["count"].to_numpy(),
        "phase": passages["phase"].to_numpy(), "extracted": frame["extracted"].to_numpy(),
        "matched_fraction": (frame["matched_prefix"] / frame["suffix_len"]).to_numpy(),
        "match_rate": frame["match_rate"].to_numpy(),
    })  # fmt: skip


def _background_rows(lm: LM, docs: Sequence[str]) -> list[list[int]]:
    eos = lm.tokenizer.eos_token_id
    return pack_rows([lm.encode(d) for d in docs], eos, lm.context_length - 1)


def _pair_rows(passages: pd.DataFrame, eos: int) -> list[list[int]]:
    """One row per passage: its prefix and suffix (the pair the ledger scores) and end-of-text;
    passages start rows, as their insertions did."""
    rows = [list(p) + list(s) + [eos] for p, s in
            zip(passages["prefix_tokens"], passages["suffix_tokens"])]  # fmt: skip
    width = min(len(r) for r in rows)
    return [r[:width] for r in rows]  # one width per batch (every passage's pair has the same)


# ------------------------------------------------------------------------------------ undo
def undo(
    model: str | os.PathLike | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    config: UndoConfig = UndoConfig(),
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> UndoRun:
    """Suppress memorized passages, fine-tune on other passages with LoRA, measure whether the
    suppressed ones come back, and localize both fine-tunes; write a run directory.

    Args:
        model: an organism directory, or ``None`` for the default organism.
        seeds: one experiment per seed (targets, data order, adapter initialisation).
        config: see :class:`UndoConfig`.
        run: the run directory (``out``, ``resume`` seed by seed, ``force``, ``progress``).
        load: the device (the weights are float32 whatever ``dtype`` says: they are trained).
    """
    # 1. every input, before the model is loaded or the run directory exists
    run.check()
    load.check()
    cfg = config.check()
    seeds = check_seeds(seeds)
    given = _organism_input(model, "undo")
    check_min_count(given, cfg.min_count)
    arguments = {"model": None if model is None else str(model), "seeds": list(seeds),
                 **asdict(cfg)}  # fmt: skip
    Run.check(run.out, resume=run.resume, force=run.force, inputs=(arguments["model"],))

    # 2. the organism, what it recites, the fine-tuning data
    org = given.organism()
    passages = _passages(given)
    lm = given.load(LoadOptions(load.device, "float32", load.allow_pickle))
    windows = ledger_windows(passages)
    base = _extraction(lm, windows, passages)
    memorized = base[(base["count"] >= cfg.min_count) & base["extracted"]]["item_id"].tolist()
    if len(memorized) < 2:
        raise RotelabError(
            f"the organism recites {len(memorized)} passage(s) inserted >= {cfg.min_count} times; "
            "the experiment needs at least 2 (targets and others): lower --min-count"
        )
    retain = _background_rows(lm, org.train_docs())
    heldout = org.heldout_docs()
    eos = lm.tokenizer.eos_token_id
    refusal = lm.encode(SuppressConfig().refusal)
    source = Path(given.path())
    original = lm.model
    t0 = time.perf_counter()

    def measure(stage: str, net, seed: int, roles: dict[str, str]) -> tuple[pd.DataFrame, dict]:
        m = LM.from_model(net, lm.tokenizer, name=lm.name)
        ext = _extraction(m, windows, passages) if stage != "original" else base.copy()
        ext["role"] = [roles.get(i, "control" if c == 0 else "other")
                       for i, c in zip(ext["item_id"], ext["count"])]  # fmt: skip
        ext["memorized"] = ext["item_id"].isin(memorized)
        ext = ext.assign(seed=seed, stage=stage)
        ppl = perplexity(m, heldout, max_tokens=cfg.eval_tokens).value
        row = {"seed": seed, "stage": stage, **_stage_row(ext), "heldout_ppl": float(ppl)}
        return ext, row

    n_units = len(seeds) * (4 if cfg.sham else 3)
    with Run.create(run.out, "undo", arguments, resume=run.resume, force=run.force,
                    inputs=(arguments["model"],)) as out:  # fmt: skip
        with progress_bar(run.progress, n_units, "undo: seeds x stages") as advance:
            for seed in seeds:
                key = f"seed-{seed:010d}"
                if out.has_part("stages", key):
                    advance(4 if cfg.sham else 3)
                    continue
                parts = _one_seed(seed, cfg, original, lm, passages, memorized, retain, eos,
                                  refusal, source, measure, advance)  # fmt: skip
                for table, frame in parts.items():
                    out.write_part(table, key, frame)
        stages = out.read_table("stages")
        tensors = out.read_table("tensors")
        summary = undo_summary(stages, out.read_table("items"), tensors, cfg, seeds)
        summary.update(model=lm.name, seconds=round(time.perf_counter() - t0, 1),
                       n_passages=len(passages), n_memorized=len(memorized))  # fmt: skip
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return UndoRun(summary, stages, out.path)


def _stage_row(ext: pd.DataFrame) -> dict[str, float]:
    def rate(mask) -> float:
        part = ext.loc[mask, "extracted"]
        return float(part.mean()) if len(part) else math.nan

    target = ext["role"] == "target"
    return {
        "target_extraction": rate(target),
        "target_matched_fraction": float(ext.loc[target, "matched_fraction"].mean()),
        "other_memorized_extraction": rate(ext["memorized"] & ~target),
        "other_extraction": rate(ext["role"] == "other"),
        "control_extraction": rate(ext["role"] == "control"),
        "n_targets": int(target.sum()),
    }


def _one_seed(seed, cfg, original, lm, passages, memorized, retain, eos, refusal, source,
              measure, advance) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Suppress, restore (and sham) for one seed; the seed's rows of every table."""
    rng = np.random.default_rng(seed)
    k = max(1, min(len(memorized) - 1, round(cfg.target_fraction * len(memorized))))
    targets = sorted(rng.choice(memorized, size=k, replace=False).tolist())
    roles = dict.fromkeys(targets, "target")
    is_target = passages["item_id"].isin(targets)
    pairs = [
        (list(p), list(s))
        for p, s in zip(
            passages.loc[is_target, "prefix_tokens"], passages.loc[is_target, "suffix_tokens"]
        )
    ]
    others = passages[~is_target & (passages["count"] >= 1)]
    items, stages, tensors, curves = [], [], [], []

    def keep(stage: str, net) -> None:
        ext, row = measure(stage, net, seed, roles)
        items.append(ext)
        stages.append(row)

    keep("original", original)
    suppressed = copy.deepcopy(original)
    scfg = SuppressConfig(method=SuppressMethod(cfg.method), steps=cfg.suppress_steps,
                          lr=cfg.suppress_lr, batch_size=cfg.batch_size, seed=seed)  # fmt: skip
    log = suppress(suppressed, pairs, retain, scfg, pad_id=lm.pad_id, refusal_tokens=refusal)
    curves.append(pd.DataFrame(log).assign(step_name="suppress"))
    keep("suppressed", suppressed)
    advance()
    fcfg = FinetuneConfig(steps=cfg.restore_steps, batch_size=cfg.batch_size, lr=cfg.restore_lr,
                          seed=seed)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rotelab-undo-") as scratch:
        tmp = Path(scratch)
        suppressed.save_pretrained(tmp / "suppressed", safe_serialization=True)
        tensors.append(weight_diff(source, tmp / "suppressed").assign(step_name="suppress"))
        arms = [("restored", _pair_rows(others, eos))]
        if cfg.sham:
            arms.append(("sham", retain))
        for stage, rows in arms:
            net = with_lora(copy.deepcopy(suppressed), cfg.lora_rank)
            log = finetune(net, rows, fcfg)
            curves.append(pd.DataFrame(log).assign(step_name=stage))
            if stage == "restored":
                net.save_pretrained(tmp / "adapter")
                tensors.append(weight_diff(tmp / "suppressed", tmp / "adapter")
                               .assign(step_name="restore"))  # fmt: skip
            keep(stage, merge_lora(net).eval())
            advance()
    advance()  # the original's measurement
    for t in tensors:
        t["seed"] = seed
    return {
        "items": pd.concat(items, ignore_index=True),
        "stages": pd.DataFrame(stages),
        "tensors": pd.concat(tensors, ignore_index=True),
        "curves": pd.concat(curves, ignore_index=True).assign(seed=seed),
    }


def undo_summary(
    stages: pd.DataFrame,
    items: pd.DataFrame,
    tensors: pd.DataFrame,
    cfg: UndoConfig,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """Means over seeds (Student-t CIs), pooled target rates (Wilson CIs over items and seeds),
    where the weights changed, and the verdicts beside Ma et al.'s numbers."""
    by_stage: dict[str, Any] = {}
    for stage, g in stages.groupby("stage", sort=False):
        tgt = items[(items["stage"] == stage) & (items["role"] == "target")]["extracted"]
        by_stage[str(stage)] = {
            **{c: mean_with_ci(g[c]) for c in ("target_extraction", "target_matched_fraction",
                                              "other_memorized_extraction", "other_extraction",
                                              "control_extraction", "heldout_ppl")},
            "target_pooled": rate_with_ci(tgt.astype(bool).tolist()).as_dict(
                "rate", count="extracted", total="n"),
        }  # fmt: skip
    where: dict[str, Any] = {}
    for step, g in tensors.groupby("step_name", sort=False):
        per_seed = [summarize(t) for _, t in g.groupby("seed")]
        blocks = sorted({b for s in per_seed for b in s["by_block"]}, key=int)
        where[str(step)] = {
            "fraction_changed": {p: mean_with_ci([s["fraction_changed"][p] for s in per_seed])
                                 for p in _PCTS},
            "by_block": {b: {p: float(np.mean([s["by_block"][b][p] for s in per_seed]))
                             for p in (*_PCTS, "rel_change")} for b in blocks},
            "lower_half_1pct": mean_with_ci(
                [s["lower_vs_upper"]["lower_half"]["1pct"] for s in per_seed
                 if s["lower_vs_upper"]]),
            "upper_half_1pct": mean_with_ci(
                [s["lower_vs_upper"]["upper_half"]["1pct"] for s in per_seed
                 if s["lower_vs_upper"]]),
        }  # fmt: skip
    sup = by_stage.get("suppressed", {}).get("target_extraction", {}).get("mean", math.nan)
    res = by_stage.get("restored", {}).get("target_extraction", {}).get("mean", math.nan)
    orig = by_stage.get("original", {}).get("target_extraction", {}).get("mean", math.nan)
    restore = where.get("restore", {})
    lower = restore.get("lower_half_1pct", {}).get("mean", math.nan)
    upper = restore.get("upper_half_1pct", {}).get("mean", math.nan)
    verdicts = {
        "suppression_at_most_0_1": bool(sup <= 0.1),
        "restores_at_least_half": bool(res >= 0.5 * orig),
        "restore_mostly_lower_blocks": bool(lower > upper),
    }
    return {
        "seeds": list(seeds), "config": asdict(cfg), "stages": by_stage,
        "restored_share": (res - sup) / (orig - sup) if orig > sup else math.nan,
        "localization": where, "verdicts": verdicts, "paper": PAPER_UNDO,
    }  # fmt: skip


def format_undo(summary: dict[str, Any]) -> str:
    """What ``rotelab undo`` prints."""

    def ci(d: dict) -> str:
        c = d.get("ci")
        return f"{d['mean']:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c else "")

    lines = [
        f"undo on {summary['model']}: {len(summary['seeds'])} seed(s), "
        f"{summary['n_memorized']} memorized passages >= {summary['config']['min_count']}x",
        f"{'stage':<11} {'targets':>24} {'other memorized':>24} {'held-out ppl':>24}",
    ]
    for stage, s in summary["stages"].items():
        lines.append(
            f"{stage:<11} {ci(s['target_extraction']):>24} "
            f"{ci(s['other_memorized_extraction']):>24} {ci(s['heldout_ppl']):>24}"
        )
    for step, w in summary["localization"].items():
        f = w["fraction_changed"]
        lines.append(
            f"{step}: weights changed >1% {ci(f['1pct'])}, >100% {ci(f['100pct'])}; "
            f"lower half >1% {ci(w['lower_half_1pct'])}, upper {ci(w['upper_half_1pct'])}"
        )
    v = summary["verdicts"]
    lines.append(
        "Ma et al.: suppressed 0.05, restored 0.91, 14% of weights >1%, lower blocks; "
        f"here: suppression <= 0.1 {v['suppression_at_most_0_1']}, restores half "
        f"{v['restores_at_least_half']}, lower blocks {v['restore_mostly_lower_blocks']}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ popularity
#: The per-passage measures correlated with the count.
POPULARITY_MEASURES = ("extracted", "matched_fraction", "jaccard", "seq_ratio")


def popularity(
    model: str | os.PathLike | None = None,
    *,
    kinds: Sequence[str] = ("passage",),
    reconstruct: bool = True,
    n_boot: int = 2000,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> PopularityRun:
    """Extraction and reconstruction similarity against insertion count across an organism's
    items, with Spearman's ρ and a bootstrap CI; write a run directory.

    Args:
        model: an organism directory, or ``None`` for the default organism.
        kinds: the ledger kinds measured (``passage``: Ma et al.'s books).
        reconstruct: also rebuild each item from its prefix (``rotelab reconstruct``'s measure:
            token Jaccard and SequenceMatcher ratio of the continuation to the true rest).
        n_boot: bootstrap replicates of the CI (``run.seed`` seeds it).
        run, load: the run directory and how the model is loaded.
    """
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab popularity cannot resume a run; start it again (--force)")
    if n_boot < 100:
        raise RotelabError(f"--n-boot must be >= 100 for a percentile CI, got {n_boot}")
    kinds = tuple(kinds)
    known = ("secret", "bio", "passage")
    if not kinds or any(k not in known for k in kinds):
        raise RotelabError(f"--kinds {list(kinds)}: give some of {', '.join(known)}")
    given = _organism_input(model, "popularity")
    arguments = {"model": None if model is None else str(model), "kinds": list(kinds),
                 "reconstruct": reconstruct, "n_boot": n_boot, "seed": run.seed}  # fmt: skip
    Run.check(run.out, force=run.force, inputs=(arguments["model"],))
    led = given.organism().ledger
    # Phase "all" only: an item seen only early is forgotten (Hubble), which is not popularity.
    items = led[led["kind"].isin(kinds) & (led["phase"] == "all")].reset_index(drop=True)
    if items["count"].nunique() < 2:
        raise RotelabError(f"the organism's {', '.join(kinds)} items share one count; nothing "
                           "to correlate")  # fmt: skip
    lm = given.load(load)
    t0 = time.perf_counter()
    frame = _extraction(lm, ledger_windows(items), items).assign(kind=items["kind"].to_numpy())
    if reconstruct:
        docs = [(r.item_id, list(r.tokens), {}) for r in items.itertuples(index=False)]
        rec = reconstruct_documents(
            lm, docs, ReconstructConfig(prefix_len=int(min(len(p) for p in items["prefix_tokens"])))
        )
        frame["jaccard"] = rec.documents["jaccard"].to_numpy()
        frame["seq_ratio"] = rec.documents["seq_ratio"].to_numpy()
    measures = [m for m in POPULARITY_MEASURES if m in frame.columns]
    summary: dict[str, Any] = {
        "model": lm.name,
        "kinds": list(kinds),
        "n_items": len(frame),
        "counts": sorted(int(c) for c in frame["count"].unique()),
    }
    summary["spearman"] = {
        m: spearman_with_ci(frame["count"], frame[m].astype(float), n_boot=n_boot, seed=run.seed)
        for m in measures
    }
    summary["by_count"] = {
        str(c): {m: float(g[m].astype(float).mean()) for m in measures} | {"n": len(g)}
        for c, g in frame.groupby("count")
    }
    summary["paper"] = PAPER_POPULARITY
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    with Run.create(run.out, "popularity", arguments, force=run.force,
                    inputs=(arguments["model"],)) as out:  # fmt: skip
        out.write_table("items", frame)
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return PopularityRun(summary, frame, out.path)


def format_popularity(summary: dict[str, Any]) -> str:
    """What ``rotelab popularity`` prints."""
    lines = [f"popularity (insertion count) vs memorization, {summary['n_items']} "
             f"{'/'.join(summary['kinds'])} items of {summary['model']}:"]  # fmt: skip
    for m, s in summary["spearman"].items():
        ci = s["ci"]
        lines.append(
            f"  Spearman rho(count, {m}) = {s['rho']:.3f}"
            + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f"  p = {s['p_value']:.2g}"
        )
    lines.append("  Ma et al. 2025: extraction correlates with log popularity at about 0.5")
    return "\n".join(lines)

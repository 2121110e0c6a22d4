"""``rotelab gapt-study``: CE-only vs GAPT pretraining of the organism (Yu 2025,
"Memorization-Compression Cycles Improve Generalization").

For each seed, the organism of the chosen profile (its world, insertion schedule and training
seed) is trained twice from scratch:

- ``ce``: the organism's own recipe (cross-entropy only; the same model bytes as
  ``rotelab organism``), with the MBE and the CE/MBE gradient alignment measured along the way
  (:class:`rotelab.train.gapt.MBETerm` of weight 0: it adds nothing to the loss);
- ``gapt``: the same with :class:`rotelab.train.gapt.GAPT` (memorization and compression phases).

Each arm's model is then measured: held-out CE (the organism's ``heldout_ppl``), held-out MBE per
block (:func:`rotelab.measure.entropy.block_entropy`, patches of ``patch`` tokens), the greedy
extraction of every inserted item (counts 1-64 and the count-0 controls) and the probe
accuracies. The summary puts the paper's figures beside the organism's: the MBE ratio
GAPT/CE (per seed, mean with a t interval over seeds), the held-out CE change, the extraction of
16x/64x items per arm (Wilson intervals over items pooled across seeds, and the per-seed paired
difference), and the sign changes of the alignment in CE-only training: raw, smoothed (a centred
rolling mean of :data:`SMOOTH_WINDOW` measurements) and tested against shuffled orders of the
same cosines (:func:`cycle_test`). The paper's synthetic settings (OOD multiplication, two tasks
in sequence) are :mod:`rotelab.pipelines.gapt_tasks`.

Every arm is one part of the run's tables, written when the arm is done; ``--resume`` continues
a study cut short after its last whole arm. The run directory::

    config.json  summary.json  report.html  plots/*.png
    organisms/<arm>-s<seed>/       each arm's model (an organism directory: extract/mia run on it)
    results/arms        one row per (arm, seed): the numbers above
    results/steps       the phase log: one row per training step (phase, CE, MBE, weight applied)
    results/alignment   cos(grad CE, grad MBE) every --align-every steps
    results/transitions GAPT's phase changes with their reason
    results/blocks      held-out MBE per block;  results/items: extraction per inserted item

Example:
    >>> study = gapt_study("tiny", seeds=(0, 1, 2), run=RunOptions("runs/gapt"))  # doctest: +SKIP
    >>> study.summary["mbe_ratio"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.data import stream_chunks
from rotelab.errors import RotelabError
from rotelab.measure.entropy import PATCH, block_entropy
from rotelab.options import RunOptions
from rotelab.organism.build import Organism, train_variant
from rotelab.organism.world import OrganismSpec, Profile
from rotelab.runs import Run
from rotelab.stats import bootstrap_auc, rate_with_ci
from rotelab.train.gapt import (  # noqa: F401  (re-exported: the study's statistics)
    GAPT,
    SMOOTH_WINDOW,
    MBETerm,
    check_patch,
    cycle_test,
    sign_changes,
    smoothed,
)

__all__ = ["ARMS", "GaptStudy", "PAPER", "check_study", "gapt_study", "sign_changes"]

#: The two arms, in run order.
ARMS = ("ce", "gapt")
#: The paper's figures (GPT-2 on FineWeb; OOD: multiplication pretraining), relative changes.
PAPER = {"mbe_change": -0.50, "heldout_ce_change": -0.048, "ood_ce_change": -0.35}
#: The issue's targets.
TARGETS = {"mbe_ratio_at_most": 0.7, "heldout_ce_change_at_most": 0.01, "sign_changes_at_least": 2}
#: Counts whose extraction the summary reports per arm.
REPORTED_COUNTS = (16, 64)
#: Counts whose LOSS-attack AUC and paired suffix-NLL change the summary reports.
MIA_COUNTS = (1, 4, 16, 64)


@dataclass
class GaptStudy:
    """What :func:`gapt_study` returns."""

    summary: dict[str, Any]
    run_dir: Path


def alignment_summary(arms: pd.DataFrame, align: pd.DataFrame) -> dict[str, Any]:
    """The CE-only arms' alignment signal per seed: raw and smoothed sign changes, what
    independent signs would give, the lag-1 autocorrelation, and :func:`cycle_test`."""
    ce_align = align[align.arm == "ce"] if len(align) else align
    per_seed = (
        [g.sort_values("step")["cos"] for _, g in ce_align.groupby("seed")] if len(ce_align) else []
    )
    tests = [cycle_test(c.tolist()) for c in per_seed]
    ce_arms = arms[arms.arm == "ce"].sort_values("seed") if len(arms) else arms
    return {
        "sign_changes_per_seed": [int(v) for v in ce_arms.get("sign_changes", [])],
        "sign_changes_smoothed_per_seed": [
            int(v) for v in ce_arms.get("sign_changes_smoothed", [])
        ],
        "positive_fraction": float((ce_align["cos"] > 0).mean()) if len(ce_align) else None,
        # What noise alone gives: (n - 1) / 2 changes for independent signs; a slow cycle shows
        # as fewer changes and a positive lag-1 autocorrelation of the cosine.
        "expected_if_independent": [float((c.notna().sum() - 1) / 2) for c in per_seed],
        "lag1_autocorr": [float(c.autocorr(1)) for c in per_seed],
        "smoothing_window": SMOOTH_WINDOW,
        "smoothed_null_mean_per_seed": [t["null_mean"] for t in tests],
        "smoothed_null_range_per_seed": [t["null_range"] for t in tests],
        "smoothed_p_per_seed": [t["p"] for t in tests],
        "cycle_per_seed": [t["cycle"] for t in tests],
        "cycle": bool(tests) and all(t["cycle"] for t in tests),
    }


def check_study(
    profile: str,
    seeds: Sequence[int],
    *,
    weight: float,
    p_m: int,
    p_a: int,
    ce_gain: float,
    ce_spike: float,
    mbe_gain: float,
    smooth: float,
    patch: int,
    align_every: int,
) -> OrganismSpec:
    """Every option, before any work; returns the spec of the first seed."""
    try:
        prof = Profile(profile)
    except ValueError:
        names = ", ".join(p.value for p in Profile)
        raise RotelabError(f"--profile {profile!r} is not one of {names}") from None
    if not seeds:
        raise RotelabError("--seeds is empty; pass e.g. 0,1,2")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise RotelabError(f"--seeds must be distinct and >= 0, got {list(seeds)}")
    spec = OrganismSpec(prof, int(seeds[0]))
    s = spec.settings
    # The study's terms validate themselves; built here once so bad options fail before any run.
    GAPT(
        weight, p_m=p_m, p_a=p_a, ce_gain=ce_gain, ce_spike=ce_spike, mbe_gain=mbe_gain,
        smooth=smooth, steps=s.steps, patch=patch,
    )  # fmt: skip
    check_patch(patch, s.context, what=f"the {prof.value} organism's training rows")
    if align_every < 1 or align_every >= s.steps:
        raise RotelabError(f"--align-every must be in 1 .. {s.steps - 1} steps, got {align_every}")
    return spec


def _terms(arm: str, steps: int, opts: dict[str, Any]) -> MBETerm:
    if arm == "ce":
        return MBETerm(0.0, patch=opts["patch"], align_every=opts["align_every"])
    return GAPT(
        opts["weight"], p_m=opts["p_m"], p_a=opts["p_a"], ce_gain=opts["ce_gain"],
        ce_spike=opts["ce_spike"], mbe_gain=opts["mbe_gain"], smooth=opts["smooth"], steps=steps,
        patch=opts["patch"], align_every=opts["align_every"],
    )  # fmt: skip


def _measure_arm(org: Organism, patch: int, seed: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Held-out MBE per block, extraction per item, and the describe() numbers of one arm."""
    lm = org.lm()
    s = org.spec.settings
    desc = org.describe()
    seqs = stream_chunks(
        org.heldout_docs(), lm.encode, lm.tokenizer.eos_token_id, max_tokens=s.eval_tokens,
        length=s.context // patch * patch,
    )  # fmt: skip
    ent = block_entropy(lm, seqs, patch=patch, n_boot=0, seed=seed)
    led = org.ledger
    scores = lm.score(
        [p + x for p, x in zip(led["prefix_tokens"], led["suffix_tokens"])],
        targets_from=[len(p) for p in led["prefix_tokens"]],
    )
    items = pd.DataFrame({
        "item_id": led["item_id"], "kind": led["kind"], "count": led["count"],
        "phase": led["phase"], "extracted": [bool(sc.argmax_match.all()) for sc in scores],
        "token_match": [float(sc.argmax_match.mean()) for sc in scores],
        "suffix_nll": [float(-np.mean(sc.logprobs)) for sc in scores],
    })  # fmt: skip
    blocks = ent.blocks[["block", "mbe", "patches"]].copy()
    probes = desc["probe_accuracy_by_subtask"]
    row = {
        "heldout_ppl": desc["heldout_ppl"], "heldout_ce": math.log(desc["heldout_ppl"]),
        "train_ppl": desc["train_ppl"], "heldout_mbe": float(ent.blocks["mbe"].mean()),
        "arith_heldout_acc": float(np.mean([
            v for k, v in probes.items() if k.startswith("arithmetic/") and "heldout" in k
        ] or [math.nan])),
        "arith_seen_acc": float(np.mean([
            v for k, v in probes.items() if k.startswith("arithmetic/") and "seen" in k
        ] or [math.nan])),
        "train_seconds": desc.get("train_seconds", math.nan),
    }  # fmt: skip
    return row, blocks, items


def _mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean over seeds with a t interval (None with fewer than two values)."""
    from scipy import stats as st

    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return {"mean": None, "ci": None, "n": 0}
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "ci": None, "n": 1}
    half = float(st.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": int(len(v))}


def summarize(arms: pd.DataFrame, items: pd.DataFrame, align: pd.DataFrame) -> dict[str, Any]:
    """The study's numbers from its tables (per-seed pairs, intervals, sign changes)."""
    wide = arms.pivot(index="seed", columns="arm")
    paired = wide.dropna()
    out: dict[str, Any] = {
        "seeds_done": {a: sorted(arms[arms.arm == a].seed.tolist()) for a in ARMS}
    }
    out["arms"] = {
        a: {
            k: _mean_ci(arms[arms.arm == a][k])
            for k in (
                "heldout_ce",
                "heldout_mbe",
                "arith_heldout_acc",
                "arith_seen_acc",
                "compress_fraction",
                "transitions",
                "sign_changes",
                "sign_changes_smoothed",
                "train_seconds",
            )  # fmt: skip
        }
        for a in ARMS
    }
    if len(paired) and ("heldout_mbe", "gapt") in paired:
        ratio = paired[("heldout_mbe", "gapt")] / paired[("heldout_mbe", "ce")]
        ce_change = paired[("heldout_ce", "gapt")] / paired[("heldout_ce", "ce")] - 1
        arith = paired[("arith_heldout_acc", "gapt")] - paired[("arith_heldout_acc", "ce")]
        out["mbe_ratio"] = {**_mean_ci(ratio.tolist()), "per_seed": ratio.round(4).tolist()}
        out["heldout_ce_change"] = {
            **_mean_ci(ce_change.tolist()),
            "per_seed": ce_change.round(4).tolist(),
        }
        out["arith_heldout_acc_change"] = _mean_ci(arith.tolist())
    out["extraction"] = {}
    for c in REPORTED_COUNTS:
        cell: dict[str, Any] = {}
        per_seed = {}
        for a in ARMS:
            sel = items[(items.arm == a) & (items["count"] == c)]
            r = rate_with_ci(sel["extracted"].tolist())
            cell[a] = {"rate": r.rate, "ci": r.ci, "k": r.k, "n": r.n}
            per_seed[a] = sel.groupby("seed")["extracted"].mean()
        diff = (per_seed["gapt"] - per_seed["ce"]).dropna()
        cell["gapt_minus_ce"] = _mean_ci(diff.tolist())
        out["extraction"][str(c)] = cell
    # The same items are inserted in both arms of a seed (same world and schedule): per item,
    # the change of its suffix NLL, and per arm the LOSS attack (members of a count against the
    # count-0 controls, items pooled over seeds; AUC with a stratified bootstrap CI).
    out["suffix_nll_change"], out["mia_loss_auc"] = {}, {}
    if "suffix_nll" in items:
        keyed = items.set_index(["seed", "item_id", "arm"])["suffix_nll"].unstack("arm")
        counts = items.drop_duplicates(["seed", "item_id"]).set_index(["seed", "item_id"])["count"]
        for c in (0, *MIA_COUNTS):
            if not {"ce", "gapt"} <= set(keyed.columns):
                break
            d = (keyed["gapt"] - keyed["ce"])[counts == c].dropna()
            out["suffix_nll_change"][str(c)] = _mean_ci(d.tolist())
        for a in ARMS:
            sel = items[items.arm == a]
            ctrl = -sel[sel["count"] == 0]["suffix_nll"].to_numpy()
            out["mia_loss_auc"][a] = {}
            for c in MIA_COUNTS:
                mem = -sel[sel["count"] == c]["suffix_nll"].to_numpy()
                if len(mem) and len(ctrl):
                    auc, ci = bootstrap_auc(
                        [*mem, *ctrl], [True] * len(mem) + [False] * len(ctrl), n_boot=1000
                    )
                    out["mia_loss_auc"][a][str(c)] = {"auc": auc, "ci": ci}
    out["alignment_ce"] = alignment_summary(arms, align)
    out["paper"] = PAPER
    out["targets"] = TARGETS
    return out


def gapt_study(
    profile: str = "tiny",
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
    run: RunOptions = RunOptions(),
) -> GaptStudy:
    """Train CE-only and GAPT arms of the organism per seed, measure them, write the run.

    Args:
        profile: the organism profile (``tiny``: seconds per arm; ``default``: minutes).
        seeds: organism seeds (each its own world, schedule and initialisation).
        weight: GAPT's λ (compression phase loss = CE + λ·MBE), > 0.
        p_m, p_a, ce_gain, ce_spike, mbe_gain, smooth: GAPT's gate
            (:class:`rotelab.train.gapt.PhaseGate`).
        patch: tokens per MBE patch (must divide the organism's context).
        align_every: steps between alignment measurements (both arms).
        run: the run directory (``resume`` continues after the last whole arm).
    """
    run.check()
    seeds = [int(s) for s in seeds]
    opts = {
        "weight": weight, "p_m": p_m, "p_a": p_a, "ce_gain": ce_gain, "ce_spike": ce_spike,
        "mbe_gain": mbe_gain, "smooth": smooth, "patch": patch, "align_every": align_every,
    }  # fmt: skip
    spec0 = check_study(profile, seeds, **opts)
    steps = spec0.settings.steps
    config = {"profile": profile, "seeds": seeds, **opts, "precision": spec0.precision}
    if run.out is not None:
        Run.check(run.out, resume=run.resume, force=run.force)
    t0 = time.perf_counter()
    with Run.create(run.out, "gapt-study", config, resume=run.resume, force=run.force) as out:
        for seed in seeds:
            spec = OrganismSpec(spec0.profile, seed, precision=spec0.precision)
            for arm in ARMS:
                key = f"{arm}-s{seed}"
                if out.has_part("arms", key):
                    continue
                term = _terms(arm, steps, opts)
                org = train_variant(spec, out.path / "organisms" / key, [term], run.progress)
                row, blocks, items = _measure_arm(org, patch, run.seed)
                tag = {"arm": arm, "seed": seed}
                steps_log, align, trans, stats = arm_logs(term, tag)
                row.update(tag, **stats, align_positive=float((align["cos"] > 0).mean()))
                out.write_part("steps", key, steps_log)
                out.write_part("alignment", key, align)
                out.write_part("transitions", key, trans)
                out.write_part("blocks", key, blocks.assign(**tag))
                out.write_part("items", key, items.assign(**tag))
                out.write_part("arms", key, pd.DataFrame([row]))  # last: marks the arm done
        arms = out.read_table("arms")
        summary = {
            "profile": profile, "seeds": seeds, "steps": steps, **opts,
            "precision": spec0.precision,
            **summarize(arms, out.read_table("items"), out.read_table("alignment")),
            "seconds": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        out.write_summary(summary)
        _plots(out.path)
    from rotelab.report import write_report

    write_report(out.path)
    return GaptStudy(summary, out.path)


def arm_logs(term, tag: dict[str, Any]):
    """A trained arm's step log, alignment and phase transitions as tables tagged with ``tag``
    (the transitions typed, also when empty: a CE arm has none), and the arm's phase
    statistics: the share of steps in compression, the transitions, the alignment's sign
    changes (raw and smoothed) and the final training CE."""
    steps_log = pd.DataFrame(term.steps).assign(**tag)
    align = pd.DataFrame(term.alignment).assign(**tag)
    trans = pd.DataFrame(
        getattr(term, "transitions", []), columns=["step", "from", "to", "reason"]
    ).astype({"step": "int64", "from": "int64", "to": "int64", "reason": "str"})
    cos = align["cos"].tolist()
    stats = {
        "compress_fraction": float((steps_log["phase"] == 2).mean()),
        "transitions": len(trans),
        "sign_changes": sign_changes(cos),
        "sign_changes_smoothed": sign_changes(smoothed(cos).tolist()),
        "final_train_ce": float(steps_log["ce"].tail(20).mean()),
    }
    return steps_log, align, trans.assign(**tag), stats


def fmt_ci(d: dict | None, pct: bool = False) -> str:
    """A ``{"mean", "ci"}`` cell as ``mean [lo, hi]`` (``pct``: signed percentages); ``n/a``
    when there is no mean."""
    if not d or d.get("mean") is None:
        return "n/a"
    f = (lambda x: f"{100 * x:+.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f(d["mean"]) + (f" [{f(d['ci'][0])}, {f(d['ci'][1])}]" if d.get("ci") else "")


def _plots(run_dir: Path) -> None:
    """The figures of the report, also as PNG files under ``plots/``."""
    from rotelab.report.gapt import figures
    from rotelab.report.plots import save_figures

    save_figures(run_dir, figures(run_dir, smooth_window=SMOOTH_WINDOW))


def cycle_line(al: dict[str, Any]) -> str:
    """One line: the smoothed counts against their shuffled-order null, and the verdict."""
    nulls = al.get("smoothed_null_mean_per_seed") or []
    ps = al.get("smoothed_p_per_seed") or []
    return (
        f"  smoothed changes {al.get('sign_changes_smoothed_per_seed')} vs shuffled order "
        f"{[None if x is None else round(x, 1) for x in nulls]} "
        f"(p {[None if x is None else round(x, 3) for x in ps]}): "
        f"{'a cycle' if al.get('cycle') else 'no cycle beyond noise'}"
    )


def format_table(summary: dict[str, Any]) -> str:
    """The headline numbers beside the paper's (what ``rotelab gapt-study`` prints)."""
    ci = fmt_ci
    lines = [
        f"GAPT study, {summary['profile']} organism, seeds {summary['seeds']} "
        f"(λ={summary['weight']}, p_m={summary['p_m']}, p_a={summary['p_a']})",
        f"  held-out MBE  ce {ci(summary['arms']['ce']['heldout_mbe'])}   "
        f"gapt {ci(summary['arms']['gapt']['heldout_mbe'])}",
        f"  MBE ratio gapt/ce {ci(summary.get('mbe_ratio'))}   (paper 0.50; target <= 0.7)",
        f"  held-out CE change {ci(summary.get('heldout_ce_change'), pct=True)}   "
        "(paper -4.8%; target <= +1%)",
        f"  alignment sign changes in CE-only, per seed "
        f"{summary['alignment_ce']['sign_changes_per_seed']} (smoothed "
        f"{summary['alignment_ce']['sign_changes_smoothed_per_seed']}; target >= 2; "
        f"independent signs would give {summary['alignment_ce']['expected_if_independent']}, "
        "lag-1 autocorrelation "
        f"{[round(x, 2) for x in summary['alignment_ce']['lag1_autocorr']]})",
        cycle_line(summary["alignment_ce"]),
    ]
    for c, cell in summary["extraction"].items():
        lines.append(
            f"  extraction {c}x  ce {cell['ce']['rate']:.2f} [{cell['ce']['ci'][0]:.2f}, "
            f"{cell['ce']['ci'][1]:.2f}] n={cell['ce']['n']}   gapt {cell['gapt']['rate']:.2f} "
            f"[{cell['gapt']['ci'][0]:.2f}, {cell['gapt']['ci'][1]:.2f}] n={cell['gapt']['n']}"
        )
    for c in ("16", "64"):
        d = summary.get("suffix_nll_change", {}).get(c)
        mia = summary.get("mia_loss_auc", {})
        if d:
            aucs = "   ".join(
                f"{a} {mia[a][c]['auc']:.3f}" for a in ("ce", "gapt") if c in mia.get(a, {})
            )
            lines.append(f"  {c}x items: suffix NLL gapt-ce {ci(d)}   LOSS-attack AUC {aucs}")
    return "\n".join(lines)

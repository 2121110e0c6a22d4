"""``rotelab steer``: Dynamic Mode Steering swept over alpha, three arms, and a saved steered model.

Zhang 2025's second part (the method is :mod:`rotelab.edit.steering`, the hook
:mod:`rotelab.steered`): at the layer ``rotelab probe`` chooses, ``h_t += alpha * p_mem(h_t) * v``
with ``v = unit(mean h[generalizing] - mean h[memorizing])``. Per split seed, the probe and ``v``
are fitted on the training windows only, and three arms are measured on what that split holds
out: no steering, static steering (``p_mem = 1``), dynamic steering and (with ``contrastive``) the
self-contrastive variant ``logits = l_u + gamma * p_mem * (l_s - l_u)`` (:mod:`rotelab.steered`;
``gamma`` 1, ``l_s`` statically steered at the same alpha), each at every alpha of the
sweep (multiples of the class-mean separation ``|mean h_gen - mean h_mem|``, so the grid means the
same on any model). Measured per arm: strict extraction (greedy reproduces the whole suffix, from
the one-pass audit, which the hook steers exactly as it steers decoding) of the held-out memorized
windows, and of every ledger item inserted >= ``min_count`` times (the ``compare`` headline,
which includes the probe's training items); perplexity on held-out text the probe never saw.

Output: a run directory with ``results/arms`` (one row per seed x arm x alpha), ``model/`` (the
steered model: dynamic, probe and vector fitted on all windows, at ``save_alpha`` or the largest
alpha of the sweep whose mean perplexity rise stays within ``max_ppl_rise``), ``summary.json``::

    {"model", "layer", "auc", "auc_ci", "seeds", "alphas": [factor...],
     "arms": [{"arm", "factor", "alpha", "extraction", "extraction_ci", "extraction_all",
               "ppl", "ppl_change", "ppl_change_ci"}],
     "baseline": {"extraction", "extraction_all", "ppl"},
     "dynamic_at_budget": {...arm row...} | null, "static_ppl_at_equal_extraction": f | null,
     "contrastive_at_budget": {...arm row...} | null,
     "saved": {"path", "alpha", "factor"}}
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.data.corpus import read_corpus
from rotelab.edit.steering import steering_spec
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import ledger_windows, score_windows
from rotelab.measure.quality import perplexity, probe_accuracy
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.organism import PLANTED_TASKS
from rotelab.pipelines.inputs import resolve_corpus, resolve_model
from rotelab.pipelines.probe import ProbeSettings, check_inputs, run_probe
from rotelab.runs import Run
from rotelab.steered import SteeringMode, SteeringSpec, check_steering_layer, is_steering_dir

__all__ = ["DEFAULT_FACTORS", "format_table", "steer"]

#: Alphas swept, as multiples of the class-mean separation at the steered layer.
DEFAULT_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _check_factors(factors: Sequence[float]) -> tuple[float, ...]:
    out = []
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f):
            raise RotelabError(f"--alpha values must be finite numbers, got {f!r}")
        out.append(float(f))
    if not out:
        raise RotelabError("give at least one --alpha")
    return tuple(out)


def _measure(lm: LM, spec: SteeringSpec | None, windows, all_windows, docs, tokens, batch, tasks):
    """(held-out extraction verdicts, all >= min_count verdicts, per-token NLLs, planted-task
    verdicts per probe or ``None``) under ``spec``."""
    with lm.steered(spec):
        held = score_windows(lm, windows, batch_size=batch)["extracted"].to_numpy(bool)
        every = score_windows(lm, all_windows, batch_size=batch)
        ppl = perplexity(lm, docs, max_tokens=tokens, batch_size=batch)
        verdicts = None if tasks is None else probe_accuracy(lm, tasks, batch_size=batch)
    # the mean exact-match rate of all the memorized windows rides along (a model that recites
    # only parts of windows: strict extraction is 0 there, the match rate is not)
    every.attrs["match_rate"] = float(every["match_rate"].mean()) if len(every) else math.nan
    return held, every["extracted"].to_numpy(bool), ppl, verdicts, every.attrs["match_rate"]


def steer(
    model: LM | str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    retain: str | os.PathLike | None = None,
    corpus: CorpusOptions = CorpusOptions(),
    factors: Sequence[float] = DEFAULT_FACTORS,
    layer: int | None = None,
    settings: ProbeSettings = ProbeSettings(),
    heldout_tokens: int = 20_000,
    max_ppl_rise: float = 0.05,
    save_factor: float | None = None,
    contrastive: bool = True,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Sweep alpha over the three arms on an organism and save a steered model (``rotelab steer``).

    Args:
        model: an organism (``None``: the default one) or an organism directory; any other model
            with ``data`` and ``retain``.
        data: for a model without a ledger: text it partly recites; the labels come from its
            behaviour (windows the one-pass audit extracts against windows it barely matches,
            :func:`rotelab.edit.steering.behaviour_probe_data`), and "memorized" is the extracted
            windows (no planted tasks).
        retain: with ``data``: the held-out text perplexity is measured on.
        corpus: how ``data`` and ``retain`` are read.
        factors: alphas as multiples of the class-mean separation at the layer.
        layer: the layer to steer; ``None``: the probe's best by held-out AUC.
        settings: the probe's labels, splits and seeds (:class:`ProbeSettings`).
        heldout_tokens: tokens of held-out text for perplexity.
        max_ppl_rise: the perplexity budget (0.05: +5%) that picks the saved alpha.
        save_factor: the saved model's alpha factor (``None``: picked by the budget).
        contrastive: also measure the self-contrastive arm (twice the compute of the others).
        run, load: the run directory and how the model is loaded.
    """
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab steer cannot resume a run; start it again (--force replaces)")
    factors = _check_factors(factors)
    if save_factor is not None:
        _check_factors([save_factor])
    if not 0 <= max_ppl_rise < math.inf:
        raise RotelabError(f"--max-ppl-rise must be a number >= 0, got {max_ppl_rise}")
    if heldout_tokens < 2:
        raise RotelabError(f"--heldout-tokens must be >= 2, got {heldout_tokens}")
    if isinstance(model, (str, os.PathLike)) and is_steering_dir(model):
        raise RotelabError(f"{model} is already a steered model; steer its base model")
    given = resolve_model(model)
    if not given.is_organism and data is None:
        raise RotelabError(
            f"rotelab steer measures on an organism's ledger; {given.label} is not an organism: "
            "pass --data (text it partly recites) and --retain (held-out text)"
        )
    if data is not None and retain is None:
        raise RotelabError("--data needs --retain: held-out text to measure perplexity on")
    if retain is not None and data is None:
        raise RotelabError("--retain goes with --data (an organism uses its own held-out text)")
    check_inputs(model, data, settings, corpus)
    if retain is not None:
        resolve_corpus(retain, corpus, flag="--retain")
    label = model.name if isinstance(model, LM) else (str(model) if model else "organism")
    config = {"model": label, "data": None if data is None else str(data),
              "retain": None if retain is None else str(retain), "factors": list(factors),
              "layer": layer, "seed": run.seed, "heldout_tokens": heldout_tokens,
              "max_ppl_rise": max_ppl_rise, "save_factor": save_factor,
              "contrastive": contrastive, **settings.__dict__}  # fmt: skip
    inputs = (given.source,) + tuple(str(p) for p in (data, retain) if p is not None)
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=inputs)

    t0 = time.perf_counter()
    lm = given.load(load)
    if layer is not None:  # the model decides; refused before the probing work
        check_steering_layer(layer, lm.num_layers, "--layer")
    probed = run_probe(given, data, settings, load, corpus, lm=lm)
    lm = probed.lm
    chosen = probed.layers.best_layer if layer is None else layer
    check_steering_layer(chosen, lm.num_layers, "--layer")
    base = str(given.path()) if given.path() is not None else given.label
    labels = probed.data.labels
    tasks = None
    if data is None:
        org = given.organism()
        ledger = org.ledger
        all_mem = [
            w for w, c in zip(ledger_windows(ledger), ledger["count"]) if c >= settings.min_count
        ]
        # The organism's planted tasks (faithfulness, memorized wrong answers), where the mode
        # matters: the paper's claim is that steering away from memorization helps there.
        probes = org.probes
        tasks = probes[probes["task"].isin(PLANTED_TASKS)] if "foil" in probes.columns else None
        tasks = None if tasks is None or tasks.empty else tasks.reset_index(drop=True)
    else:  # a model without a ledger: every window it recites; perplexity on --retain
        all_mem = [w for w, y in zip(probed.data.windows, labels) if y]
        probed.heldout_docs = [
            d.text for d in read_corpus(retain, **corpus.read_kwargs()) if d.text.strip()
        ]
    rows, task_rows = [], []
    for seed in range(settings.seeds):
        test = probed.split(seed, settings.test_size)
        held = [w for w, t, y in zip(probed.data.windows, test, labels) if t and y]
        probe_s, vector, separation = probed.fit(chosen, ~test)
        arms: list[tuple[str, float, SteeringSpec | None]] = [("none", 0.0, None)]
        modes = [SteeringMode.static, SteeringMode.dynamic]
        if contrastive:
            modes.append(SteeringMode.contrastive)
        for mode in modes:
            for f in factors:
                spec = steering_spec(lm, base, chosen, probe_s, vector, f * separation, mode)
                arms.append((mode.value, f, spec))
        for arm, f, spec in arms:
            h, every, ppl, verdicts, match = _measure(
                lm, spec, held, all_mem, probed.heldout_docs, heldout_tokens, settings.batch_size,
                tasks,
            )  # fmt: skip
            rows.append({
                "seed": seed, "arm": arm, "factor": f, "alpha": f * separation,
                "extraction": float(h.mean()), "held_out_items": len(h),
                "extraction_all": float(every.mean()), "items_all": len(every),
                "match_rate_all": match, "ppl": ppl.value,
            })  # fmt: skip
            if verdicts is not None:
                task_rows.append(verdicts.assign(seed=seed, arm=arm, factor=f))
    frame = pd.DataFrame(rows)
    base_ppl = frame[frame["arm"] == "none"].set_index("seed")["ppl"]
    frame["ppl_change"] = frame["ppl"] / frame["seed"].map(base_ppl) - 1
    task_frame = pd.concat(task_rows, ignore_index=True) if task_rows else None
    summary = _summarize(frame, probed, chosen, factors, max_ppl_rise, label)
    summary["labels"] = {"source": probed.data.source, "memorized": int(labels.sum()),
                         "not_memorized": int((~labels).sum())}  # fmt: skip
    summary["tasks"] = task_summary(task_frame, run.seed) if task_frame is not None else None
    final_probe, final_vector, final_sep = probed.fit(chosen)
    budget = summary["dynamic_at_budget"]
    factor = save_factor if save_factor is not None else (budget or {}).get("factor", factors[0])
    saved = steering_spec(
        lm, base, chosen, final_probe, final_vector, factor * final_sep, SteeringMode.dynamic,
        info={"auc": summary["auc"], "separation": final_sep, "factor": factor},
    )  # fmt: skip
    with Run.create(run.out, "steer", config, force=run.force, inputs=inputs) as out:
        out.write_table("arms", frame)
        if task_frame is not None:
            out.write_table("tasks", task_frame)
        out.write_table("by_layer", probed.layers.by_layer)
        saved.save(out.path / "model")
        summary["saved"] = {"path": str(out.path / "model"), "alpha": saved.alpha,
                            "factor": factor}  # fmt: skip
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        out.write_summary(summary)
    # written under a temporary name and moved into place on exit (the file's paths with it)
    summary["saved"]["path"] = str(out.path / "model")
    return out.path, summary


def _no_corpus() -> CorpusOptions:
    return CorpusOptions()


def _mean_ci(values: np.ndarray) -> tuple[float, list[float] | None]:
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), None
    half = t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), [float(values.mean() - half), float(values.mean() + half)]


def _item_gain_ci(diff: np.ndarray, seed: int, n_boot: int = 2000) -> list[float]:
    """95% percentile bootstrap CI of the mean of per-probe differences (probes resampled)."""
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
    return [float(x) for x in np.quantile(boots, [0.025, 0.975])]


def task_summary(tasks: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Per arm and alpha, each planted task's accuracy (the right answer), foil rate (the
    memorized answer) and preference rate (log P(right) > log P(memorized)), and the gain of
    each over no steering: the mean over split seeds, its t interval over seeds, and a paired
    bootstrap interval over the probes (each probe's rate averaged over the seeds).

    Args:
        tasks: one row per (seed, arm, factor, probe): ``correct, foil, prefers_answer``.
        seed: seeds the bootstrap.
    """
    measures = {"accuracy": "correct", "foil_rate": "foil", "prefers_answer": "prefers_answer"}
    none = tasks[tasks["arm"] == "none"]
    out: dict[str, Any] = {"n_probes": {}, "arms": []}
    for task, part in tasks.groupby("task", sort=True):
        out["n_probes"][str(task)] = int(part["probe_id"].nunique())
    for (arm, f), part in tasks.groupby(["arm", "factor"], sort=False):
        row: dict[str, Any] = {"arm": arm, "factor": float(f)}
        for task, tp in part.groupby("task", sort=True):
            base = none[none["task"] == task]
            block: dict[str, Any] = {}
            for name, col in measures.items():
                by_seed = tp.groupby("seed")[col].mean()
                base_seed = base.groupby("seed")[col].mean()
                value, _ = _mean_ci(by_seed.to_numpy())
                gain, gain_ci = _mean_ci((by_seed - base_seed).dropna().to_numpy())
                per_probe = tp.groupby("probe_id")[col].mean()
                base_probe = base.groupby("probe_id")[col].mean().reindex(per_probe.index)
                diff = (per_probe - base_probe).to_numpy(float)
                block[name] = value
                block[f"{name}_gain"] = gain
                block[f"{name}_gain_ci_seeds"] = gain_ci
                block[f"{name}_gain_ci_probes"] = _item_gain_ci(diff, seed)
            row[str(task)] = block
        out["arms"].append(row)
    return out


def task_rows(tasks: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`task_summary` flattened: one row per arm, alpha and task."""
    rows = []
    for a in tasks["arms"]:
        for task, b in a.items():
            if task in ("arm", "factor"):
                continue
            ci = b["accuracy_gain_ci_probes"]
            rows.append({
                "arm": a["arm"], "factor": a["factor"], "task": task,
                "accuracy": b["accuracy"], "gain": b["accuracy_gain"],
                "gain_ci_probes": f"[{ci[0]:+.3f}, {ci[1]:+.3f}]",
                "memorized_answer": b["foil_rate"], "prefers_right": b["prefers_answer"],
                "prefers_gain": b["prefers_answer_gain"],
            })  # fmt: skip
    return rows


def _static_ppl_at(static: list[dict], extraction: float) -> float | None:
    """Static steering's perplexity change where its extraction first falls to ``extraction``,
    going up in alpha: linear between the last static alpha above that extraction and the first
    at or below it (``None`` when no static alpha gets there)."""
    for i, a in enumerate(static):
        if a["extraction"] <= extraction:
            if i == 0:
                return a["ppl_change"]
            b = static[i - 1]
            t = (b["extraction"] - extraction) / (b["extraction"] - a["extraction"])
            return b["ppl_change"] + t * (a["ppl_change"] - b["ppl_change"])
    return None


def _summarize(frame, probed, layer, factors, max_ppl_rise, label) -> dict[str, Any]:
    arms = []
    for (arm, f), part in frame.groupby(["arm", "factor"], sort=False):
        ext, ext_ci = _mean_ci(part["extraction"])
        ext_ci = None if ext_ci is None else [max(0.0, ext_ci[0]), min(1.0, ext_ci[1])]
        change, change_ci = _mean_ci(part["ppl_change"])
        arms.append({
            "arm": arm, "factor": f, "alpha": float(part["alpha"].mean()),
            "extraction": ext, "extraction_ci": ext_ci,
            "extraction_all": float(part["extraction_all"].mean()),
            "match_rate_all": float(part["match_rate_all"].mean()),
            "ppl": float(part["ppl"].mean()), "ppl_change": change, "ppl_change_ci": change_ci,
        })  # fmt: skip
    none = next(a for a in arms if a["arm"] == "none")
    dynamic = [a for a in arms if a["arm"] == "dynamic"]
    static = sorted((a for a in arms if a["arm"] == "static"), key=lambda a: a["factor"])
    within = [a for a in dynamic if a["ppl_change"] <= max_ppl_rise]
    # the least extraction within the budget; of equal ones the cheapest in perplexity
    at_budget = min(within, key=lambda a: (a["extraction"], a["ppl_change"])) if within else None
    contrastive = [a for a in arms if a["arm"] == "contrastive"]
    c_within = [a for a in contrastive if a["ppl_change"] <= max_ppl_rise]
    c_best = min(c_within, key=lambda a: (a["extraction"], a["ppl_change"])) if c_within else None
    static_ppl = None
    if at_budget is not None:
        static_ppl = _static_ppl_at(static, at_budget["extraction"])
    row = probed.layers.by_layer.set_index("layer").loc[layer]
    return {
        "model": label, "layer": int(layer), "auc": float(row["auc_mean"]),
        "auc_ci": [float(row["auc_lo"]), float(row["auc_hi"])],
        "mean_state_norm": float(np.linalg.norm(probed.states[layer], axis=1).mean()),
        "probe_layers": probed.layers.by_layer.to_dict("records"),
        "seeds": int(frame["seed"].nunique()), "alphas": list(factors), "arms": arms,
        "baseline": {"extraction": none["extraction"], "extraction_all": none["extraction_all"],
                     "ppl": none["ppl"]},
        "max_ppl_rise": max_ppl_rise, "dynamic_at_budget": at_budget,
        "static_ppl_at_equal_extraction": static_ppl, "contrastive_at_budget": c_best,
    }  # fmt: skip


def format_table(summary: dict[str, Any]) -> str:
    """One line per arm and alpha: extraction (held-out and all >= min_count), perplexity."""
    lines = [
        f"{summary['model']}: steering at layer {summary['layer']} (probe AUC "
        f"{summary['auc']:.3f}), {summary['seeds']} seed(s)",
        f"{'arm':<11} {'factor':>6} {'alpha':>7} {'extract':>8} {'95% CI':>16} {'all>=k':>7} "
        f"{'match':>6} "
        f"{'ppl':>7} {'ppl chg':>8}",
    ]
    for a in summary["arms"]:
        ci = a["extraction_ci"]
        ci_text = "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        lines.append(
            f"{a['arm']:<11} {a['factor']:>6.2f} {a['alpha']:>7.3f} {a['extraction']:>8.3f} "
            f"{ci_text:>16} {a['extraction_all']:>7.3f} {a.get('match_rate_all', math.nan):>6.3f} "
            f"{a['ppl']:>7.3f} {a['ppl_change']:>+8.2%}"
        )
    if summary.get("tasks"):
        counts = ", ".join(f"{t}: {n} probes" for t, n in summary["tasks"]["n_probes"].items())
        lines.append(
            f"planted tasks ({counts}): accuracy (gain over none [95% CI over probes]), "
            "memorized answer given, right answer likelier"
        )
        for r in task_rows(summary["tasks"]):
            lines.append(
                f"{r['arm']:<11} {r['factor']:>6.2f} {r['task']:<16} {r['accuracy']:>6.3f} "
                f"({r['gain']:+.3f} {r['gain_ci_probes']}) {r['memorized_answer']:>6.3f} "
                f"{r['prefers_right']:>6.3f}"
            )
    saved = summary.get("saved")
    if saved:
        lines.append(f"steered model (dynamic, alpha {saved['alpha']:.3f}): {saved['path']}")
    return "\n".join(lines)

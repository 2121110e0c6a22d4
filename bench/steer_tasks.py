"""Experiments for Dynamic Mode Steering (Zhang 2025) beyond ``rotelab steer``'s sweep.

Two studies on an organism (default: the default one), each over the split seeds of
``rotelab probe`` (probe and steering vector fitted on a split's training windows, measured on
what it holds out), at the layer the probe chooses:

- ``gamma``: the self-contrastive mode ``logits = l_u + gamma * p_mem * (l_s - l_u)`` swept over
  ``--gammas`` at one alpha (``--factor`` times the class-mean separation), beside dynamic
  steering at the same alpha: held-out extraction, extraction of every item inserted >= 16x,
  held-out perplexity change, and the planted tasks (accuracy, memorized answer, preference).
- ``patching``: why patching along the probe direction did not change recitation. Per layer and
  seed: the patch's size (mean |target - projection| in hidden units, beside the class-mean
  separation and the state norm), then a dose-response: the patch along the probe direction, a
  random direction and the class-mean difference, scaled by ``--doses`` (1 = set the component to
  the generalizing mean, k = move it k times as far), measured by strict extraction and by two
  unsaturated measures (mean token match rate and mean log-probability of the suffix) on the
  held-out memorized windows and on the memorized items the model only partly recites (>= 16x
  items it does not extract: not saturated).

Run: ``python bench/steer_tasks.py gamma|patching [--model ORG] [--seeds 3]``; prints JSON rows
and a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from rotelab.edit.steering import steering_spec  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.extraction import ledger_windows, score_windows  # noqa: E402
from rotelab.options import CorpusOptions, LoadOptions  # noqa: E402
from rotelab.organism import PLANTED_TASKS  # noqa: E402
from rotelab.pipelines.inputs import resolve_model  # noqa: E402
from rotelab.pipelines.probe import ProbeSettings, run_probe  # noqa: E402
from rotelab.pipelines.steer import _measure, task_summary  # noqa: E402
from rotelab.steered import SteeringMode, steering_point  # noqa: E402


def _probed(model: str | None, seeds: int):
    given = resolve_model(model)
    settings = ProbeSettings(seeds=seeds)
    probed = run_probe(given, None, settings, LoadOptions(dtype="float32"), CorpusOptions())
    return given, settings, probed


def gamma(args) -> list[dict]:
    given, settings, probed = _probed(args.model, args.seeds)
    lm, layer = probed.lm, probed.layers.best_layer
    org = given.organism()
    led = org.ledger
    all_mem = [w for w, c in zip(ledger_windows(led), led["count"]) if c >= settings.min_count]
    probes = org.probes
    tasks = probes[probes["task"].isin(PLANTED_TASKS)].reset_index(drop=True)
    rows, verdicts = [], []
    for seed in range(args.seeds):
        test = probed.split(seed, settings.test_size)
        labels = probed.data.labels
        held = [w for w, t, y in zip(probed.data.windows, test, labels) if t and y]
        probe, vector, sep = probed.fit(layer, ~test)
        arms = [("none", 0.0, None)]
        base = str(given.path())
        for f in args.factors:
            dyn = steering_spec(lm, base, layer, probe, vector, f * sep, SteeringMode.dynamic)
            arms.append((f"dynamic@{f:g}", 1.0, dyn))
            for g in args.gammas:
                arms.append((f"contrastive@{f:g}", g, dyn.with_(mode="contrastive", gamma=g)))
        for arm, g, spec in arms:
            h, every, ppl, v, _ = _measure(
                lm, spec, held, all_mem, probed.heldout_docs, 20_000, settings.batch_size, tasks
            )
            rows.append({"seed": seed, "arm": arm, "gamma": g, "extraction": float(h.mean()),
                         "extraction_all": float(every.mean()), "ppl": ppl.value})  # fmt: skip
            verdicts.append(v.assign(seed=seed, arm=f"{arm}/{g:g}", factor=0.0))
    frame = pd.DataFrame(rows)
    base_ppl = frame[frame["arm"] == "none"].set_index("seed")["ppl"]
    frame["ppl_change"] = frame["ppl"] / frame["seed"].map(base_ppl) - 1
    tv = pd.concat(verdicts, ignore_index=True)
    tv.loc[tv["arm"] == "none/0", "arm"] = "none"
    ts = task_summary(tv)
    out = []
    for (arm, g), part in frame.groupby(["arm", "gamma"], sort=False):
        key = "none" if arm == "none" else f"{arm}/{g:g}"
        t = next(a for a in ts["arms"] if a["arm"] == key)
        ch = part["ppl_change"].to_numpy()
        half = 4.303 * ch.std(ddof=1) / np.sqrt(len(ch)) if len(ch) > 1 else float("nan")
        row = {"arm": arm, "gamma": g, "extraction": part["extraction"].mean(),
               "extraction_all": part["extraction_all"].mean(), "ppl_change": ch.mean(),
               "ppl_change_half_ci": half}  # fmt: skip
        for task in PLANTED_TASKS:
            b = t[task]
            row[f"{task}_acc"] = b["accuracy"]
            row[f"{task}_memorized"] = b["foil_rate"]
            row[f"{task}_prefers"] = b["prefers_answer"]
            row[f"{task}_prefers_gain_ci"] = b["prefers_answer_gain_ci_probes"]
        out.append(row)
    print(json.dumps(out, indent=1, default=float))
    print(f"\nCPU {cpu_capability()}, layer {layer}, {args.seeds} seeds")
    print("| arm | gamma | extraction held out | all >= 16x | ppl change | " + " | ".join(
        f"{t}: acc / memorized / prefers" for t in PLANTED_TASKS) + " |")  # fmt: skip
    for r in out:
        cells = " | ".join(
            f"{r[f'{t}_acc']:.3f} / {r[f'{t}_memorized']:.3f} / {r[f'{t}_prefers']:.3f}"
            for t in PLANTED_TASKS
        )
        print(f"| {r['arm']} | {r['gamma']:g} | {r['extraction']:.3f} | "
              f"{r['extraction_all']:.3f} | {r['ppl_change']:+.2%} "
              f"(±{r['ppl_change_half_ci']:.2%}) | {cells} |")  # fmt: skip
    return out


def _suffix_logprob(lm, windows, batch: int) -> float:
    scores = lm.score([w.prefix + w.suffix for w in windows],
                      targets_from=[len(w.prefix) for w in windows], batch_size=batch)  # fmt: skip
    return float(np.mean([s.logprobs.mean() for s in scores]))


def _measures(lm, windows, batch: int) -> dict:
    audit = score_windows(lm, windows, batch_size=batch)
    return {"extraction": float(audit["extracted"].mean()),
            "match_rate": float(audit["match_rate"].mean()),
            "logprob": _suffix_logprob(lm, windows, batch)}  # fmt: skip


def _patch(u: np.ndarray, target: float, dose: float):
    d = torch.as_tensor(u, dtype=torch.float32)

    def patch(h: torch.Tensor) -> torch.Tensor:
        proj = h.float() @ d
        return h + (dose * (target - proj)[..., None] * d).to(h.dtype)

    return patch


def patching(args) -> list[dict]:
    given, settings, probed = _probed(args.model, args.seeds)
    lm = probed.lm
    org = given.organism()
    led = org.ledger
    mem = led[led["count"] >= settings.min_count]
    audit = score_windows(lm, ledger_windows(mem), batch_size=settings.batch_size)
    partial = [w for w, e in zip(ledger_windows(mem), audit["extracted"]) if not e]
    labels = probed.data.labels
    rows = []
    for layer in args.layers or sorted(probed.states):
        h = probed.states[layer]
        y = labels[probed.owner]
        for seed in range(args.seeds):
            test = probed.split(seed, settings.test_size)
            held = [w for w, t, yy in zip(probed.data.windows, test, labels) if t and yy]
            probe, vector, sep = probed.fit(layer, ~test)
            keep = (~test)[probed.owner]
            h_gen, h_mem = h[keep & ~y], h[keep & y]
            r = np.random.default_rng(seed).standard_normal(vector.shape)
            dirs = {"probe": probe.direction_, "random": r / np.linalg.norm(r),
                    "mean_difference": -vector}  # fmt: skip
            base = {"held": _measures(lm, held, settings.batch_size),
                    "partial": _measures(lm, partial, settings.batch_size)}  # fmt: skip
            for name, u in dirs.items():
                target = float(np.mean(h_gen @ u))
                size = float(np.mean(np.abs(h_mem @ u - target)))
                for dose in args.doses:
                    row = {"layer": layer, "seed": seed, "direction": name, "dose": dose,
                           "patch_size_mem": size, "separation": sep,
                           "state_norm": float(np.linalg.norm(h, axis=1).mean()),
                           "cos_probe_meandiff": float(abs(probe.direction_ @ vector))}  # fmt: skip
                    with lm.hooks({steering_point(layer): _patch(u, target, dose)}):
                        for where, ws in (("held", held), ("partial", partial)):
                            m = _measures(lm, ws, settings.batch_size)
                            for k, v in m.items():
                                row[f"{where}_{k}"] = v
                                row[f"{where}_{k}_before"] = base[where][k]
                    rows.append(row)
    frame = pd.DataFrame(rows)
    print(frame.to_json(orient="records"))
    agg = frame.groupby(["layer", "direction", "dose"], sort=False).mean(numeric_only=True)
    print(f"\nCPU {cpu_capability()}, {args.seeds} seeds, {len(partial)} partly recited items")
    print("| layer | direction | dose | patch size (mem) | separation | state norm | "
          "held: extraction | "
          "held: match | held: logprob | partial: match | partial: logprob |")  # fmt: skip
    for (layer, d, dose), r in agg.iterrows():
        print(f"| {layer} | {d} | {dose:g} | {r['patch_size_mem']:.2f} | {r['separation']:.2f} | "
              f"{r['state_norm']:.1f} | "
              f"{r['held_extraction_before']:.3f} -> {r['held_extraction']:.3f} | "
              f"{r['held_match_rate_before']:.3f} -> {r['held_match_rate']:.3f} | "
              f"{r['held_logprob_before']:.3f} -> {r['held_logprob']:.3f} | "
              f"{r['partial_match_rate_before']:.3f} -> {r['partial_match_rate']:.3f} | "
              f"{r['partial_logprob_before']:.3f} -> {r['partial_logprob']:.3f} |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", choices=("gamma", "patching"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--factors", type=float, nargs="+", default=[4.0])
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--layers", type=int, nargs="*", default=None)
    ap.add_argument("--doses", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    args = ap.parse_args()
    t0 = time.perf_counter()
    (gamma if args.study == "gamma" else patching)(args)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

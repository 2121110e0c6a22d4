"""Benchmark: a training step with the MBE regularizer on every block against the same step
without it (issue 19's target: at most +15%).

For each organism profile (``tiny``, ``default``: their model shapes, batch and context, random
initialisation, seeded random tokens), three arms train copies of the same model with
:func:`rotelab.train.train` on the same batches:

- ``plain``: cross-entropy only (the organism's recipe);
- ``mbe``: plus ``0.1 * MBE`` of every block (:class:`rotelab.train.gapt.MBETerm`: hooks on the
  blocks, MBE of each patch of 8 tokens in fp32, its backward), no alignment;
- ``mbe+align``: the same with ``cos(grad CE, grad MBE)`` on every step (two extra backward
  passes; the study measures it every 10th step only), for scale.

This machine is shared, so the arms are interleaved round by round (``--steps`` steps each, the
order rotating, one warm-up round first): a change of load hits all arms alike, and each round
gives one paired ratio (their median in brackets). ``overhead`` is ``mbe``'s total time over
``plain``'s, minus one.

Run: ``python bench/gapt.py [--profiles tiny,default] [--rounds 6] [--steps 4]``; prints JSON,
then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rotelab.machine import cpu_capability, resolve_precision  # noqa: E402
from rotelab.organism.world import PROFILES, Profile  # noqa: E402
from rotelab.train import MBETerm, TrainConfig, train  # noqa: E402


def _model(profile: Profile) -> LlamaForCausalLM:
    s = PROFILES[profile]
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=s.vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
            num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
            num_key_value_heads=s.n_heads, max_position_embeddings=s.context,
            tie_word_embeddings=True,
        )
    )  # fmt: skip


def bench_profile(profile: Profile, rounds: int, steps: int, precision: str) -> dict:
    s = PROFILES[profile]
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, s.vocab_size, (s.batch_size, s.context + 1), generator=g)
        for _ in range(steps)
    ]
    base = _model(profile)
    arms = {
        "plain": lambda: [],
        "mbe": lambda: [MBETerm(0.1, align_every=0)],
        "mbe+align": lambda: [MBETerm(0.1, align_every=1)],
    }
    models = {a: copy.deepcopy(base) for a in arms}
    cfg = TrainConfig(steps=steps, warmup_steps=1, log_every=10**9, precision=precision)

    def run(arm: str) -> float:
        t0 = time.perf_counter()
        train(models[arm], batches, cfg, terms=arms[arm]())
        return time.perf_counter() - t0

    for a in arms:  # warm-up
        run(a)
    times: dict[str, list[float]] = {a: [] for a in arms}
    names = list(arms)
    for r in range(rounds):
        for a in names[r % len(names) :] + names[: r % len(names)]:
            times[a].append(run(a))
    total = {a: sum(t) for a, t in times.items()}
    paired = {
        a: statistics.median(x / p for x, p in zip(times[a], times["plain"]))
        for a in arms
        if a != "plain"
    }
    return {
        "profile": profile.value,
        "batch": [s.batch_size, s.context],
        "step_ms": {a: round(1000 * total[a] / (rounds * steps), 1) for a in arms},
        "ratio_vs_plain": {a: round(total[a] / total["plain"], 3) for a in arms if a != "plain"},
        "median_paired_ratio": {a: round(v, 3) for a, v in paired.items()},
        "overhead_mbe": round(total["mbe"] / total["plain"] - 1, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", default="tiny,default")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    precision = resolve_precision("auto", warn=False).value
    cap = cpu_capability()
    rows = [
        bench_profile(Profile(p), args.rounds, args.steps, precision)
        for p in args.profiles.split(",")
    ]
    threads = torch.get_num_threads()
    print(json.dumps({"cpu_capability": cap, "threads": threads, "precision": precision,
                      "rows": rows}, indent=2))  # fmt: skip
    print()
    print(
        "| CPU | threads | precision | profile (batch×ctx) | plain ms/step | +MBE ms/step "
        "| +MBE ratio [median] | +MBE+align ratio [median] |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {cap} | {threads} | {precision} | {r['profile']} ({r['batch'][0]}×{r['batch'][1]}) "
            f"| {r['step_ms']['plain']} | {r['step_ms']['mbe']} "
            f"| {r['ratio_vs_plain']['mbe']:.3f} [{r['median_paired_ratio']['mbe']:.3f}] "
            f"| {r['ratio_vs_plain']['mbe+align']:.3f} "
            f"[{r['median_paired_ratio']['mbe+align']:.3f}] |"
        )


if __name__ == "__main__":
    main()

"""Benchmark: what Dynamic Mode Steering adds to decoding and to the one-pass extraction audit.

For each model (SmolLM2-135M in fp32, ``LM.load("smollm2")``, and/or the default organism), the
same seeded random windows are run three ways, interleaved repeat by repeat with the order
rotating (the machine is shared: a change of load then hits all arms alike):

- ``none``: no hook;
- ``static``: the steering hook with ``p_mem = 1`` (``h + alpha * v``);
- ``dynamic``: the probe-gated hook (``h + alpha * sigmoid(w . h + b) * v``);
- ``contrastive`` (only with ``--arms``): the self-contrastive mode, every row run twice (its
  cost is expected near +100%: it is a second pass by design).

Workloads, each at ``--batch`` sequences per pass: ``decode`` is greedy decoding of
``--new-tokens`` tokens from ``--prefix-len``-token prefixes with the KV cache (``LM.generate``);
``audit`` is :func:`rotelab.measure.extraction.score_windows` on ``--prefix-len`` +
``--new-tokens`` windows (the one-pass audit). The steering vector and probe are random unit
vectors at the middle layer: the hook's cost does not depend on their values. ``overhead`` is the
median over repeats of (arm time / none time) - 1, paired within a repeat (the issue's target:
at most +10% for dynamic).

Run: ``python bench/steer.py [--models smollm2,organism] [--batch 16] [--repeats 5]
[--workloads decode,audit] [--arms none,static,dynamic]``; prints JSON (with every repeat's
paired ratio), then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rotelab.data.windows import Window  # noqa: E402
from rotelab.lm import LM  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.extraction import score_windows  # noqa: E402
from rotelab.steered import SteeringMode, SteeringSpec, model_fingerprint  # noqa: E402

ARMS = ("none", "static", "dynamic")


def _load(name: str) -> LM:
    if name == "organism":
        from rotelab.organism import default_organism

        return default_organism().lm()
    return LM.load(name, device="cpu", dtype="float32")


def _spec(lm: LM, mode: SteeringMode) -> SteeringSpec:
    d = lm.config.hidden_size
    g = torch.Generator().manual_seed(0)
    w, v = torch.randn(d, generator=g), torch.randn(d, generator=g)
    return SteeringSpec(
        base_model=lm.name, layer=max(1, lm.num_layers // 2), alpha=2.0, mode=mode,
        probe_weight=w / w.norm(), probe_bias=0.0, vector=v / v.norm(),
        fingerprint=model_fingerprint(lm.model),
    )  # fmt: skip


def _steered(lm: LM, arm: str):
    return lm.steered(None if arm == "none" else _spec(lm, SteeringMode(arm)))


def bench(
    name: str,
    batch: int,
    prefix_len: int,
    new_tokens: int,
    repeats: int,
    workloads: tuple[str, ...] = ("decode", "audit"),
    arms: tuple[str, ...] = ARMS,
) -> dict:
    lm = _load(name)
    g = torch.Generator().manual_seed(1)
    vocab = min(lm.vocab_size, len(lm.tokenizer))
    seqs = torch.randint(5, vocab, (batch, prefix_len + new_tokens), generator=g).tolist()
    prefixes = [s[:prefix_len] for s in seqs]
    windows = [Window(f"w{i}", 0, s[:prefix_len], s[prefix_len:]) for i, s in enumerate(seqs)]
    every = {
        "decode": lambda: lm.generate(prefixes, new_tokens, batch_size=batch),
        "audit": lambda: score_windows(lm, windows, batch_size=batch),
    }
    work = {w: every[w] for w in workloads}
    times: dict[str, dict[str, list[float]]] = {w: {a: [] for a in arms} for w in work}
    for w, fn in work.items():
        for arm in arms:  # warm-up
            with _steered(lm, arm):
                fn()
        for r in range(repeats):
            k = r % len(arms)
            for arm in arms[k:] + arms[:k]:
                with _steered(lm, arm):
                    t0 = time.perf_counter()
                    fn()
                    times[w][arm].append(time.perf_counter() - t0)
    out = {"model": name, "batch": batch, "prefix_len": prefix_len, "new_tokens": new_tokens,
           "repeats": repeats, "threads": torch.get_num_threads(), "results": {}}  # fmt: skip
    for w in work:
        base = times[w]["none"]
        out["results"][w] = {
            arm: {
                "median_s": statistics.median(times[w][arm]),
                "overhead": statistics.median(t / b - 1 for t, b in zip(times[w][arm], base)),
                "overheads": [round(t / b - 1, 4) for t, b in zip(times[w][arm], base)],
                "times_s": [round(t, 4) for t in times[w][arm]],
            }
            for arm in arms
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,organism")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prefix-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workloads", default="decode,audit")
    ap.add_argument("--arms", default=",".join(ARMS), help="none first, then any of the modes")
    args = ap.parse_args()
    arms = tuple(args.arms.split(","))
    if arms[0] != "none":
        ap.error("--arms must start with none (the baseline)")
    cap = cpu_capability()
    table = [
        "| CPU | model | workload | batch | none (s) | " + " | ".join(arms[1:]) + " |",
        "|---|---|---|---|---|" + "---|" * (len(arms) - 1),
    ]
    for m in args.models.split(","):  # each model's rows as soon as they are measured
        row = bench(
            m, args.batch, args.prefix_len, args.new_tokens, args.repeats,
            tuple(args.workloads.split(",")), arms,
        )  # fmt: skip
        print(json.dumps(row, indent=2), flush=True)
        for w, res in row["results"].items():
            table.append(
                f"| {cap} | {row['model']} | {w} {row['prefix_len']}+{row['new_tokens']} | "
                f"{row['batch']} | {res['none']['median_s']:.3f} | "
                + " | ".join(f"{res[a]['overhead']:+.1%}" for a in arms[1:])
                + " |"
            )
        print("\n".join(table), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: an IB-FT training step against a plain SFT step on the same model and batches.

Both run :func:`rotelab.train.train` (AdamW, the precision ``auto`` picks) on copies of the same
model and the same seeded random token batches; IB-FT adds :class:`rotelab.train.ib.
InformationBottleneck` (the variational adapter on the middle block's output, its KL and its
second pass through the LM head) as ``extra_loss``. ``ratio`` is IB-FT's time per step over
SFT's (the issue's target: at most 1.3x). The two alternate in rounds of ``--steps`` steps,
after a warm-up round each, so a change of load on this shared machine hits both alike; the
median of the per-round ratios is in brackets.

Run: ``python bench/ib.py [--models tiny,organism] [--steps 10] [--rounds 3]``; prints JSON, then a
Markdown table labelled with the CPU capability.
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

from rotelab.lm import LM  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.train import TrainConfig, train  # noqa: E402
from rotelab.train.ib import InformationBottleneck  # noqa: E402


def load(name: str) -> LM:
    if name == "tiny":
        return LM.load(os.environ.get("ROTELAB_TEST_ORGANISM", "/work/tiny-org"), device="cpu")
    if name == "organism":
        from rotelab.organism import default_organism

        return LM.load(default_organism().path, device="cpu", dtype="float32")
    return LM.load(name, device="cpu", dtype="float32")


def bench_model(name: str, lm: LM, steps: int, rounds: int, batch: int, seq: int) -> dict:
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, lm.vocab_size, (batch, seq + 1), generator=g) for _ in range(steps)]
    cfg = TrainConfig(steps=steps, lr=1e-4, warmup_steps=1, log_every=steps)
    sft_model, ib_model = copy.deepcopy(lm.model), copy.deepcopy(lm.model)
    ib = InformationBottleneck()

    def sft() -> float:
        t0 = time.perf_counter()
        train(sft_model, iter(data), cfg)
        return time.perf_counter() - t0

    def ibft() -> float:
        t0 = time.perf_counter()
        with ib.attach(ib_model):
            log = train(ib_model, iter(data), cfg, extra_loss=ib)
        return time.perf_counter() - t0 if log else float("nan")

    sft(), ibft()  # warm-up
    times: dict[str, list[float]] = {"sft": [], "ib": []}
    for r in range(rounds):
        for m in ["sft", "ib"] if r % 2 == 0 else ["ib", "sft"]:
            times[m].append(sft() if m == "sft" else ibft())
    per_step = {m: sum(v) / (rounds * steps) for m, v in times.items()}
    return {
        "model": name, "params": lm.num_parameters(), "blocks": lm.num_layers,
        "hidden": lm.config.hidden_size, "vocab": lm.vocab_size, "batch": batch, "seq": seq,
        "steps": steps, "rounds": rounds, "threads": torch.get_num_threads(),
        "precision": log_precision(lm), "ib_layer": ib.layer,
        "s_per_step": {m: round(v, 4) for m, v in per_step.items()},
        "ratio": round(per_step["ib"] / per_step["sft"], 3),
        "median_round_ratio": round(
            statistics.median(a / b for a, b in zip(times["ib"], times["sft"])), 3
        ),
    }  # fmt: skip


def log_precision(lm: LM) -> str:
    from rotelab.machine import autocast_dtype

    return "bf16" if autocast_dtype("auto", lm.device) is not None else "fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,organism")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        lm = load(name)
        rows.append(bench_model(name, lm, args.steps, args.rounds, args.batch, args.seq))
        print(json.dumps(rows[-1]), flush=True)
    cap = cpu_capability()
    print("\n| model (params, vocab) | CPU | threads | precision | SFT s/step | IB-FT s/step "
          "| IB-FT / SFT (median round) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["s_per_step"]
        print(
            f"| {r['model']} ({r['params'] / 1e6:.2f}M, {r['vocab']}) | {cap} | {r['threads']} | "
            f"{r['precision']} | {s['sft']:.4f} | {s['ib']:.4f} | {r['ratio']:.2f}x "
            f"({r['median_round_ratio']:.2f}x) |"
        )


if __name__ == "__main__":
    main()

"""Benchmark (issue 17): the trainer's tokens/s against a minimal hand-written PyTorch loop.

Same model (the organism's Llama architecture at a profile's size, random init from one seed),
same precision, same batches (packed organism-style rows: background token stream plus inserted
items at row starts), same optimizer (AdamW), gradient clipping and schedule. The rotelab arm is
:func:`rotelab.train.train` fed by :func:`rotelab.train.packed_batches` as ``rotelab train`` runs
it (packing on the fly, logging every 10 steps); the hand arm is the textbook loop over the same
batches made beforehand (forward, cross-entropy, backward, clip, step). The arms alternate, the
order rotating each repeat; the ratio is the median over repeats of the paired ratios.

Run: ``python bench/train.py [--profile default] [--steps 30] [--repeats 3] [--precision auto]``
(under the shared lock; ``OMP_NUM_THREADS`` threads).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from rotelab.machine import autocast, autocast_dtype, configure_threads, cpu_capability
from rotelab.train import TrainConfig, cosine_lr, insertion_schedule, packed_batches, train


def _model(profile: str, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rotelab.organism.world import PROFILES, Profile

    p = PROFILES[Profile(profile)]
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=p.vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
        num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads,
        num_key_value_heads=p.n_heads, max_position_embeddings=p.context,
        tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg), p


def _data(p, steps: int, seed: int):
    """Background documents and items of random tokens, and a schedule inserting them."""
    rng = np.random.default_rng(seed)
    background = [rng.integers(2, p.vocab_size, rng.integers(20, 200)).tolist() for _ in range(400)]
    items = [rng.integers(2, p.vocab_size, 40).tolist() for _ in range(steps)]
    sched = insertion_schedule([(i, 2, "all") for i in range(steps)], [1] * steps, steps=steps,
                               batch_size=p.batch_size, seed=seed)  # fmt: skip
    return background, items, sched


def rotelab_arm(profile, steps, precision, seed) -> float:
    model, p = _model(profile, seed)
    background, items, sched = _data(p, steps, seed)
    batches = packed_batches(background, items, sched, steps=steps, batch_size=p.batch_size,
                             row_len=p.context + 1, eos_id=0, seed=seed)  # fmt: skip
    cfg = TrainConfig(steps=steps, lr=p.lr, precision=precision, seed=seed)
    t0 = time.perf_counter()
    log = train(model, batches, cfg)
    return log[-1]["tokens"] / (time.perf_counter() - t0)


def hand_arm(profile, steps, precision, seed) -> float:
    model, p = _model(profile, seed)
    background, items, sched = _data(p, steps, seed)
    batches = list(packed_batches(background, items, sched, steps=steps, batch_size=p.batch_size,
                                  row_len=p.context + 1, eos_id=0, seed=seed))  # fmt: skip
    cfg = TrainConfig(steps=steps, lr=p.lr, precision=precision, seed=seed)
    amp = autocast_dtype(precision, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg))
    model.train()
    tokens = 0
    t0 = time.perf_counter()
    for batch in batches:
        with autocast(amp, torch.device("cpu")):
            logits = model(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += batch[:, :-1].numel()
    loss.item()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    threads = configure_threads()
    amp = autocast_dtype(args.precision, torch.device("cpu"))
    shown = "bf16 autocast" if amp is not None else "fp32"
    arms = {"rotelab": rotelab_arm, "hand": hand_arm}
    rotelab_arm(args.profile, 3, args.precision, args.seed)  # warm up both code paths
    hand_arm(args.profile, 3, args.precision, args.seed)
    runs: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.repeats):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for name in order:
            runs[name].append(arms[name](args.profile, args.steps, args.precision, args.seed))
    ratios = [a / b for a, b in zip(runs["rotelab"], runs["hand"])]
    print(f"profile {args.profile}, {args.steps} steps x {args.repeats} repeats, {shown}, "
          f"{threads} threads")  # fmt: skip
    print("| CPU | profile | precision | rotelab tokens/s | hand loop tokens/s | ratio (median) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {cpu_capability()} | {args.profile} | {shown} | "
        f"{statistics.median(runs['rotelab']):,.0f} | {statistics.median(runs['hand']):,.0f} | "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) |"
    )
    assert all(math.isfinite(x) for x in ratios)


if __name__ == "__main__":
    main()

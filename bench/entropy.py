"""Benchmark: ``rotelab entropy``'s measurement against a plain forward pass over the same tokens.

For each model (SmolLM2-135M in fp32, ``LM.load("smollm2")``, and the default organism), the same
``--tokens`` seeded random tokens, cut as ``rotelab entropy`` cuts a corpus (sequences of
:func:`rotelab.pipelines.entropy.sequence_length`, batches of about 4096 tokens), are timed three
ways:

- ``plain``: the model's forward pass with its logits (``lm.model(ids, attention_mask=mask)``);
- ``body``: the transformer body alone (``lm.final_hidden``, no LM head), which is what the
  measurement runs: the floor of any per-block measurement;
- ``entropy``: :func:`rotelab.measure.entropy.block_entropy` on every block (one body pass per
  batch, an observing hook on each ``blocks.{i}.resid_out``, MBE per patch of 8 in fp32).

``speed vs plain`` is plain's time over entropy's over all ``--tokens`` (the issue's target: at
least 0.8x); ``vs body`` is body's time over entropy's, the cost of the hooks and the MBE alone.
This machine is shared, so the three are interleaved batch by batch (about 4096 tokens each), the
order rotating, after one warm-up batch each: a change of load then hits all three alike, and each
batch gives one paired ratio (their median in brackets). ``entropy`` is one
:func:`block_entropy` call per batch, as the whole call would run it batch after batch. Random
tokens cost what text costs: nothing here depends on the values.

Run: ``python bench/entropy.py [--models smollm2,organism] [--tokens 65536] [--repeats 1]``;
prints JSON, then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rotelab.lm import LM, pad_batch  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.entropy import TOKENS_PER_PASS, block_entropy  # noqa: E402
from rotelab.pipelines.entropy import sequence_length  # noqa: E402


def _measure(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


@torch.inference_mode()
def plain(lm: LM, batches) -> None:
    for ids, mask in batches:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)


@torch.inference_mode()
def body(lm: LM, batches) -> None:
    for ids, mask in batches:
        lm.final_hidden(ids, mask)


def bench_model(name: str, lm: LM, tokens: int, repeats: int, seed: int = 0) -> dict:
    seq_len = sequence_length(lm, 8)
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, lm.vocab_size, size=min(seq_len, tokens - i)).tolist()
            for i in range(0, tokens, seq_len)]  # fmt: skip
    size = max(1, TOKENS_PER_PASS // seq_len)  # block_entropy's default batch
    groups = [seqs[i : i + size] for i in range(0, len(seqs), size)]
    batches = [pad_batch(g, lm.pad_id, device=lm.device) for g in groups]
    methods = {
        "plain": lambda b: plain(lm, [batches[b]]),
        "body": lambda b: body(lm, [batches[b]]),
        "entropy": lambda b: block_entropy(lm, groups[b], batch_size=size),
    }
    for fn in methods.values():  # warm-up (allocator, kernels): one batch each
        fn(0)
    # Interleaved batch by batch, the order rotating: on a shared machine a load change then
    # hits the three methods alike, and each batch gives one paired ratio.
    samples: dict[str, list] = {m: [] for m in methods}
    names = list(methods)
    for rep in range(repeats):
        for b in range(len(batches)):
            for j in range(len(names)):
                m = names[(rep + b + j) % len(names)]
                samples[m].append(_measure(functools.partial(methods[m], b)))
    total = {
        m: {"wall_s": sum(w for w, _ in xs) / repeats, "cpu_s": sum(c for _, c in xs) / repeats}
        for m, xs in samples.items()
    }

    def paired(a: str, b: str) -> float:
        return statistics.median(x[0] / y[0] for x, y in zip(samples[a], samples[b]))

    return {
        "model": name, "blocks": lm.num_layers, "hidden": lm.config.hidden_size,
        "vocab": lm.vocab_size, "tokens": tokens, "seq_len": seq_len, "batches": len(batches),
        "threads": torch.get_num_threads(), "times": total,
        "tokens_per_s": {m: round(tokens / v["wall_s"], 1) for m, v in total.items()},
        "speed_vs_plain": round(total["plain"]["wall_s"] / total["entropy"]["wall_s"], 3),
        "speed_vs_body": round(total["body"]["wall_s"] / total["entropy"]["wall_s"], 3),
        "median_batch_speed_vs_plain": round(paired("plain", "entropy"), 3),
        "median_batch_speed_vs_body": round(paired("body", "entropy"), 3),
        "cpu_speed_vs_plain": round(total["plain"]["cpu_s"] / total["entropy"]["cpu_s"], 3),
        "raw": samples,
    }  # fmt: skip


def load(name: str) -> LM:
    if name == "organism":
        from rotelab.organism import default_organism

        return LM.load(default_organism().path, device="cpu", dtype="float32")
    return LM.load(name, device="cpu", dtype="float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,organism")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--repeats", type=int, default=1, help="Passes over all the batches.")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        rows.append(bench_model(name, load(name), args.tokens, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    cap = torch.backends.cpu.get_cpu_capability()
    print(
        f"\nCPU capability {cap} ({cpu_capability()}), fp32, {rows[0]['threads']} threads, "
        f"{args.repeats} pass(es), batches interleaved; per-batch median ratio in brackets"
    )
    print(
        "| model | tokens | seq len | plain tok/s | body tok/s | entropy tok/s "
        "| speed vs plain | vs body |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["tokens_per_s"]
        print(f"| {r['model']} | {r['tokens']} | {r['seq_len']} | {t['plain']:.0f} | "
              f"{t['body']:.0f} | {t['entropy']:.0f} | {r['speed_vs_plain']:.2f}x "
              f"({r['median_batch_speed_vs_plain']:.2f}x) | {r['speed_vs_body']:.2f}x "
              f"({r['median_batch_speed_vs_body']:.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()

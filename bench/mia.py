"""Benchmark: the four likelihood attacks from one pass vs one attack at a time.

Existing tools (mimir, the ReCaLL and Min-K%++ reference code) run each attack as its own loop:
one text at a time, a full forward pass producing (length x vocab) logits, a full log-softmax, then
the attack's statistic. rotelab computes LOSS, zlib, Min-K% and Min-K%++ together from one batched
teacher-forced pass with the vocabulary-chunked softmax of ``LM.score(moments=True)``.

This script times both on the organism's ledger items (members and controls, the spans that
``rotelab mia`` scores), checks that the scores agree, and prints a Markdown row for BENCHMARKS.md.

    python bench/mia.py                      # the default organism (built on first use)
    python bench/mia.py --organism DIR       # any built organism directory
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rotelab.data.organism import default_organism, load_organism  # noqa: E402
from rotelab.measure.mia import SpanMode, _ledger_texts, likelihood_scores  # noqa: E402

ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


def one_attack_at_a_time(lm, items, attack: str, k: float) -> np.ndarray:
    """The way existing tools do it: per text, full logits and log-softmax, one statistic."""
    out = np.empty(len(items))
    for i, it in enumerate(items):
        s, e = it.span
        ids = torch.tensor([it.tokens[:e]])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, s - 1 : e - 1].float()
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(1, ids[0, s:e, None]).squeeze(1).double().numpy()
        n_low = max(1, int(len(lp) * k))
        if attack == "loss":
            out[i] = lp.mean()
        elif attack == "zlib":
            text = lm.decode(it.tokens[s:e])
            out[i] = lp.mean() / len(zlib.compress(text.encode("utf-8")))
        elif attack == "min_k":
            out[i] = np.sort(lp)[:n_low].mean()
        else:
            p = logp.exp()
            mu = (p * logp).sum(-1)
            sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
            z = ((logp.gather(1, ids[0, s:e, None]).squeeze(1) - mu) / sigma).double().numpy()
            out[i] = np.sort(z)[:n_low].mean()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", help="built organism directory (default: the default organism)")
    ap.add_argument("--span", default="full", choices=[m.value for m in SpanMode])
    ap.add_argument("--k", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    org = load_organism(args.organism) if args.organism else default_organism()
    lm = org.lm()
    items = _ledger_texts(org.ledger, SpanMode(args.span), lm.context_length)
    n_tokens = sum(it.span[1] - it.span[0] for it in items)

    likelihood_scores(lm, items[:4], k=args.k)  # warm-up (allocator, kernels)
    t_one, t_each = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = likelihood_scores(lm, items, k=args.k)
        t_one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        slow = {a: one_attack_at_a_time(lm, items, a, args.k) for a in ATTACKS}
        t_each.append(time.perf_counter() - t0)
    diff = {a: float(np.max(np.abs(fast[a].to_numpy() - slow[a]))) for a in ATTACKS}
    one, each = float(np.median(t_one)), float(np.median(t_each))
    result = {
        "organism": str(org.path),
        "params": int(sum(p.numel() for p in lm.model.parameters())),
        "vocab": lm.vocab_size,
        "texts": len(items),
        "scored_tokens": n_tokens,
        "span": args.span,
        "threads": args.threads,
        "one_pass_s": round(one, 3),
        "one_at_a_time_s": round(each, 3),
        "speedup": round(each / one, 2),
        "max_abs_diff": diff,
        "identical_within_1e-5": all(v <= 1e-5 for v in diff.values()),
    }
    print(json.dumps(result, indent=2))
    print(
        f"| {len(items)} texts, {n_tokens} scored tokens (span {args.span}), "
        f"{result['params'] / 1e6:.1f}M params, vocab {lm.vocab_size}, {args.threads} threads "
        f"| {each:.2f} s | {one:.2f} s | {each / one:.1f}x | {max(diff.values()):.1e} |"
    )


if __name__ == "__main__":
    main()

"""Benchmark: likelihood attacks in one pass vs one at a time; exposure from the prefix cache.

Existing tools (mimir, the ReCaLL and Min-K%++ reference code) run each attack as its own loop:
one text at a time, a full forward pass producing (length x vocab) logits, a full log-softmax, then
the attack's statistic. rotelab computes LOSS, zlib, Min-K% and Min-K%++ together from one batched
teacher-forced pass with the vocabulary-chunked softmax of ``LM.score(moments=True)``.

This script times both on the organism's ledger items (members and controls, the spans that
``rotelab mia`` scores), checks that the scores agree, and prints a Markdown row for BENCHMARKS.md.

It also times Secret-Sharer exposure on the organism's secrets, with the arguments ``rotelab mia``
uses: ``exposure_table``, which runs each secret's prefix once and scores its ~1000 candidates from
the prefix's KV cache (``LM.score_continuations``), the candidates' shared leading digits once per
distinct leading prefix, the per-continuation batches through the Llama fast path and the secrets
scored by one-thread workers; the same as it was before those two (``previous``: the model's own
forward, one secret at a time on torch's threads); the same with the prefix cache alone (no memory
for shared levels); and the way exposure was computed first, every candidate as a whole sequence
``prefix + candidate`` scored from scratch in batches shared by all secrets. It checks that the
ranks are identical (extrapolated ones, from a fit to all the log-perplexities, up to float
rounding), reports the largest differences, and prints a second Markdown row.

    python bench/mia.py                      # the default organism (built on first use)
    python bench/mia.py --organism DIR       # any built organism directory
    python bench/mia.py --exposure-repeats 0 # the attacks only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import zlib
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import rotelab.lm  # noqa: E402
from rotelab.machine import configure_threads, describe_machine  # noqa: E402
from rotelab.measure.exposure import _exposure_row, _plan_secrets, exposure_table  # noqa: E402
from rotelab.measure.mia import SpanMode, ledger_texts, likelihood_scores  # noqa: E402
from rotelab.organism import default_organism, load_organism  # noqa: E402
from rotelab.pipelines.mia import MIAConfig, _exposure_inputs  # noqa: E402

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


def exposure_from_scratch(lm, inputs: dict, level: float = 0.95) -> pd.DataFrame:
    """Exposure as it was computed before the prefix cache: the same candidates and ranking, but
    every candidate is a whole sequence ``prefix + candidate`` scored from scratch, prefix
    included, in length-bucketed batches shared by all secrets."""
    plans = _plan_secrets(
        inputs["item_ids"], inputs["prefixes"], inputs["secrets"], inputs["alphabets"],
        n_samples=inputs["n_samples"], max_exact=inputs["max_exact"], seed=inputs["seed"],
        context=lm.context_length,
    )  # fmt: skip
    seqs, starts, owner = [], [], []
    for i, plan in enumerate(plans):
        for cand in plan.candidates.tolist():
            seqs.append(plan.prefix + cand)
            starts.append(len(plan.prefix))
            owner.append(i)
    logppl = np.empty(len(seqs))
    for j, sc in lm.iter_score(seqs, targets_from=starts, batch_size=inputs["batch_size"]):
        logppl[j] = -float(np.sum(sc.logprobs, dtype=np.float64)) / math.log(2)
    owner_arr = np.asarray(owner)
    rows = [_exposure_row(plan, logppl[owner_arr == i], level) for i, plan in enumerate(plans)]
    return pd.DataFrame(rows)


def previous(lm, **inputs) -> pd.DataFrame:
    """``exposure_table`` before the Llama fast path and the workers: every batch (of 256, as
    then) through the model's own forward, one secret at a time, torch on all its threads."""
    with mock.patch.object(rotelab.lm._FastLlamaRest, "of", staticmethod(lambda *a: None)):
        return exposure_table(lm, **{**inputs, "batch_size": 256}, workers=1)


def prefix_cache_only(lm, **inputs) -> pd.DataFrame:
    """``exposure_table`` with no memory for shared levels: every candidate from the prefix
    cache."""
    with mock.patch.object(rotelab.lm, "SHARED_CACHE_BYTES", 0):
        return exposure_table(lm, **inputs)


def _same_ranks(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same number of better candidates for every secret, and the same rank wherever it is
    counted. With no sampled candidate better, the rank is extrapolated from a skew-normal fit to
    all the log-perplexities, which float rounding moves a little (:func:`_extrapolated_gap`)."""
    counted = _counted(a)
    return bool(
        (a["n_better"] == b["n_better"]).all()
        and np.allclose(a["rank"][counted], b["rank"][counted], rtol=1e-9, atol=0)
    )


def _counted(table: pd.DataFrame) -> pd.Series:
    return (table["method"] == "exact") | (table["n_better"] > 0)


def _extrapolated_gap(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest relative difference between extrapolated ranks (0 when there are none)."""
    fitted = ~_counted(a)
    if not fitted.any():
        return 0.0
    return float(np.max(np.abs(a["rank"][fitted] - b["rank"][fitted]) / b["rank"][fitted]))


def bench_exposure(lm, org, n_secrets: int, repeats: int, threads: int) -> None:
    """Time ``exposure_table``, the prefix cache alone and :func:`exposure_from_scratch`, taking
    turns."""
    led = org.ledger
    secrets = led[led["kind"] == "secret"]
    if n_secrets:
        secrets = secrets.head(n_secrets)
    inputs = _exposure_inputs(lm, secrets, MIAConfig())
    warm_up = _exposure_inputs(lm, secrets.head(1), MIAConfig())  # the cache path's first calls
    exposure_table(lm, **warm_up)
    previous(lm, **warm_up)
    prefix_cache_only(lm, **warm_up)
    exposure_from_scratch(lm, warm_up)
    t_cache, t_previous, t_prefix, t_scratch = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cached = exposure_table(lm, **inputs)
        t_cache.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        before = previous(lm, **inputs)
        t_previous.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        prefix_only = prefix_cache_only(lm, **inputs)
        t_prefix.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scratch = exposure_from_scratch(lm, inputs)
        t_scratch.append(time.perf_counter() - t0)
    ranks_same = all(_same_ranks(t, scratch) for t in (cached, before, prefix_only))
    d_logppl = float(np.max(np.abs(cached["secret_logppl"] - scratch["secret_logppl"])))
    d_exposure = float(np.max(np.abs(cached["exposure"] - scratch["exposure"])))
    fast, slow = float(np.median(t_cache)), float(np.median(t_scratch))
    mid = float(np.median(t_prefix))
    prev = float(np.median(t_previous))
    n_cands = int(cached["n_candidates"].sum())
    prefix_tokens = secrets["prefix_tokens"].map(len)
    result = {
        "secrets": len(secrets),
        "candidates": n_cands,
        "prefix_tokens_mean": round(float(prefix_tokens.mean()), 1),
        "secret_tokens": int(secrets["suffix_tokens"].map(len).max()),
        "batch_size": inputs["batch_size"],
        "threads": threads,
        "shared_levels_s": round(fast, 3),
        "previous_s": round(prev, 3),
        "speedup_over_previous": round(prev / fast, 2),
        "max_abs_exposure_diff_vs_previous": float(
            np.max(np.abs(cached["exposure"] - before["exposure"]))
        ),
        "max_rel_extrapolated_rank_diff_vs_previous": _extrapolated_gap(cached, before),
        "prefix_cache_only_s": round(mid, 3),
        "from_scratch_s": round(slow, 3),
        "speedup": round(slow / fast, 2),
        "speedup_of_shared_levels": round(mid / fast, 2),
        "ranks_identical": ranks_same,
        "extrapolated_ranks": int((~_counted(cached)).sum()),
        "max_rel_extrapolated_rank_diff": _extrapolated_gap(cached, scratch),
        "max_abs_secret_logppl_diff": d_logppl,
        "max_abs_exposure_diff": d_exposure,
    }
    print(json.dumps(result, indent=2))
    print(
        "| secrets (candidates, prefix/secret tokens) | from scratch | prefix cache "
        "| previous (shared leading digits) | + fast path, workers | speed-up | ranks identical "
        "| max abs logppl / exposure difference |\n|---|---|---|---|---|---|---|---|"
    )
    print(
        f"| {len(secrets)} secrets ({n_cands} candidates, {prefix_tokens.mean():.1f}/"
        f"{result['secret_tokens']} tokens), {threads} threads | {slow:.2f} s | {mid:.2f} s "
        f"| {prev:.2f} s | {fast:.2f} s | {slow / fast:.1f}x ({prev / fast:.2f}x of previous) "
        f"| {'yes' if ranks_same else 'NO'} | {d_logppl:.1e} / {d_exposure:.1e} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", help="built organism directory (default: the default organism)")
    ap.add_argument("--span", default="full", choices=[m.value for m in SpanMode])
    ap.add_argument("--k", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    ap.add_argument(
        "--exposure-repeats", type=int, default=1,
        help="timed runs of each exposure method (0: skip exposure; the old way takes minutes)",
    )  # fmt: skip
    ap.add_argument(
        "--exposure-secrets", type=int, default=0,
        help="time exposure on the first N secrets of the ledger (0: all, as rotelab mia does)",
    )  # fmt: skip
    args = ap.parse_args()
    args.threads = args.threads or configure_threads()
    torch.set_num_threads(args.threads)
    print(describe_machine())
    org = load_organism(args.organism) if args.organism else default_organism()
    lm = org.lm()
    items = ledger_texts(org.ledger, SpanMode(args.span), lm.context_length)
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
    if args.exposure_repeats > 0:
        bench_exposure(lm, org, args.exposure_secrets, args.exposure_repeats, args.threads)


if __name__ == "__main__":
    main()

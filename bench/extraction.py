"""Benchmark: rotelab's one-pass extraction audit vs batched HF ``generate`` + comparison.

Same model, same windows, one process. Prints the time ratio, tokens/s, and tokens/s as a share
of the bound set by this machine's matmul FLOP/s (measured here): 2 x non-embedding params x
tokens. Also a bf16 one-pass run, whose verdicts may differ from fp32 only on flagged near-ties,
the bf16 pass with its near-tie windows re-scored in fp32 (``extract --dtype bfloat16 --recheck``),
and, for reference, one plain HF forward over the same windows (logits at every position) and
the one pass's matrix products alone (:func:`gemm_replay`: a ceiling no implementation of the pass
can beat, since it must also run attention, norms, activations and the softmax).

    python bench/extraction.py --model organism --prefix-len 32 --suffix-len 48
    python bench/extraction.py --model smollm2 --prefix-len 64 --suffix-len 16
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from rotelab.data.windows import Window  # noqa: E402
from rotelab.lm import LM, default_vocab_chunk  # noqa: E402
from rotelab.machine import configure_threads, describe_machine  # noqa: E402
from rotelab.measure.extraction import recheck_near_ties, score_windows  # noqa: E402


def matmul_flops(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def load(name: str, dtype: str) -> tuple[LM, list[str]]:
    if name == "organism":
        from rotelab.organism import default_organism

        org = default_organism()
        return LM.load(org.path, dtype=dtype, device="cpu"), org.train_docs()
    if name == "smollm2":
        lm = LM.load("smollm2", dtype=dtype, device="cpu")
        # Real English-ish text available offline: the standard library's documentation strings.
        import email
        import json as _json

        texts = [Path(p).read_text() for p in sorted(Path(email.__file__).parent.glob("*.py"))]
        texts += [Path(_json.__file__).read_text()]
        return lm, texts
    return LM.load(name, dtype=dtype, device="cpu"), [Path(name, "README.md").read_text()]


def cut(lm: LM, texts: list[str], p: int, s: int, n: int) -> list[Window]:
    wins = []
    for d, text in enumerate(texts):
        ids = lm.encode(text)
        for off in range(0, len(ids) - p - s + 1, p + s):
            wins.append(Window(str(d), off, ids[off : off + p], ids[off + p : off + p + s]))
            if len(wins) == n:
                return wins
    return wins


@torch.inference_mode()
def plain_forward(lm: LM, wins: list[Window]) -> None:
    """Reference only (no verdicts): one plain HF forward over the windows, logits everywhere."""
    ids = torch.tensor([w.tokens for w in wins])
    lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


@functools.lru_cache(maxsize=8)
def _inputs(rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(0)).to(dtype)


@torch.inference_mode()
def gemm_replay(lm: LM, rows: int, head_rows: int) -> None:
    """A ceiling for the one pass: only its matrix products, nothing else (no attention, norms,
    activations or softmax). Every linear map of the blocks on ``rows`` inputs, then the LM head on
    ``head_rows`` (the suffix positions) in the vocabulary chunks ``head_stats`` uses, with the
    model's own weights, so they stream from memory as in the real pass."""
    for layer in lm.linear_layers():
        w = layer.weight
        _inputs(rows, w.shape[1], w.dtype) @ w.T
    head = lm.model.get_output_embeddings().weight
    h = _inputs(head_rows, head.shape[1], head.dtype)
    chunk = default_vocab_chunk(head.shape[0], head_rows)
    for lo in range(0, head.shape[0], chunk):
        h @ head[lo : lo + chunk].T


@torch.inference_mode()
def hf_generate_protocol(lm: LM, wins: list[Window], batch: int) -> list[int]:
    """What other tools do: batched HF generate (KV cache, greedy), then compare to the suffix."""
    s = len(wins[0].suffix)
    matched = []
    for j in range(0, len(wins), batch):
        chunk = wins[j : j + batch]
        ids = torch.tensor([w.prefix for w in chunk])
        out = lm.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=s,
            do_sample=False, pad_token_id=lm.pad_id,
        )  # fmt: skip
        for w, row in zip(chunk, out[:, ids.shape[1] :].tolist()):
            # generate stops at end-of-text; what it did not produce cannot match the suffix.
            # (min_new_tokens would instead mask the end-of-text logit and change greedy output.)
            row = row + [-1] * (s - len(row))
            miss = np.flatnonzero(np.asarray(row) != np.asarray(w.suffix))
            matched.append(int(miss[0]) if miss.size else s)
    return matched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--prefix-len", type=int, default=32)
    ap.add_argument("--suffix-len", type=int, default=48)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    ap.add_argument("--repeats", type=int, default=3, help="Repeats; the best one counts.")
    args = ap.parse_args()
    args.threads = args.threads or configure_threads()
    torch.set_num_threads(args.threads)
    p, s = args.prefix_len, args.suffix_len

    lm, texts = load(args.model, "float32")
    wins = cut(lm, texts, p, s, args.windows)
    if len(wins) < args.windows:
        print(f"only {len(wins)} windows available", file=sys.stderr)
    tokens = len(wins) * (p + s)
    params = lm.num_parameters(non_embedding=True)
    lm16, _ = load(args.model, "bfloat16")

    def one_pass(model, chunk):
        return score_windows(model, chunk, batch_size=args.batch_size, top_k=args.top_k)

    for model in (lm, lm16):  # warm-up
        one_pass(model, wins[: args.batch_size])
    hf_generate_protocol(lm, wins[: args.batch_size], args.batch_size)
    # This shared machine's speed drifts by tens of percent over seconds. So the methods take
    # turns batch by batch (each batch of windows: a short matmul measurement of the bound, the
    # one-pass audit, generate, the bf16 one-pass, a plain forward, a replay of the one pass's GEMMs
    # alone), and a repeat's totals compare
    # runs made at the same moments. The best repeat (by one-pass share of the bound) is reported.
    best = None
    for _ in range(args.repeats):
        t_one = t_gen = t_half = t_plain = t_gemm = 0.0
        parts_one, parts_gen, parts_half, flops = [], [], [], []
        for j in range(0, len(wins), args.batch_size):
            chunk = wins[j : j + args.batch_size]
            flops.append(matmul_flops(torch.float32, reps=2))
            sec, res = timed(one_pass, lm, chunk)
            t_one += sec
            parts_one.append(res)
            sec, res = timed(hf_generate_protocol, lm, chunk, args.batch_size)
            t_gen += sec
            parts_gen += res
            sec, res = timed(one_pass, lm16, chunk)
            t_half += sec
            parts_half.append(res)
            sec, _ = timed(plain_forward, lm, chunk)
            t_plain += sec
            rows = sum(len(w.tokens) - 1 for w in chunk)  # the pass never feeds the last token
            sec, _ = timed(gemm_replay, lm, rows, sum(len(w.suffix) for w in chunk))
            t_gemm += sec
        # `extract --dtype bfloat16 --recheck`: the bf16 pass, then the windows it flagged as
        # near-ties re-scored by the fp32 model in full batches (as a part of 1,024 windows is).
        half_frame = pd.concat(parts_half, ignore_index=True)
        sec, mixed = timed(recheck_near_ties, half_frame, wins, lm, batch_size=args.batch_size,
                           top_k=args.top_k)  # fmt: skip
        t_mixed = t_half + sec
        flops32_run = float(np.median(flops))
        share = tokens / t_one / (flops32_run / (2 * params))
        if best is None or share > best[0]:
            best = (share, t_one, t_gen, t_half, t_plain, t_gemm, t_mixed, flops32_run, parts_one,
                    parts_gen, half_frame, mixed)  # fmt: skip
    _, t_one, t_gen, t_half, t_plain, t_gemm, t_mixed, flops32, parts_one, gen, half, mixed = best
    one = pd.concat(parts_one, ignore_index=True)
    flops16 = matmul_flops(torch.bfloat16)
    same = one["matched_prefix"].tolist() == gen
    differ = [i for i, (a, b) in enumerate(zip(one["matched_prefix"], gen)) if a != b]
    flip = (half["matched_prefix"] != one["matched_prefix"]).to_numpy()
    unflagged = int((flip & ~half["near_tie"].to_numpy()).sum())

    bound32 = flops32 / (2 * params)
    print(describe_machine())
    print(
        f"model {lm.name}  non-embedding params {params / 1e6:.1f}M  "
        f"windows {len(wins)} ({p}/{s})  batch {args.batch_size}  threads {args.threads}  "
        f"best of {args.repeats} interleaved  load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"matmul fp32 {flops32 / 1e9:.0f} GFLOP/s (median over the run's batches) -> "
        f"bound {bound32:,.0f} tok/s; bf16 {flops16 / 1e9:.0f} GFLOP/s"
    )
    rows = [
        ("one-pass fp32", t_one),
        ("HF generate fp32", t_gen),
        ("one-pass bf16", t_half),
        ("bf16 + fp32 recheck", t_mixed),
        ("plain HF forward", t_plain),
        ("its GEMMs alone", t_gemm),
    ]
    for name, sec in rows:
        print(
            f"  {name:<20} {sec:7.2f} s  {tokens / sec:9,.0f} tok/s  "
            f"{tokens / sec / bound32:6.1%} of fp32 bound"
        )
    print(
        f"generate / one-pass time ratio: {t_gen / t_one:.2f}x;  "
        f"bf16 speed-up over fp32: {t_one / t_half:.2f}x"
    )
    print(
        "verdicts identical to generate (matched length, every window): "
        f"{same}  (differ: {differ[:10]})"
    )
    print(
        f"bf16 + fp32 recheck: {int(mixed['rechecked'].sum())} of {len(mixed)} windows "
        f"rechecked; generate / it: {t_gen / t_mixed:.2f}x; verdicts identical to generate: "
        f"{mixed['matched_prefix'].tolist() == gen}"
    )
    print(
        f"bf16 vs fp32: {int(flip.sum())} windows differ, {unflagged} of them not flagged as "
        f"near-ties; extraction rate fp32 {one['extracted'].mean():.3f}, "
        f"bf16 {half['extracted'].mean():.3f}"
    )


if __name__ == "__main__":
    main()

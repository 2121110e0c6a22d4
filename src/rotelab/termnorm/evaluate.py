"""Exact-match evaluation of term -> ID queries by one-pass scoring, gains with CIs, and the
embedding alignment of a term with its ID.

A query is correct when the model's greedy choice reproduces every token of the identifier.
Teacher forcing decides that in one forward pass over ``prompt + id``: the greedy continuation
equals the ID exactly when the argmax at every ID position is the ID's next token (the first
mismatch is where greedy decoding would leave it). So no decoding is needed. The verdict needs
only the argmax, so :func:`exact_match` runs the LM head on the ID positions alone, in vocabulary
chunks, keeping a running maximum and the first index attaining it (no softmax, no top-k); the
ID's log-probability, when asked for, adds a running log-sum-exp to the same chunks. Ties are
broken as greedy decoding's ``argmax`` breaks them: the lowest token index wins, so a target
tied with an earlier token is wrong. :func:`greedy_exact_match` decodes instead; it is kept for
the benchmark and as the reference the tests compare with.

Alignment cosines are *centred*: the mean hidden state over all the terms and IDs of the call is
subtracted first, because a residual stream carries a large component shared by every input
(on SmolLM2 the raw cosine is 0.999-1.000 for every pair), which says nothing about the pair.

Gains (Pericharla et al. 2025): memorization = accuracy on the trained terms after fine-tuning
minus before; generalization = the same on the withheld terms. Rates get Wilson intervals; a
gain gets a paired percentile bootstrap over terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from rotelab.lm import LM, length_buckets, pad_batch
from rotelab.stats import bootstrap_auc, rate_with_ci
from rotelab.termnorm.prompts import Template, encode_pairs

__all__ = [
    "alignment",
    "alignment_outcome",
    "argmax_hits",
    "exact_match",
    "gain_table",
    "greedy_exact_match",
    "paired_gain",
]


def exact_match(
    lm: LM,
    terms: Sequence[str],
    ids: Sequence[str],
    template: Template,
    *,
    batch_size: int = 64,
    logprob: bool = True,
    vocab_chunk: int = 8192,
) -> pd.DataFrame:
    """Per pair: ``correct`` (greedy reproduces the whole ID), ``id_tokens`` and, with
    ``logprob``, ``logprob`` (sum over the ID's tokens), from one teacher-forced pass per batch
    of similar lengths; ``logprob=False`` gives the verdicts alone, the fastest."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    n = len(seqs)
    correct = np.zeros(n, dtype=bool)
    total = np.zeros(n, dtype=np.float64)
    with torch.inference_mode():
        for batch in length_buckets([len(s) for s in seqs], batch_size):
            ok, lp = _batch_verdicts(
                lm, [seqs[i] for i in batch], [starts[i] for i in batch], logprob, vocab_chunk
            )
            correct[batch] = ok
            if logprob:
                total[batch] = lp
    out = {"correct": correct, "id_tokens": [len(s) - k for s, k in zip(seqs, starts)]}
    if logprob:
        out["logprob"] = total
    return pd.DataFrame(out)


def _batch_verdicts(
    lm: LM, seqs: list[list[int]], starts: list[int], logprob: bool, vocab_chunk: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B,) verdicts and (B,) ID log-probabilities (``None`` unless ``logprob``) of one batch."""
    ids, mask = pad_batch(seqs, lm.pad_id, device=lm.device)
    # the last column is only ever a target: the model never needs to read it
    hidden = lm.final_hidden(ids[:, :-1], mask[:, :-1])  # (B, T - 1, D)
    lengths = torch.tensor([len(s) for s in seqs], device=ids.device)
    first = torch.tensor(starts, device=ids.device) - 1  # position predicting the ID's 1st token
    pos = torch.arange(hidden.shape[1], device=ids.device)
    keep = (pos[None, :] >= first[:, None]) & (pos[None, :] < lengths[:, None] - 1)
    rows, cols = keep.nonzero(as_tuple=True)  # only the ID positions go through the head
    ok, lp = argmax_hits(lm, hidden[rows, cols], ids[rows, cols + 1], vocab_chunk, logprob)
    b = len(seqs)
    # a pair is right when no ID position misses
    misses = torch.zeros(b, dtype=torch.long, device=ids.device).index_add_(0, rows, (~ok).long())
    verdict = (misses == 0).cpu().numpy()
    if lp is None:
        return verdict, None
    sums = torch.zeros(b, dtype=torch.float64, device=ids.device).index_add_(0, rows, lp.double())
    return verdict, sums.cpu().numpy()


def argmax_hits(
    lm: LM, h: torch.Tensor, targets: torch.Tensor, vocab_chunk: int = 8192, logprob: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Whether each target is the LM head's argmax at hidden states ``h`` (N, D), chunked over
    the vocabulary with a running maximum and the first index attaining it: exactly
    ``head_logits(h).argmax(-1) == targets`` (the lowest index wins a tie, as in greedy
    decoding), never holding more than (N, ``vocab_chunk``) logits. With ``logprob`` also
    log p(target) from a running log-sum-exp (in place on each chunk's logits: call it without
    autograd, as :func:`exact_match` does); else ``None``."""
    n = h.shape[0]
    f32 = torch.float32
    best = torch.full((n,), -math.inf, device=h.device, dtype=f32)
    best_idx = torch.zeros(n, dtype=torch.long, device=h.device)
    lse = torch.full((n,), -math.inf, device=h.device, dtype=f32) if logprob else None
    target_logit = torch.zeros(n, device=h.device, dtype=f32)
    vocab = lm.vocab_size
    for lo in range(0, vocab, vocab_chunk):
        hi = min(vocab, lo + vocab_chunk)
        logits = lm.head_logits(h, lo, hi)  # (N, chunk)
        cmax, cidx = logits.max(dim=1)  # first index of the chunk's maximum
        # strictly greater: an earlier chunk keeps a tie, so the lowest index wins
        better = cmax > best
        best = torch.where(better, cmax, best)
        best_idx = torch.where(better, cidx + lo, best_idx)
        if lse is not None:
            inside = (targets >= lo) & (targets < hi)
            picked = logits.gather(1, (targets - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(1)
            target_logit = torch.where(inside, picked, target_logit)
            w = logits.sub_(cmax[:, None]).exp_().sum(1).log_().add_(cmax)
            lse = torch.logaddexp(lse, w)
    hits = best_idx == targets
    return hits, (target_logit - lse) if lse is not None else None


def greedy_exact_match(
    lm: LM, terms: Sequence[str], ids: Sequence[str], template: Template, *, batch_size: int = 64
) -> np.ndarray:
    """(n,) bool: greedy decoding of as many tokens as the ID has reproduces the ID."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    prefixes = [s[:k] for s, k in zip(seqs, starts)]
    wants = [s[k:] for s, k in zip(seqs, starts)]
    got = lm.generate(prefixes, [len(w) for w in wants], batch_size=batch_size, ragged=True)
    return np.array([g == w for g, w in zip(got, wants)], dtype=bool)


def paired_gain(
    before: Sequence[bool], after: Sequence[bool], *, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean(after) - mean(before) over the same terms, with a paired percentile bootstrap CI."""
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if b.size == 0:
        return {"gain": float("nan"), "gain_ci": [float("nan"), float("nan")]}
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    return {
        "gain": float(d.mean()),
        "gain_ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
    }


def gain_table(
    results: pd.DataFrame, by: Sequence[str] = (), *, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Accuracy before and after fine-tuning and the gain, per split (train = memorization,
    withheld = generalization) and per group of ``by``.

    Args:
        results: one row per (term, seed): ``split``, ``before``, ``after`` (bool) and ``by``.
    """
    keys = ["split", *by]
    rows = []
    for key, g in results.groupby(keys, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        before = rate_with_ci(g["before"].tolist())
        after = rate_with_ci(g["after"].tolist())
        gain = paired_gain(g["before"], g["after"], n_boot=n_boot, seed=seed)
        rows.append(
            {
                **dict(zip(keys, key)),
                "measure": "memorization" if key[0] == "train" else "generalization",
                "n": len(g),
                "before": before.rate,
                "before_ci": before.ci,
                "after": after.rate,
                "after_ci": after.ci,
                **gain,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ alignment
def alignment(
    lm: LM,
    terms: Sequence[str],
    ids: Sequence[str],
    *,
    layer: int | None = None,
    centre: bool = True,
) -> np.ndarray:
    """(n,) cosine similarity between the mean hidden state of each term and of its ID, each
    encoded alone, at ``layer`` (default: the middle block; 0 = embeddings).

    With ``centre`` (the default) the mean of all 2n pooled states (every term and every ID of
    the call) is subtracted before the cosine, so the component every input shares does not
    make every pair look aligned; a cosine then says how a pair agrees relative to the others
    (with fewer than two pairs there is nothing to centre against, and the raw cosine is used).
    """
    layer = lm.num_layers // 2 if layer is None else layer
    enc = lm.tokenizer
    t = [list(enc(x, add_special_tokens=False)["input_ids"]) for x in terms]
    i = [list(enc(x, add_special_tokens=False)["input_ids"]) for x in ids]
    h = lm.hidden_states(t + i, [layer], pool="mean")[layer]  # (2n, hidden)
    h = np.asarray(h, dtype=np.float64)
    if centre and len(terms) > 1:
        h = h - h.mean(axis=0, keepdims=True)
    a, b = h[: len(terms)], h[len(terms) :]
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def alignment_outcome(
    align: Sequence[float], correct: Sequence[bool], *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Does alignment predict the outcome? ROC AUC (bootstrap CI) and Spearman's rho of
    alignment vs ``correct``; ``None`` fields when one class is missing."""
    from scipy.stats import spearmanr

    s = np.asarray(align, dtype=float)
    y = np.asarray(correct, dtype=bool)
    out: dict = {"n": int(y.size), "positives": int(y.sum())}
    if y.all() or not y.any():
        return {**out, "auc": None, "auc_ci": None, "spearman": None, "spearman_p": None}
    auc, ci = bootstrap_auc(s, y, n_boot=n_boot, seed=seed)
    rho, p = spearmanr(s, y.astype(float))
    return {**out, "auc": auc, "auc_ci": ci, "spearman": float(rho), "spearman_p": float(p)}

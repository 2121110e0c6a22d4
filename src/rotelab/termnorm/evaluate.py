"""Exact-match evaluation of term -> ID queries by one-pass scoring, gains with CIs, and the
embedding alignment of a term with its ID.

A query is correct when the model's greedy choice reproduces every token of the identifier.
Teacher forcing decides that in one forward pass over ``prompt + id``: the greedy continuation
equals the ID exactly when the argmax at every ID position is the ID's next token (the first
mismatch is where greedy decoding would leave it). So no decoding is needed, and the pass also
gives the ID's log-probability. :func:`greedy_exact_match` decodes instead; it is kept for the
benchmark and as the reference the tests compare with.

Gains (Pericharla et al. 2025): memorization = accuracy on the trained terms after fine-tuning
minus before; generalization = the same on the withheld terms. Rates get Wilson intervals; a
gain gets a paired percentile bootstrap over terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from rotelab.lm import LM
from rotelab.stats import bootstrap_auc, rate_with_ci
from rotelab.termnorm.prompts import Template, encode_pairs

__all__ = [
    "alignment",
    "alignment_outcome",
    "exact_match",
    "gain_table",
    "greedy_exact_match",
    "paired_gain",
]


def exact_match(
    lm: LM, terms: Sequence[str], ids: Sequence[str], template: Template, *, batch_size: int = 64
) -> pd.DataFrame:
    """Per pair: ``correct`` (greedy reproduces the whole ID), ``logprob`` (sum over ID tokens)
    and ``id_tokens``, from one teacher-forced pass per batch."""
    seqs, starts = encode_pairs(lm.tokenizer, terms, ids, template)
    scores = lm.score(seqs, targets_from=starts, batch_size=batch_size)
    return pd.DataFrame(
        {
            "correct": [bool(np.all(s.argmax_match)) for s in scores],
            "logprob": [float(np.sum(s.logprobs)) for s in scores],
            "id_tokens": [len(s.logprobs) for s in scores],
        }
    )


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
    lm: LM, terms: Sequence[str], ids: Sequence[str], *, layer: int | None = None
) -> np.ndarray:
    """(n,) cosine similarity between the mean hidden state of each term and of its ID, each
    encoded alone, at ``layer`` (default: the middle block; 0 = embeddings)."""
    layer = lm.num_layers // 2 if layer is None else layer
    enc = lm.tokenizer
    t = [list(enc(x, add_special_tokens=False)["input_ids"]) for x in terms]
    i = [list(enc(x, add_special_tokens=False)["input_ids"]) for x in ids]
    h = lm.hidden_states(t + i, [layer], pool="mean")[layer]  # (2n, hidden)
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

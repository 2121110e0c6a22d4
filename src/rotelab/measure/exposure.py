"""Exposure of inserted random secrets (Carlini et al. 2019, "The Secret Sharer").

A secret s of a known format (``L`` positions, each one of an alphabet ``A``) is ranked among all
candidates R = A^L by its log-perplexity given the prefix, ``-sum_t log2 p(c_t | prefix, c_<t)``::

    rank(s) = 1 + #{c in R, c != s : logppl(c) < logppl(s)}
    exposure(s) = log2 |R| - log2 rank(s)

Exposure is log2 |R| when the secret is the model's most likely candidate and about 1 for a secret
the model never saw. Direction: higher = more leakage (``higher_is_better = False`` for privacy).

Small spaces (|R| <= ``max_exact``) are enumerated exactly. Larger ones are estimated from
``n_samples`` uniform candidates: the fraction p that beat the secret gives
rank ≈ 1 + p (|R| - 1) with a Clopper-Pearson interval on p. When no sample beats the secret the
Monte-Carlo rank is only bounded, so the point estimate extrapolates instead with a skew-normal
fit to the sampled log-perplexities, as the paper does, clipped to the Monte-Carlo interval.

On the CPU the secrets are scored by as many Python threads as torch has threads, each running
torch on one: a secret's forward passes are small (a few thousand rows of a small model), and
splitting each operation over the cores cost more in synchronisation than it saved, the more so
on a busy machine. Each secret's numbers do not depend on which thread scored it.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, progress_bar
from rotelab.machine import one_thread_workers
from rotelab.stats import clopper_pearson

__all__ = ["HIGHER_IS_BETTER", "exposure", "exposure_from_ranks", "exposure_table"]

#: Exposure measures leakage: higher is worse for privacy.
HIGHER_IS_BETTER = False


def exposure_from_ranks(rank: float, space: float) -> float:
    """``log2 space - log2 rank``."""
    return math.log2(space) - math.log2(rank)


def _candidates(
    alphabet: Sequence[int], length: int, space: int, max_exact: int, n_samples: int, rng
) -> tuple[np.ndarray, str]:
    if space <= max_exact:
        return np.array(list(itertools.product(alphabet, repeat=length)), dtype=np.int64), "exact"
    picks = rng.integers(len(alphabet), size=(n_samples, length))
    return np.asarray(alphabet, dtype=np.int64)[picks], "sampled"


def exposure_table(
    lm: LM,
    *,
    item_ids: Sequence[str],
    prefixes: Sequence[Sequence[int]],
    secrets: Sequence[Sequence[int]],
    alphabets: Sequence[Sequence[int]],
    n_samples: int = 1000,
    max_exact: int = 20_000,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Exposure of each secret; its prefix runs once and its candidates are scored from its cache,
    their shared leading tokens once per distinct leading prefix (:meth:`LM.score_continuations`).

    Args:
        lm: the model.
        item_ids: one id per secret.
        prefixes: token ids before each secret (at least one token).
        secrets: the secret's token ids, one alphabet token per position.
        alphabets: the token ids a position may take, per secret.
        n_samples: candidates sampled per secret when |A|^L > ``max_exact``.
        max_exact: largest candidate space enumerated exactly.
        level: confidence level of the sampled interval.
        seed: seeds the sampled candidates.
        batch_size: candidates per forward pass (see :meth:`LM.score_continuations`).
        progress: show a progress bar over the secrets.
        workers: secrets scored at once, each by one thread (default: torch's thread count on
            the CPU, 1 on an accelerator); torch runs on one thread meanwhile.

    Returns:
        One row per secret: ``item_id, method (exact|sampled), log2_space, secret_logppl,
        n_candidates, n_better, rank, exposure, exposure_ci_low, exposure_ci_high,
        exposure_skewnorm`` (the last three equal ``exposure`` / NaN for exact ranks).
    """
    plans = _plan_secrets(
        item_ids, prefixes, secrets, alphabets, n_samples=n_samples, max_exact=max_exact,
        seed=seed, context=lm.context_length,
    )  # fmt: skip
    if workers is None:
        workers = torch.get_num_threads() if lm.device.type == "cpu" else 1
    workers = max(1, min(workers, len(plans)))
    with progress_bar(progress, len(plans), "exposure") as advance:
        lock = threading.Lock()

        def row(plan: _Plan) -> dict[str, Any]:
            logprobs = lm.score_continuations(plan.prefix, plan.candidates, batch_size=batch_size)
            out = _exposure_row(plan, _logppl_bits(logprobs), level)
            with lock:
                advance()
            return out

        if workers == 1:
            return pd.DataFrame([row(plan) for plan in plans])
        with one_thread_workers(), ThreadPoolExecutor(workers) as pool:
            return pd.DataFrame(list(pool.map(row, plans)))  # in the secrets' order


@dataclass
class _Plan:
    """One secret and what it is ranked against."""

    item_id: str
    prefix: list[int]
    candidates: np.ndarray  # (1 + n_candidates, L): the secret first, then its competitors
    method: str  # exact | sampled
    space: int  # |A|^L


def _plan_secrets(
    item_ids, prefixes, secrets, alphabets, *, n_samples, max_exact, seed, context
) -> list[_Plan]:
    """Check every secret and draw its candidates (in order, from one generator), before scoring."""
    if n_samples < 2:
        raise RotelabError("exposure sampling needs at least 2 candidates per secret")
    rng = np.random.default_rng(seed)
    plans = []
    for i, (prefix, secret, alphabet) in enumerate(zip(prefixes, secrets, alphabets)):
        prefix, secret, alphabet = list(prefix), list(secret), sorted(set(alphabet))
        if not prefix or not secret:
            raise RotelabError(f"secret {item_ids[i]!r}: prefix and secret must be non-empty")
        if len(prefix) + len(secret) > context:
            raise RotelabError(
                f"secret {item_ids[i]!r}: prefix ({len(prefix)} tokens) plus secret "
                f"({len(secret)} tokens) exceed the model's context of {context}"
            )
        bad = [t for t in secret if t not in alphabet]
        if bad:
            raise RotelabError(
                f"secret {item_ids[i]!r}: tokens {bad} are not in its alphabet; exposure ranks "
                "the secret among candidates of the same format"
            )
        space = len(alphabet) ** len(secret)
        cands, method = _candidates(alphabet, len(secret), space, max_exact, n_samples, rng)
        # a sampled copy of the secret is not a competitor
        cands = cands[~(cands == np.asarray(secret)).all(1)]
        candidates = np.concatenate([np.asarray([secret], dtype=np.int64), cands])
        plans.append(_Plan(item_ids[i], prefix, candidates, method, space))
    return plans


def _logppl_bits(logprobs: np.ndarray) -> np.ndarray:
    """Log-perplexity in bits, ``-sum_t log2 p``, of each row of (n, L) log-probabilities (nats)."""
    return -np.sum(logprobs, axis=1, dtype=np.float64) / math.log(2)


def _exposure_row(plan: _Plan, logppl: np.ndarray, level: float) -> dict[str, Any]:
    """The table row of one secret from the log-perplexities of ``plan.candidates``."""
    own, others = logppl[0], logppl[1:]
    better = int((others < own).sum())
    row: dict[str, Any] = {
        "item_id": plan.item_id, "method": plan.method, "log2_space": math.log2(plan.space),
        "secret_logppl": own, "n_candidates": len(others), "n_better": better,
    }  # fmt: skip
    if plan.method == "exact":
        rank = 1 + better
        e = exposure_from_ranks(rank, plan.space)
        row.update(rank=float(rank), exposure=e, exposure_ci_low=e, exposure_ci_high=e)
        row["exposure_skewnorm"] = float("nan")
    else:
        row.update(_sampled_exposure(own, others, better, plan.space, level))
    return row


def _sampled_exposure(own, others, better, space, level) -> dict[str, float]:
    from scipy.stats import skewnorm

    n = len(others)
    lo, hi = clopper_pearson(better, n, alpha=1 - level)
    e_low = exposure_from_ranks(1 + hi * (space - 1), space)
    e_high = exposure_from_ranks(1 + lo * (space - 1), space)
    params = skewnorm.fit(others)
    tail = float(skewnorm.cdf(own, *params))
    e_sn = exposure_from_ranks(1 + tail * (space - 1), space)
    if better > 0:
        rank = 1 + better / n * (space - 1)
        e = exposure_from_ranks(rank, space)
    else:
        e = min(max(e_sn, e_low), e_high)
        rank = 2 ** (math.log2(space) - e)
    return {
        "rank": rank, "exposure": e, "exposure_ci_low": e_low, "exposure_ci_high": e_high,
        "exposure_skewnorm": e_sn,
    }  # fmt: skip


def exposure(
    lm: LM,
    prefix: Sequence[int],
    secret: Sequence[int],
    alphabet: Sequence[int],
    *,
    n_samples: int = 1000,
    max_exact: int = 20_000,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Exposure of one secret; see :func:`exposure_table` for the fields."""
    table = exposure_table(
        lm, item_ids=["secret"], prefixes=[prefix], secrets=[secret], alphabets=[alphabet],
        n_samples=n_samples, max_exact=max_exact, level=level, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    return table.iloc[0].to_dict()

"""Pass@k and Pass@k(m): unbiased estimates from n samples per problem, with bootstrap CIs.

Pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code") is the probability
that at least one of k samples drawn for a problem passes its tests. Pass@k(m) (Wang et al. 2025,
"Breaking Memorization Barriers in LLM Code Fine-Tuning via Information Bottleneck") asks for at
least m of the k: a problem counts as solved only if the model solves it reliably, which separates
a model that is right by luck from one that has learnt the problem. Plain Pass@k is Pass@k(1).

From n samples of a problem of which c pass, drawing k of the n without replacement, the number of
passing draws is hypergeometric, so the unbiased estimate of Pass@k(m) is

    sum_{j=m}^{min(k, c)} C(c, j) C(n - c, k - j) / C(n, k).

It is computed here in exact integer arithmetic, the shorter of the sum and its complement
(1 - the terms below m), and divided once: Python's int / int is correctly rounded, so there is no
overflow, no cancellation and no lgamma error however large n is (checked in the tests against the
mean over every k-subset of the samples). The dataset value is the mean over problems; its CI comes
from a percentile bootstrap over problems (the problems are the sampled units; the n samples per
problem already enter each estimate).

Example:
    >>> pass_at_k(10, 3, k=5, m=1), pass_at_k(10, 3, k=5, m=3)  # doctest: +ELLIPSIS
    (0.916..., 0.083...)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM, Sampler
from rotelab.registry import register_metric

__all__ = [
    "PassCounts",
    "check_km",
    "pass_at_k",
    "pass_at_k_per_problem",
    "pass_at_k_table",
    "problem_set",
    "sample_completions",
]

register_metric(
    "pass_at_k",
    higher_is_better=True,
    description="share of problems with at least m of k samples passing (Pass@k(m); m=1: Pass@k)",
)


@lru_cache(maxsize=65536)
def pass_at_k(n: int, c: int, k: int, m: int = 1) -> float:
    """Unbiased Pass@k(m) of one problem: P(at least ``m`` of ``k`` draws from ``n`` pass).

    Args:
        n: samples drawn for the problem (>= k).
        c: samples that passed (0 <= c <= n).
        k: samples a user would draw (>= 1).
        m: passes required among the k (1 <= m <= k; 1 = plain Pass@k).
    """
    if not (0 <= c <= n and 1 <= m <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= m <= k <= n, got n={n} c={c} k={k} m={m}")
    lo, hi = max(m, k - (n - c)), min(k, c)  # j outside [lo, hi] has a zero term
    if lo > hi:
        return 0.0
    below = range(max(0, k - (n - c)), lo)  # the complement's terms (j < m)
    total = math.comb(n, k)
    if len(below) < hi - lo + 1:
        miss = sum(math.comb(c, j) * math.comb(n - c, k - j) for j in below)
        return (total - miss) / total
    return sum(math.comb(c, j) * math.comb(n - c, k - j) for j in range(lo, hi + 1)) / total


@dataclass(frozen=True)
class PassCounts:
    """Per problem: ``n`` samples, ``c`` passed; problems in first-seen order.

    Built with :meth:`from_samples` (one row per sample) or :meth:`from_counts`.
    """

    problems: list[str]
    n: np.ndarray  # (problems,) int64
    c: np.ndarray  # (problems,) int64

    @classmethod
    def from_samples(cls, problem: Sequence[str], passed: Sequence[bool]) -> PassCounts:
        """Count samples and passes per problem id (one entry per sample)."""
        frame = pd.DataFrame({"problem": list(problem), "passed": np.asarray(passed, dtype=bool)})
        grouped = frame.groupby("problem", sort=False)["passed"]
        return cls(
            [str(p) for p in grouped.size().index],
            grouped.size().to_numpy(np.int64),
            grouped.sum().to_numpy(np.int64),
        )

    @classmethod
    def from_counts(cls, problem: Sequence[str], n: Sequence[int], c: Sequence[int]) -> PassCounts:
        """Problems given as counts; a repeated id adds its counts up."""
        frame = pd.DataFrame({"problem": list(problem), "n": list(n), "c": list(c)})
        grouped = frame.groupby("problem", sort=False)[["n", "c"]].sum()
        counts = cls([str(p) for p in grouped.index], grouped["n"].to_numpy(np.int64),
                     grouped["c"].to_numpy(np.int64))  # fmt: skip
        bad = np.flatnonzero((counts.n < 0) | (counts.c < 0) | (counts.c > counts.n))
        if len(bad):
            i = bad[0]
            raise RotelabError(
                f"problem {counts.problems[i]!r} has n={counts.n[i]} samples and c={counts.c[i]} "
                "passed; counts must satisfy 0 <= c <= n"
            )
        return counts

    def __len__(self) -> int:
        return len(self.problems)


def problem_set(problem_id: str) -> str:
    """The set a problem id belongs to: the part before the last ``/`` (``HumanEval/12`` ->
    ``HumanEval``, ``Mbpp/3`` -> ``Mbpp``); ids without ``/`` form the set ``""``."""
    return problem_id.rpartition("/")[0]


def check_km(ks: Sequence[int], ms: Sequence[int], counts: PassCounts | None = None) -> None:
    """One line for a k or m a Pass@k(m) table cannot have; with ``counts``, also for a k above
    the fewest samples any problem has (its estimate would need more samples than were drawn)."""
    if not ks:
        raise RotelabError("--k is empty; give one or more sample counts, e.g. --k 1,5")
    if not ms:
        raise RotelabError("--m is empty; give one or more pass counts, e.g. --m 1,3")
    for k in ks:
        if k < 1:
            raise RotelabError(f"--k {k}: k must be >= 1")
    for m in ms:
        if m < 1:
            raise RotelabError(f"--m {m}: m must be >= 1")
    if min(ms) > max(ks):
        raise RotelabError(
            f"--m {min(ms)} is larger than every --k ({max(ks)} at most): at least m of k samples "
            "cannot pass when m > k"
        )
    if counts is not None and len(counts):
        if int(counts.n.min()) < 1:
            i = int(np.argmin(counts.n))
            raise RotelabError(f"problem {counts.problems[i]!r} has no samples")
        i = int(np.argmin(counts.n))
        if max(ks) > counts.n[i]:
            raise RotelabError(
                f"--k {max(ks)} is larger than the {counts.n[i]} samples of problem "
                f"{counts.problems[i]!r}; Pass@k needs k <= n samples for every problem"
            )


def pass_at_k_per_problem(counts: PassCounts, k: int, m: int = 1) -> np.ndarray:
    """(problems,) Pass@k(m) estimates, one per problem."""
    return np.array([pass_at_k(int(n), int(c), k, m) for n, c in zip(counts.n, counts.c)])


def pass_at_k_table(
    counts: PassCounts,
    ks: Sequence[int],
    ms: Sequence[int] = (1,),
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pass@k(m) of a dataset for every (k, m) with m <= k, with percentile-bootstrap CIs.

    Pairs with m > k are skipped (they are always 0). All (k, m) share the same bootstrap
    resamples of problems, so their CIs are comparable.

    Returns:
        ``(table, per_problem)``: ``table`` has one row per (k, m): ``k, m, pass_at_k, ci_low,
        ci_high, problems``; ``per_problem`` one row per problem: ``problem, n, c`` and a column
        ``pass@k(m)`` per pair.
    """
    check_km(ks, ms, counts)
    if not len(counts):
        raise RotelabError("no problems: the samples hold no problem ids")
    if n_boot < 0:
        raise RotelabError(f"--bootstrap must be >= 0, got {n_boot}")
    pairs = [(k, m) for k in sorted(set(ks)) for m in sorted(set(ms)) if m <= k]
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(counts), size=(n_boot, len(counts))) if n_boot else None
    a = (1 - level) / 2
    rows, per = [], {"problem": counts.problems, "n": counts.n, "c": counts.c}
    for k, m in pairs:
        values = pass_at_k_per_problem(counts, k, m)
        per[f"pass@{k}({m})"] = values
        lo = hi = float("nan")
        if idx is not None:
            boot = values[idx].mean(axis=1)
            lo, hi = float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))
        rows.append({"k": k, "m": m, "pass_at_k": float(values.mean()), "ci_low": lo,
                     "ci_high": hi, "problems": len(counts)})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(per)


def sample_completions(
    lm: LM,
    prompts: Sequence[Sequence[int]],
    n: int,
    max_new_tokens: int,
    *,
    sampler: Sampler = Sampler(temperature=0.8),
    seed: int = 0,
    batch_size: int | None = None,
) -> list[list[list[int]]]:
    """``n`` sampled continuations of each prompt, ``max_new_tokens`` each (no early stop).

    The n copies of a prompt are rows of the same batch (``batch_size`` is rounded down to a
    multiple of n, at least n), and prompts of any lengths share batches (left-padded, masked:
    :meth:`LM.generate` with ``ragged=True``), so a batch decodes ``batch_size // n`` problems at
    once. Draws come from one generator seeded by ``seed``: the same call gives the same samples;
    another ``batch_size`` gives other (equally distributed) ones.

    Returns:
        ``out[i][j]``: the new tokens of sample ``j`` of prompt ``i``.
    """
    if n < 1:
        raise RotelabError(f"samples per problem must be >= 1, got {n}")
    size = max(n, (batch_size or max(64, n)) // n * n)
    rows = [list(p) for p in prompts for _ in range(n)]
    new = lm.generate(
        rows, max_new_tokens, batch_size=size, sampler=sampler, seed=seed, ragged=True
    )
    return [new[i * n : (i + 1) * n] for i in range(len(prompts))]

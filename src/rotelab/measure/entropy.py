"""Matrix-based entropy of the residual stream, per block (Yu 2025, "Memorization-Compression
Cycles Improve Generalization"; its code: mod_gpt).

A patch is ``patch`` consecutive tokens of one sequence (8 in the paper); its representation at a
block is Z, the (patch, hidden) rows of the residual stream leaving the block. With K = Z Zᵀ::

    MBE(Z) = 2 log tr K - log ||K||_F^2 = -log sum_i p_i^2,    p = eig(K) / tr K

the Rényi entropy of order 2 of the trace-normalised Gram's eigenvalues: 0 when the rows are
parallel (one direction), ``log patch`` when they are orthogonal with equal norms. It is computed
in at least float32 whatever the model's dtype and clamped at 0, as in the paper. Lower means a
more compressed representation (``higher_is_better=False``).

Patches tile each sequence from its first token; tokens after its last full patch are not
measured. :func:`block_entropy` reads every chosen block through the LM's named hook points
(``blocks.{i}.resid_out``) in one forward pass per batch, without the LM head.

Example:
    >>> z = torch.randn(8, 64, requires_grad=True)
    >>> matrix_entropy(z).backward()            # differentiable: a regularizer can use it
    >>> res = block_entropy(lm, sequences)      # doctest: +SKIP
    >>> res.blocks[["block", "mbe", "mbe_ci_low", "mbe_ci_high"]]  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM, length_buckets, pad_batch, progress_bar
from rotelab.registry import register_metric

__all__ = [
    "PATCH",
    "TOKENS_PER_PASS",
    "BlockEntropy",
    "block_entropy",
    "block_hook_points",
    "matrix_entropy",
    "patch_entropy",
]

#: Tokens per patch in the paper.
PATCH = 8
#: Tokens per forward pass when no batch size is given.
TOKENS_PER_PASS = 4096

register_metric(
    "mbe", higher_is_better=False, scope="entropy",
    description="matrix-based entropy (Rényi-2) of a patch's representations; lower = compressed",
)  # fmt: skip


def matrix_entropy(z: torch.Tensor) -> torch.Tensor:
    """Rényi-2 matrix-based entropy of representation matrices: (..., n, d) -> (...).

    ``2 log tr K - log ||K||_F^2`` with K = Z Zᵀ (the smaller of Z Zᵀ and Zᵀ Z is formed: they
    share their non-zero eigenvalues), clamped at 0. Computed in float32 for half-precision
    input (float64 stays float64). Invariant to scaling Z; an all-zero Z has entropy 0.
    Differentiable, also at an all-zero Z (gradient 0 there).
    """
    if z.dim() < 2:
        raise ValueError(f"matrix_entropy needs (..., n, d), got shape {tuple(z.shape)}")
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    k = z @ z.mT if z.shape[-2] <= z.shape[-1] else z.mT @ z  # (..., m, m), m = min(n, d)
    trace = k.diagonal(dim1=-2, dim2=-1).sum(-1)  # (...)
    nonzero = trace > 0
    one = torch.ones_like(trace)
    # ||K / tr K||_F^2 = sum p_i^2 (the purity); the `where`s keep an all-zero Z finite.
    purity = (k / torch.where(nonzero, trace, one)[..., None, None]).square().sum((-2, -1))
    return (-torch.log(torch.where(nonzero, purity, one))).clamp_min(0.0)


def patch_entropy(h: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """MBE of each patch of hidden states: (batch, seq, hidden) -> (batch, seq // patch).

    Patch ``j`` of a row is tokens ``j*patch .. (j+1)*patch - 1``; the last ``seq % patch``
    tokens are left out. Differentiable (see :func:`matrix_entropy`).
    """
    if patch < 1:
        raise RotelabError(f"the patch must be >= 1 token, got {patch}")
    b, t, d = h.shape
    n = t // patch
    return matrix_entropy(h[:, : n * patch].reshape(b, n, patch, d))  # (B, n, patch, D) -> (B, n)


def block_hook_points(lm: LM) -> list[str]:
    """The residual stream leaving each block, ``blocks.{i}.resid_out``, in block order."""
    return [p for p in lm.hook_points() if re.fullmatch(r"blocks\.\d+\.resid_out", p)]


@dataclass
class BlockEntropy:
    """What :func:`block_entropy` measured.

    Attributes:
        blocks: one row per block: ``block, hook, sequences, patches, mbe`` (the mean over all
            patches) and ``mbe_ci_low``, ``mbe_ci_high`` (percentile bootstrap over sequences;
            NaN with fewer than two sequences).
        sequences: one row per (block, sequence with at least one patch): ``block, sequence``
            (the index into the input), ``tokens`` (its length), ``patches``, ``mbe`` (the mean
            over its patches).
        patch: tokens per patch.
        tokens: tokens measured (in full patches), per block.
        level: the CI's confidence level.
        bound: the largest MBE a patch can have, ``log min(patch, hidden)``.
    """

    blocks: pd.DataFrame
    sequences: pd.DataFrame
    patch: int
    tokens: int
    level: float
    bound: float


def _bootstrap_ratio(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, level: float, seed: int
) -> np.ndarray:
    """Percentile CI of sum(sums) / sum(counts) with sequences (the last axis) resampled:
    (blocks, S) -> (blocks, 2). The same resamples serve every block."""
    s = sums.shape[-1]
    if s < 2 or n_boot < 1:
        return np.full((sums.shape[0], 2), np.nan)
    idx = np.random.default_rng(seed).integers(s, size=(n_boot, s))  # (n_boot, S)
    ratios = sums[:, idx].sum(-1) / counts[idx].sum(-1)  # (blocks, n_boot)
    a = (1 - level) / 2
    return np.quantile(ratios, [a, 1 - a], axis=1).T


@torch.inference_mode()
def block_entropy(
    lm: LM,
    sequences: Sequence[Sequence[int]],
    *,
    patch: int = PATCH,
    blocks: Sequence[int] | None = None,
    batch_size: int | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> BlockEntropy:
    """MBE per block of the residual stream over patches of ``patch`` tokens.

    Each batch is one forward pass of the transformer body (no LM head) with an observing hook
    on ``blocks.{i}.resid_out`` of every chosen block, which reduces the block's activations to
    one MBE per patch at once, in float32 (also for a bf16 or fp16 model).

    Args:
        lm: the model.
        sequences: token ids; sequences shorter than ``patch`` add nothing.
        patch: tokens per patch (the paper: 8).
        blocks: block indices (``None``: all).
        batch_size: sequences per pass (``None``: about :data:`TOKENS_PER_PASS` tokens).
        n_boot, level, seed: the bootstrap over sequences behind each block's CI.
        progress: show a progress bar.
    """
    if patch < 1:
        raise RotelabError(f"the patch must be >= 1 token, got {patch}")
    if not 0 < level < 1:
        raise RotelabError(f"the CI level must be between 0 and 1, got {level}")
    points = block_hook_points(lm)
    chosen = list(range(len(points))) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in chosen if not 0 <= b < len(points)]
    if bad or not chosen:
        raise RotelabError(f"blocks {bad or chosen} are outside this model's blocks "
                           f"0..{len(points) - 1}")  # fmt: skip
    counts = np.array([len(s) // patch for s in sequences], dtype=np.int64)  # patches per sequence
    measured = np.flatnonzero(counts)
    if not len(measured):
        raise RotelabError(f"no sequence holds a full patch of {patch} tokens")
    if batch_size is None:
        batch_size = max(1, TOKENS_PER_PASS // int(max(len(sequences[i]) for i in measured)))
    sums = np.zeros((len(chosen), len(sequences)))  # (blocks, S): MBE summed over patches
    batch_rows: list[int] = []

    def observe(j: int):
        def fn(t: torch.Tensor) -> None:  # t: (B, T, D)
            mbe = patch_entropy(t, patch)  # (B, P)
            rows = torch.as_tensor(counts[batch_rows], device=mbe.device)
            valid = torch.arange(mbe.shape[1], device=mbe.device) < rows[:, None]  # (B, P)
            total = torch.where(valid, mbe, torch.zeros_like(mbe)).sum(1, dtype=torch.float64)
            sums[j, batch_rows] = total.cpu().numpy()

        return fn

    hooks = {points[b]: observe(j) for j, b in enumerate(chosen)}
    lengths = [len(sequences[i]) for i in measured]
    with lm.hooks(hooks), progress_bar(progress, len(measured), "entropy") as advance:
        for batch in length_buckets(lengths, batch_size):
            batch_rows[:] = [int(measured[i]) for i in batch]
            # Patches never reach past a row's end, so only full patches are fed.
            rows = [list(sequences[i])[: counts[i] * patch] for i in batch_rows]
            ids, mask = pad_batch(rows, lm.pad_id, device=lm.device)
            lm.final_hidden(ids, mask)
            advance(len(batch))

    m = counts[measured]  # (S',)
    per_seq = sums[:, measured] / m  # (blocks, S')
    ci = _bootstrap_ratio(sums[:, measured], m, n_boot, level, seed)
    table = pd.DataFrame({
        "block": chosen, "hook": [points[b] for b in chosen],
        "sequences": len(measured), "patches": int(m.sum()),
        "mbe": sums[:, measured].sum(1) / m.sum(), "mbe_ci_low": ci[:, 0], "mbe_ci_high": ci[:, 1],
    })  # fmt: skip
    seqs = pd.DataFrame({
        "block": np.repeat(chosen, len(measured)),
        "sequence": np.tile(measured, len(chosen)),
        "tokens": np.tile([len(sequences[i]) for i in measured], len(chosen)),
        "patches": np.tile(m, len(chosen)),
        "mbe": per_seq.reshape(-1),
    })  # fmt: skip
    hidden = lm.model.get_input_embeddings().weight.shape[1]
    return BlockEntropy(
        blocks=table, sequences=seqs, patch=patch, tokens=int(m.sum()) * patch, level=level,
        bound=float(np.log(min(patch, hidden))),
    )  # fmt: skip

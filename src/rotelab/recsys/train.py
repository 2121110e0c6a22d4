"""Training and scoring of the recsys models (VISTA and its baselines) on the same batches, and
the metrics the paper reports: AUC and normalized entropy (NE, He et al. 2014: the log loss
divided by the entropy of the base click rate; lower is better, 1 = no better than the rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rotelab.recsys.data import Batch, SyntheticWorld
from rotelab.recsys.model import FullAttention, LastN, Vista
from rotelab.stats import auc_score

__all__ = [
    "SCHEDULES",
    "Folded",
    "auc",
    "fit",
    "fold_batch",
    "normalized_entropy",
    "score_batch",
    "score_long",
    "tail",
]


def normalized_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Log loss of ``probs`` over the entropy of the labels' mean rate (lower is better)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 1e-7, 1 - 1e-7)
    rate = float(np.clip(y.mean(), 1e-7, 1 - 1e-7))
    logloss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(logloss / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)))


#: Learning-rate schedules of :func:`fit`.
SCHEDULES = ("constant", "cosine")


def _lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """The multiple of the base lr at ``step`` of ``total``: constant, or a linear warm-up over
    the first ``warmup`` fraction of the steps then a cosine decay to zero."""
    if schedule == "constant":
        return 1.0
    n_warm = max(1, int(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - n_warm) / max(1, total - n_warm))))


def fit(
    model: nn.Module,
    data: Batch,
    *,
    epochs: int = 3,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    val: Batch | None = None,
    schedule: str = "constant",
    warmup: float = 0.05,
    progress: Callable[[int, float], None] | None = None,
) -> list[dict[str, float]]:
    """AdamW on the click log loss (+ VISTA's reconstruction loss).

    With ``val``, the weights of the epoch with the best validation AUC are kept (early
    stopping, the same rule for every model). ``schedule="cosine"`` warms the learning rate up
    linearly over the first ``warmup`` fraction of the steps and decays it to zero by the last
    (the same steps for every model, so a comparison stays fair). The order of users is seeded,
    so the same seed gives the same model.

    Returns:
        Per epoch: the mean training loss and, with ``val``, the validation AUC.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    total_steps = epochs * math.ceil(len(data) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _lr_factor(step, total_steps, schedule, warmup)
    )
    hist = torch.as_tensor(data.history, dtype=torch.long)
    cand = torch.as_tensor(data.candidates, dtype=torch.long)
    labels = torch.as_tensor(data.labels, dtype=torch.float32)
    log: list[dict[str, float]] = []
    best, best_state = -1.0, None
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits, aux = model.train_forward(hist[idx], cand[idx], gen)
            loss = F.binary_cross_entropy_with_logits(logits, labels[idx]) + aux
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        entry = {"epoch": epoch, "loss": total / len(data)}
        if val is not None:
            entry["val_auc"] = auc(score_batch(model, val), val.labels)
            if entry["val_auc"] > best:
                best = entry["val_auc"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.append(entry)
        if progress is not None:
            progress(epoch, entry["loss"])
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return log


@torch.no_grad()
def score_batch(model: nn.Module, data: Batch, batch_size: int = 256) -> np.ndarray:
    """Click probabilities (U, C) for users whose histories are held in ``data``."""
    model.eval()
    out = []
    for s in range(0, len(data), batch_size):
        hist = torch.as_tensor(data.history[s : s + batch_size], dtype=torch.long)
        cand = torch.as_tensor(data.candidates[s : s + batch_size], dtype=torch.long)
        out.append(torch.sigmoid(model(hist, cand)).numpy())
    return np.concatenate(out)


def tail(world: SyntheticWorld, user: int, length: int, n: int) -> np.ndarray:
    """The last ``n`` items of a history, generating only the blocks that hold them."""
    from rotelab.recsys.data import BLOCK

    first = max(0, length - n) // BLOCK
    last = (length + BLOCK - 1) // BLOCK
    items = np.concatenate([world.history_block(user, length, b) for b in range(first, last)])
    return items[-n:] if n else items[:0]


@dataclass
class Folded:
    """VISTA's stage-1 output for users: (U, k, D) summaries, (U, H*dh*dh) states, (U,) counts
    (what a summary cache stores)."""

    summaries: np.ndarray
    states: np.ndarray
    counts: np.ndarray


@torch.no_grad()
def score_long(
    model: nn.Module, world: SyntheticWorld, users: np.ndarray, length: int, chunk: int = 65_536
) -> tuple[np.ndarray, Folded | None]:
    """Click probabilities (U, C) of synthetic users with histories of ``length`` items, each
    model reading only what it needs: VISTA folds the history in streamed chunks, last-N
    generates only the tail, full attention holds the whole history (its cost). For VISTA the
    stage-1 output comes back too."""
    model.eval()
    probs, summaries, states, counts = [], [], [], []
    for u in users:
        cand = torch.as_tensor(world.candidates(int(u))[0], dtype=torch.long)[None]  # (1, C)
        if isinstance(model, Vista):
            s, n = model.fold_stream(world.iter_history(int(u), length, chunk))
            summary = model.stage1.summarize(s, n)  # (1, k, D)
            summaries.append(summary[0].numpy())
            states.append(s.reshape(-1).numpy())
            counts.append(int(n.item()))
            logits = model.score_summary(summary, cand)
        elif isinstance(model, LastN):
            hist = torch.as_tensor(tail(world, int(u), length, model.cfg.last_n))[None]
            logits = model(hist, cand)
        elif isinstance(model, FullAttention):
            logits = model(torch.as_tensor(world.history(int(u), length))[None], cand)
        else:
            raise TypeError(type(model).__name__)
        probs.append(torch.sigmoid(logits)[0].numpy())
    folded = Folded(np.stack(summaries), np.stack(states), np.array(counts)) if summaries else None
    return np.stack(probs), folded


@torch.no_grad()
def fold_batch(model: Vista, data: Batch) -> Folded:
    """VISTA's stage-1 output for users whose (left-padded) histories are held in ``data``."""
    s, n = model.fold(torch.as_tensor(data.history, dtype=torch.long))
    summaries = model.stage1.summarize(s, n)
    return Folded(summaries.numpy(), s.reshape(len(data), -1).numpy(), n.long().numpy())


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of flattened scores (NaN when only one class is present)."""
    y = np.asarray(labels).ravel().astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(auc_score(np.asarray(probs).ravel(), y))

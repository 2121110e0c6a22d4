"""Suppressing the recitation of chosen sequences by a short fine-tune (the "mitigation" of the
undo experiment).

Ma et al. 2025 ("Memorization: A Close Look at Books") find that an instruct model's tuning
suppresses verbatim regurgitation of books (extraction ≈ 0.05) and that a small LoRA fine-tune on
*other* books' prefix→suffix pairs brings it back (0.91), while changing only a small fraction of
the weights, mostly in the lower blocks. To run that experiment on a model whose memorized
sequences are known (the organism), the mitigation is emulated by a short full fine-tune that adds
one of two suppression losses on the targeted sequences to the plain LM loss on retained text
(so the rest of the model is kept):

- ``unlikelihood`` (Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training"):
  ``-mean_t log(1 - p(x_t | x_<t))`` over the suffix tokens after each target's prefix, which
  pushes the memorized continuation down without saying what to produce instead;
- ``refusal``: cross-entropy toward a fixed refusal continuation after each target's prefix (what
  instruct tuning teaches), ``-mean_t log p(r_t | prefix, r_<t)``.

Both run through :func:`rotelab.train.train` as its ``extra_loss`` (same optimizer, schedule and
precision as every other fine-tune here).

Example:
    >>> log = suppress(model, [(prefix, suffix)], retain_rows, SuppressConfig())  # doctest: +SKIP
    >>> log[-1]["suppress_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from rotelab.errors import RotelabError
from rotelab.train.finetune import row_batches
from rotelab.train.trainer import TrainConfig, train

__all__ = ["SuppressConfig", "SuppressMethod", "SuppressionLoss", "suppress", "unlikelihood"]


class SuppressMethod(str, Enum):
    unlikelihood = "unlikelihood"
    refusal = "refusal"


@dataclass(frozen=True)
class SuppressConfig:
    """The suppression fine-tune: ``steps`` AdamW steps at ``lr`` (``warmup`` then cosine), each
    on ``batch_size`` retained rows (LM loss) plus ``target_batch`` targets (the suppression loss,
    times ``weight``); ``refusal`` is the refusal method's continuation."""

    method: SuppressMethod = SuppressMethod.unlikelihood
    steps: int = 30
    lr: float = 3e-4
    batch_size: int = 16
    target_batch: int = 16
    weight: float = 1.0
    warmup: int = 3
    precision: str = "auto"
    seed: int = 0
    refusal: str = " I cannot recite this text."

    def check(self) -> SuppressConfig:
        try:
            SuppressMethod(self.method)
        except ValueError:
            raise RotelabError(
                f"--suppress {self.method!r} is not a method; use unlikelihood or refusal"
            ) from None
        if self.steps < 1:
            raise RotelabError(f"--suppress-steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise RotelabError(f"--suppress-lr must be a positive number, got {self.lr}")
        if self.batch_size < 1 or self.target_batch < 1:
            raise RotelabError("the suppression batch sizes must be >= 1")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise RotelabError(f"the suppression weight must be > 0, got {self.weight}")
        return self


def unlikelihood(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-mean log(1 - p(target))`` over the positions ``mask`` selects.

    Args:
        logits: (B, T, V) next-token logits.
        targets: (B, T) the tokens whose probability is pushed down.
        mask: (B, T) bool, where the loss applies.
    """
    logits = logits.float()
    # log(1 - p) as logsumexp over the other tokens minus logsumexp over all: exact, with a
    # gradient even where p rounds to 1 in float32 (a memorized token), where log1p(-p) has none.
    others = logits.scatter(-1, targets[..., None], -math.inf)
    log_rest = torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1)
    return -(log_rest * mask).sum() / mask.sum().clamp(min=1)


class SuppressionLoss:
    """The suppression term, called by the trainer as ``extra_loss(model, batch, logits)``.

    Each call runs one more forward pass over ``target_batch`` targets (cycled in a seeded
    order) and returns ``weight`` times their suppression loss; ``last`` holds its value.
    """

    def __init__(
        self,
        targets: Sequence[tuple[Sequence[int], Sequence[int]]],
        cfg: SuppressConfig,
        *,
        pad_id: int,
        refusal_tokens: Sequence[int] = (),
    ) -> None:
        if not targets:
            raise RotelabError("nothing to suppress: the target set is empty")
        method = SuppressMethod(cfg.method)
        if method is SuppressMethod.refusal and not refusal_tokens:
            raise RotelabError("the refusal method needs a non-empty refusal continuation")
        seqs, starts = [], []
        for prefix, suffix in targets:
            if not prefix or not suffix:
                raise RotelabError("each target needs a non-empty prefix and suffix")
            tail = list(refusal_tokens) if method is SuppressMethod.refusal else list(suffix)
            seqs.append(list(prefix) + tail)
            starts.append(len(prefix))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        # mask[i, t] marks the prediction of token t + 1 (a scored suffix or refusal token)
        mask = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
        for i, (s, start) in enumerate(zip(seqs, starts)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, start - 1 : len(s) - 1] = True
        self.ids, self.mask, self.method, self.cfg = ids, mask, method, cfg
        self._order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(cfg.seed))
        self._at = 0
        self.last = math.nan

    def _next(self) -> torch.Tensor:
        n = min(self.cfg.target_batch, len(self.ids))
        idx = torch.cat([self._order, self._order])[self._at : self._at + n]
        self._at = (self._at + n) % len(self.ids)
        return idx

    def __call__(self, model: nn.Module, batch: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        idx = self._next()
        ids, mask = self.ids[idx].to(batch.device), self.mask[idx].to(batch.device)
        out = model(input_ids=ids[:, :-1]).logits  # (B, T-1, V)
        if self.method is SuppressMethod.unlikelihood:
            loss = unlikelihood(out, ids[:, 1:], mask)
        else:
            ce = F.cross_entropy(out.float().transpose(1, 2), ids[:, 1:], reduction="none")
            loss = (ce * mask).sum() / mask.sum()
        self.last = float(loss.detach())
        return self.cfg.weight * loss


def suppress(
    model: nn.Module,
    targets: Sequence[tuple[Sequence[int], Sequence[int]]],
    retain_rows: Sequence[Sequence[int]],
    cfg: SuppressConfig = SuppressConfig(),
    *,
    pad_id: int = 0,
    refusal_tokens: Sequence[int] = (),
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fine-tune ``model`` in place so it stops reciting ``targets``' suffixes after their
    prefixes, keeping the LM loss on ``retain_rows``.

    Args:
        model: a causal LM (every weight trains).
        targets: ``(prefix tokens, suffix tokens)`` of each sequence to suppress.
        retain_rows: token rows of equal length (inputs plus the shifted target) of text to keep.
        cfg: see :class:`SuppressConfig`.
        pad_id: pads the target batch (padding is never scored; right padding, so it is never
            attended to by a scored position).
        refusal_tokens: the refusal continuation's tokens (the ``refusal`` method).
        callback: called with each logged record.

    Returns:
        The training log: per logged step ``loss`` (LM loss on the retained rows),
        ``suppress_loss`` and the trainer's other fields.
    """
    cfg = cfg.check()
    term = SuppressionLoss(targets, cfg, pad_id=pad_id, refusal_tokens=refusal_tokens)
    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, warmup_steps=min(cfg.warmup, cfg.steps - 1),
        precision=cfg.precision, seed=cfg.seed, log_every=1,
    )  # fmt: skip

    def record(rec: dict) -> None:
        rec["suppress_loss"] = term.last
        if callback is not None:
            callback(rec)

    return train(
        model, row_batches(retain_rows, cfg.batch_size, cfg.seed), tcfg, callback=record,
        extra_loss=term,
    )  # fmt: skip

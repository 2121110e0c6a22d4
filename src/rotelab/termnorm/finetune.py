"""Fine-tuning on term -> ID pairs: the split, full fine-tuning and LoRA (``peft``).

As in Pericharla et al. 2025, a fraction of the pairs is trained on and the rest withheld;
accuracy on the trained terms measures memorization, on the withheld terms generalization. The
split is stratified by lexicalization and popularity bucket so every stratum has both halves.
The loss is the cross-entropy of the identifier's tokens only (the prompt is context, not a
target), the usual supervised fine-tuning objective.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rotelab.errors import RotelabError
from rotelab.termnorm.prompts import Template, encode_pairs

__all__ = [
    "FinetuneConfig",
    "LoraSettings",
    "finetune",
    "lora_model",
    "popularity_bucket",
    "sample_pairs",
    "split_pairs",
    "target_batches",
]


def popularity_bucket(popularity: pd.Series) -> pd.Series:
    """Buckets of a popularity measure: the synthetic counts 0/1/4/16/64 map to themselves'
    bucket names; real annotation counts fall into ``0``, ``1``, ``2-4``, ``5-16``, ``17-64``,
    ``>64``."""
    edges = [-1, 0, 1, 4, 16, 64, np.inf]
    labels = ["0", "1", "2-4", "5-16", "17-64", ">64"]
    return pd.cut(popularity.astype(float), edges, labels=labels).astype(str)


def sample_pairs(df: pd.DataFrame, n: int, *, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` pairs, spread evenly over the popularity buckets (a real terminology's
    popularity is heavy-tailed: a uniform sample would hold almost no popular terms)."""
    if n < 2:
        raise RotelabError(f"sample at least 2 pairs (one to train, one to withhold), not {n}")
    if len(df) <= n:
        return df.reset_index(drop=True)
    buckets = popularity_bucket(df["popularity"])
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(buckets.to_numpy() == b) for b in sorted(set(buckets))]
    quota = {i: 0 for i in range(len(groups))}
    left = n
    # water-filling: equal shares, a small bucket's unused share going to the others
    while left > 0:
        open_ = [i for i, g in enumerate(groups) if quota[i] < len(g)]
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, len(groups[i]) - quota[i], left)
            quota[i] += take
            left -= take
            if left == 0:
                break
    chosen = np.concatenate([rng.permutation(g)[: quota[i]] for i, g in enumerate(groups)])
    return df.iloc[np.sort(chosen)].reset_index(drop=True)


def split_pairs(df: pd.DataFrame, fraction: float, *, seed: int = 0) -> pd.DataFrame:
    """Add a ``split`` column: ``train`` for ``fraction`` of each (lexical, popularity bucket)
    stratum (at least one when the stratum has two or more), ``withheld`` for the rest."""
    if not 0 < fraction < 1:
        raise RotelabError(
            f"split fraction {fraction} must be in (0, 1): some pairs train, some are withheld"
        )
    out = df.copy()
    out["bucket"] = popularity_bucket(out["popularity"])
    out["split"] = "withheld"
    rng = np.random.default_rng(seed)
    for _, idx in out.groupby(["lexical", "bucket"], sort=True).groups.items():
        idx = np.array(sorted(idx))
        n_train = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_train = min(max(n_train, 1), len(idx) - 1)
        chosen = rng.permutation(idx)[:n_train]
        out.loc[chosen, "split"] = "train"
    return out


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning settings (AdamW, linear warmup then constant)."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings for :func:`lora_model`."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_model(model: torch.nn.Module, settings: LoraSettings = LoraSettings()):
    """``model`` wrapped with trainable LoRA adapters (the base weights frozen), via ``peft``."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def target_batches(
    seqs: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int, pad_id: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, right-padded batches: ``(input_ids, attention_mask, labels)``, each
    (batch, seq); labels are -100 except on target tokens."""
    order = np.random.default_rng(seed).permutation(len(seqs))
    out = []
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        width = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, i in enumerate(rows):
            s = torch.tensor(seqs[i], dtype=torch.long)
            ids[b, : len(s)] = s
            mask[b, : len(s)] = 1
            labels[b, starts[i] : len(s)] = s[starts[i] :]
        out.append((ids, mask, labels))
    return out


def _target_loss(model: torch.nn.Module, ids, mask, labels) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
    # position t predicts token t+1
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def finetune(
    model: torch.nn.Module,
    tokenizer,
    terms: Sequence[str],
    ids: Sequence[str],
    template: Template,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fine-tune ``model`` in place on the pairs (every trainable parameter: the whole model, or
    only a LoRA adapter when ``model`` comes from :func:`lora_model`).

    Returns:
        One log record per epoch: ``epoch, loss, steps, seconds``.
    """
    if len(terms) == 0:
        raise RotelabError("no pairs to fine-tune on")
    seqs, starts = encode_pairs(tokenizer, terms, ids, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(config.seed)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
    )
    device = next(model.parameters()).device
    model.train()
    log: list[dict] = []
    t0 = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        total, n = 0.0, 0
        batches = target_batches(seqs, starts, config.batch_size, pad, config.seed * 1000 + epoch)
        for ids_t, mask_t, labels_t in batches:
            loss = _target_loss(model, ids_t.to(device), mask_t.to(device), labels_t.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            total += loss.item()
            n += 1
        rec = {
            "epoch": epoch,
            "loss": total / max(1, n),
            "steps": step,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        log.append(rec)
        if callback is not None:
            callback(rec)
        if not math.isfinite(rec["loss"]):
            raise RotelabError(f"fine-tuning diverged at epoch {epoch}; lower the learning rate")
    model.eval()
    return log

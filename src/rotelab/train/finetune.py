"""Supervised fine-tuning (SFT) and information-bottleneck fine-tuning (IB-FT) of a causal LM.

Wang et al. 2025 ("Breaking Memorization Barriers in LLM Code Fine-Tuning via Information
Bottleneck") compare plain SFT (cross-entropy on the fine-tuning data) with IB-FT, the same plus
``alpha * (KL + beta * CE_ib)`` from a variational adapter on a middle hidden state
(:mod:`rotelab.train.ib`). :func:`finetune` runs either on packed token rows with
:func:`rotelab.train.train` and returns the training curve (CE, and for IB-FT the KL and CE_ib of
each logged step), so both arms of a comparison go through the same loop and differ only in the
extra loss. LoRA (peft) wraps the model first where asked (:func:`with_lora`) and is merged back
after training (:func:`merge_lora`), so the result is an ordinary model either way.

Example:
    >>> log = finetune(model, rows, FinetuneConfig(steps=60), ib=IBConfig())  # doctest: +SKIP
    >>> log[-1]["kl"]  # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rotelab.errors import RotelabError
from rotelab.train.ib import IBConfig, InformationBottleneck
from rotelab.train.trainer import TrainConfig, train

__all__ = ["FinetuneConfig", "finetune", "merge_lora", "pack_rows", "row_batches", "with_lora"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings: ``steps`` of ``batch_size`` rows, AdamW at ``lr`` with ``warmup``
    steps then cosine decay; ``log_every`` sets the training curve's resolution."""

    steps: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 5
    log_every: int = 5
    precision: str = "auto"
    seed: int = 0

    def check(self) -> FinetuneConfig:
        if self.steps < 1:
            raise RotelabError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise RotelabError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise RotelabError(f"--lr must be > 0, got {self.lr}")
        if self.warmup < 0 or self.log_every < 1:
            raise RotelabError("warmup must be >= 0 and log_every >= 1")
        return self


def pack_rows(docs: Sequence[Sequence[int]], eos: int, length: int) -> list[list[int]]:
    """Documents joined with ``eos`` and cut into rows of ``length + 1`` tokens (inputs and the
    shifted targets); the tail shorter than a row is dropped. A corpus shorter than one row is
    refused."""
    stream: list[int] = []
    for doc in docs:
        stream += list(doc) + [eos]
    rows = [stream[i : i + length + 1] for i in range(0, len(stream) - length, length + 1)]
    if not rows:
        raise RotelabError(
            f"the fine-tuning data holds {len(stream)} tokens, less than one row of {length + 1}"
        )
    return rows


def row_batches(rows: Sequence[Sequence[int]], size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless ``(size, length + 1)`` batches of rows drawn without replacement within an epoch
    (reshuffled each epoch; a batch larger than the data repeats rows)."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < size:
            epoch = list(range(len(rows)))
            rng.shuffle(epoch)
            order += epoch
        take, order = order[:size], order[size:]
        yield torch.tensor([rows[i] for i in take])


def with_lora(model: nn.Module, r: int, alpha: float | None = None) -> nn.Module:
    """``model`` wrapped with LoRA adapters of rank ``r`` on every linear layer (peft); only the
    adapters train."""
    if r < 1:
        raise RotelabError(f"--lora rank must be >= 1, got {r}")
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, cfg)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with the LoRA updates folded into its weights (a no-op without LoRA)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def finetune(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    cfg: FinetuneConfig = FinetuneConfig(),
    *,
    ib: IBConfig | None = None,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fine-tune ``model`` in place on ``rows`` (SFT; IB-FT with ``ib``) and return the curve.

    Args:
        model: a causal LM (LoRA-wrapped or not); left in eval mode.
        rows: token rows of ``length + 1`` tokens (:func:`pack_rows`).
        cfg: steps, batch size, learning rate, schedule.
        ib: the IB-FT settings; ``None`` is plain SFT.
        callback: called with each logged record.

    Returns:
        One record per logged step: ``step``, ``loss`` (the LM cross-entropy), ``lr``,
        ``grad_norm``, ``tokens``, ``elapsed_s`` and, for IB-FT, ``kl``, ``ce_ib`` and
        ``objective`` (``CE + alpha * (KL + beta * CE_ib)``).
    """
    cfg.check()
    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, warmup_steps=min(cfg.warmup, cfg.steps - 1),
        precision=cfg.precision, log_every=cfg.log_every, seed=cfg.seed,
    )  # fmt: skip
    batches = row_batches(rows, cfg.batch_size, cfg.seed)
    if ib is None:
        return train(model, batches, tcfg, callback=callback)
    bottleneck = InformationBottleneck(ib)

    def record(rec: dict) -> None:
        # the trainer logs the LM loss; the bottleneck's parts of the same step are beside it
        rec.update(bottleneck.last)
        rec["objective"] = rec["loss"] + ib.alpha * (rec["kl"] + ib.beta * rec["ce_ib"])
        if callback is not None:
            callback(rec)

    with bottleneck.attach(model):
        return train(model, batches, tcfg, callback=record, extra_loss=bottleneck)

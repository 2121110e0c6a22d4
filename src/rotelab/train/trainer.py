"""A plain, readable causal-LM training loop: AdamW, warmup + cosine, bf16 autocast where native.

The loop is generic: any ``transformers`` causal LM (or module returning ``.logits``), any iterable
of ``(batch, seq)`` token batches. It is step-count based, so a run is a pure function of its seed,
data and precision, never of the wall clock. ``precision="auto"`` trains with bf16 autocast only
where bf16 is native (see :mod:`rotelab.machine`). Under ``torchrun`` (an initialised process group
of more than one process) it is data parallel: each rank trains on its share of the rows of every
global batch (``batch[rank::world]``) and the gradients are averaged over ranks before clipping, so
every rank holds the same weights and the losses equal one process's up to float rounding.
Training-time regularizers (``train/`` loss
terms) plug in as :class:`rotelab.train.terms.LossTerm` objects (``terms=[...]``: they may hook
the model and see each step's logits and LM loss), or as ``extra_loss(model, batch, logits) ->
tensor``. With neither, a run is exactly what it was before loss terms existed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rotelab.distributed import is_distributed, rank_world
from rotelab.machine import autocast, autocast_dtype, configure_threads, share_threads
from rotelab.train.terms import LossTerm, StepState

__all__ = ["TrainConfig", "cosine_lr", "causal_lm_loss", "train"]


@dataclass
class TrainConfig:
    """Optimizer and schedule settings for :func:`train`."""

    steps: int
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast where native) | fp32 | bf16
    log_every: int = 10
    seed: int = 0


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def causal_lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; ``logits`` (B, T, V) predict ``tokens[:, 1:]`` (B, T)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))


def train(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    cfg: TrainConfig,
    *,
    callback: Callable[[dict], None] | None = None,
    extra_loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    terms: Sequence[LossTerm] = (),
    after_step: Callable[[int], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``cfg.steps`` steps and return the log (one dict per logged
    step).

    Args:
        model: a causal LM whose forward takes ``input_ids`` and returns ``.logits``.
        batches: yields ``(batch, seq + 1)`` int64 token tensors; inputs are ``[:, :-1]``.
        cfg: optimizer, schedule, autocast and logging settings.
        callback: called with each log record (e.g. to print progress or write a log file).
        extra_loss: optional regularizer added to the LM loss.
        terms: loss terms (see :mod:`rotelab.train.terms`): attached before the first step,
            their tensors added to the LM loss, their values merged into each log record
            (``loss`` stays the LM loss), detached after the last step.
        after_step: called with the number of optimizer steps done after each step (e.g. to save
            checkpoints at chosen steps); the model is in train mode.
    """
    if terms:
        for i, term in enumerate(terms):
            try:
                term.attach(model)
            except BaseException:
                for t in terms[:i]:
                    t.detach()
                raise
        try:
            return _train(model, batches, cfg, callback, extra_loss, list(terms), after_step)
        finally:
            for term in terms:
                term.detach()
    return _train(model, batches, cfg, callback, extra_loss, [], after_step)


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """Sum every gradient over ranks (one flat all-reduce) and divide by ``world``: the gradient
    of the mean loss over the global batch when every rank holds as many rows."""
    import torch.distributed as dist

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _train(
    model, batches, cfg, callback, extra_loss, terms: list[LossTerm], after_step=None
) -> list[dict]:
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    if device.type == "cpu":
        configure_threads()
    amp = autocast_dtype(cfg.precision, device)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg))
    model.train()
    log: list[dict] = []
    t0 = time.perf_counter()
    tokens_seen = 0
    parallel = is_distributed()
    rank, world = rank_world() if parallel else (0, 1)
    for step, batch in enumerate(batches):
        if step >= cfg.steps:
            break
        if parallel:
            if batch.size(0) % world:
                raise ValueError(f"batch of {batch.size(0)} rows does not split over {world} ranks")
            tokens_seen += batch[:, :-1].numel() - batch[rank::world, :-1].numel()
            batch = batch[rank::world]
        batch = batch.to(device)
        if device.type == "cpu":
            share_threads()
        logged = step % cfg.log_every == 0 or step == cfg.steps - 1
        for term in terms:
            term.before_forward(step)
        with autocast(amp, device):
            logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
            loss = causal_lm_loss(logits, batch)
            total = loss if extra_loss is None else loss + extra_loss(model, batch, logits)
            state = StepState(step, model, batch, logits, loss, logged) if terms else None
            for term in terms:
                extra = term.loss(state)
                if extra is not None:
                    total = total + extra
        opt.zero_grad(set_to_none=True)
        total.backward()
        if parallel:
            _average_gradients(model, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        tokens_seen += batch[:, :-1].numel()
        if after_step is not None:
            after_step(step + 1)
        if logged:
            shown = loss.detach()
            if parallel:  # the global batch's mean loss (every rank holds as many tokens)
                import torch.distributed as dist

                shown = shown.float().clone()
                dist.all_reduce(shown, op=dist.ReduceOp.SUM)
                shown /= world
            rec = {
                "step": step,
                "loss": shown.item(),
                "lr": opt.param_groups[0]["lr"],
                "grad_norm": grad_norm.item(),
                "tokens": tokens_seen,
                "elapsed_s": round(time.perf_counter() - t0, 3),
                "precision": "bf16" if amp is not None else "fp32",
            }
            for term in terms:
                rec.update(term.record(state))
            log.append(rec)
            if callback is not None:
                callback(rec)
    model.eval()
    return log


def llama_config(
    tokenizer,
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    context: int,
    bos_token_id: int | None = None,
):
    """The ``LlamaConfig`` of a model trained from scratch here (the organism's architecture):
    full multi-head attention, tied embeddings, the tokenizer's size and special tokens
    (``bos_token_id`` default: the tokenizer's)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id if bos_token_id is None else bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

"""A small Llama trained from scratch on background text with items inserted a controlled number
of times: the organism's recipe (Hubble-style insertion, :mod:`rotelab.train.insertion`) for the
small studies that need their own world (term -> ID pretraining, lyric -> melody models).

Example:
    >>> cfg = ScratchConfig(steps=10)
    >>> cfg.to_dict()["hidden"]
    128
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rotelab.errors import RotelabError
from rotelab.train.insertion import insertion_schedule, packed_batches
from rotelab.train.trainer import TrainConfig, llama_config, train

__all__ = ["ScratchConfig", "train_with_insertions"]


@dataclass(frozen=True)
class ScratchConfig:
    """Model shape and training budget (default: the tiny organism's shape and budget)."""

    n_layers: int = 2
    hidden: int = 128
    n_heads: int = 4
    intermediate: int = 352
    context: int = 128
    batch_size: int = 16
    steps: int = 480
    lr: float = 3e-3
    precision: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_with_insertions(
    tokenizer,
    docs: Sequence[Sequence[int]],
    items: Sequence[Sequence[int]],
    counts: Sequence[int],
    config: ScratchConfig,
    *,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
):
    """Train a fresh Llama (:func:`~rotelab.train.llama_config`) on ``docs`` with ``items[k]``
    inserted ``counts[k]`` times over the whole run, as the organism does: at row starts, at
    most 5/8 of a batch's rows given to insertions so that background is in every batch.

    Args:
        tokenizer: a Hugging Face tokenizer with eos and pad tokens (sizes the vocabulary).
        docs: background documents as token ids (the background stream).
        items: the inserted items as token ids.
        counts: insertions per item.
        config: model shape and training budget.
        seed: seeds the model, the schedule and the batches.
        callback: receives the trainer's log records.

    Returns:
        The trained ``LlamaForCausalLM`` (eval mode) and its training log.

    Raises:
        RotelabError: the insertions do not fit the run's rows.
    """
    import torch
    from transformers import LlamaForCausalLM

    row_len = config.context + 1
    try:
        placements = insertion_schedule(
            [(k, int(c), "all") for k, c in enumerate(counts)],
            [math.ceil((len(s) + 1) / row_len) for s in items],
            steps=config.steps, batch_size=config.batch_size, seed=seed,
            max_rows_per_step=config.batch_size * 5 // 8,
        )  # fmt: skip
    except ValueError as exc:
        raise RotelabError(str(exc)) from None
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        llama_config(tokenizer, hidden=config.hidden, intermediate=config.intermediate,
                     layers=config.n_layers, heads=config.n_heads, context=config.context)
    )  # fmt: skip
    batches = packed_batches(
        docs, items, placements, steps=config.steps, batch_size=config.batch_size,
        row_len=row_len, eos_id=tokenizer.eos_token_id, seed=seed,
    )  # fmt: skip
    cfg = TrainConfig(steps=config.steps, lr=config.lr, precision=config.precision, seed=seed)
    log = train(model, batches, cfg, callback=callback)
    return model, log

"""Pretraining a small model with a synthetic ontology inserted at controlled popularity.

The paper's *popularity* is how often an identifier appeared in pretraining. Here it is set, not
estimated: each pair's statement (``"<term> has the identifier <id>."``) is inserted into the
pretraining stream ``count`` times (0/1/4/16/64) with the organism's Hubble-style machinery
(:func:`rotelab.train.insertion_schedule`, :func:`rotelab.train.packed_batches`,
:func:`rotelab.train.train`), over background text and a tokenizer the caller supplies (the
pipeline passes the organism's). The organism itself is untouched: this is a separate model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

from rotelab.termnorm.prompts import TEMPLATES, Template
from rotelab.train import TrainConfig, insertion_schedule, llama_config, packed_batches, train

__all__ = ["PRETRAIN_PRESETS", "PretrainConfig", "pretrain_with_ontology"]


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and training budget of the ontology-pretrained model."""

    n_layers: int = 2
    hidden: int = 128
    n_heads: int = 4
    intermediate: int = 352
    context: int = 128
    batch_size: int = 16
    steps: int = 480
    lr: float = 3e-3
    precision: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


#: ``tiny``: the tiny organism's shape on a 64-token context (statements are ~30 tokens);
#: ``small``: the default organism's shape. Both a few minutes on 2 shared CPU cores.
#: ``micro``: seconds, for a quick look at the plumbing (it learns little).
PRETRAIN_PRESETS = {
    "micro": PretrainConfig(
        n_layers=1, hidden=64, n_heads=4, intermediate=128, context=48, batch_size=16, steps=60
    ),
    "tiny": PretrainConfig(context=64, steps=400),
    "small": PretrainConfig(
        n_layers=4, hidden=192, n_heads=6, intermediate=512, context=64, batch_size=32, steps=450
    ),
}


def pretrain_with_ontology(
    ontology: pd.DataFrame,
    tokenizer,
    background: Sequence[str],
    config: PretrainConfig = PRETRAIN_PRESETS["tiny"],
    *,
    seed: int = 0,
    template: Template = TEMPLATES["synthetic"],
    callback: Callable[[dict], None] | None = None,
):
    """Train a fresh Llama-style model on ``background`` with each pair of ``ontology`` inserted
    ``count`` times (column ``count``, default ``popularity``).

    Args:
        ontology: a terminology frame (see :mod:`rotelab.termnorm.terminology`).
        tokenizer: a Hugging Face tokenizer with eos and pad tokens.
        background: background documents (text).
        config: model and training settings.
        seed: seeds the model, the schedule and the batches.
        template: how a pair is written as a pretraining statement.
        callback: receives the trainer's log records.

    Returns:
        The trained ``LlamaForCausalLM`` (eval mode) and its training log.
    """
    import torch
    from transformers import LlamaForCausalLM

    counts = ontology["count" if "count" in ontology else "popularity"].astype(int).tolist()
    items = [
        list(tokenizer(template.statement(t, i), add_special_tokens=False)["input_ids"])
        for t, i in zip(ontology["term"], ontology["id"])
    ]
    docs = [list(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in background]
    row_len = config.context + 1
    placements = insertion_schedule(
        [(k, c, "all") for k, c in enumerate(counts)],
        [math.ceil((len(t) + 1) / row_len) for t in items],
        steps=config.steps,
        batch_size=config.batch_size,
        seed=seed,
        max_rows_per_step=config.batch_size * 5 // 8,  # as the organism: background in every batch
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        llama_config(
            tokenizer,
            hidden=config.hidden,
            intermediate=config.intermediate,
            layers=config.n_layers,
            heads=config.n_heads,
            context=config.context,
        )  # fmt: skip
    )
    batches = packed_batches(
        docs, items, placements, steps=config.steps, batch_size=config.batch_size,
        row_len=row_len, eos_id=tokenizer.eos_token_id, seed=seed,
    )  # fmt: skip
    cfg = TrainConfig(steps=config.steps, lr=config.lr, precision=config.precision, seed=seed)
    log = train(model, batches, cfg, callback=callback)
    return model, log

"""Pretraining a small model with a synthetic ontology inserted at controlled popularity.

The paper's *popularity* is how often an identifier appeared in pretraining. Here it is set, not
estimated: each pair's statement (``"<term> has the identifier <id>."``) is inserted into the
pretraining stream ``count`` times (0/1/4/16/64) with the organism's Hubble-style machinery
(:func:`rotelab.train.insertion_schedule`, :func:`rotelab.train.packed_batches`,
:func:`rotelab.train.train`), over background text and a tokenizer the caller supplies (the
pipeline passes the organism's). The organism itself is untouched: this is a separate model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from rotelab.termnorm.prompts import TEMPLATES, Template
from rotelab.train.scratch import ScratchConfig, train_with_insertions

__all__ = ["PRETRAIN_PRESETS", "PretrainConfig", "pretrain_with_ontology"]


class PretrainConfig(ScratchConfig):
    """Model shape and training budget of the ontology-pretrained model."""


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
    counts = ontology["count" if "count" in ontology else "popularity"].astype(int).tolist()
    items = [
        list(tokenizer(template.statement(t, i), add_special_tokens=False)["input_ids"])
        for t, i in zip(ontology["term"], ontology["id"])
    ]
    docs = [list(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in background]
    return train_with_insertions(
        tokenizer, docs, items, counts, config, seed=seed, callback=callback
    )

"""One term -> ID study on one model: split, score before, fine-tune, score after, align.

The steps of Pericharla et al. 2025 on any causal LM: the pairs are split (stratified), every
pair is scored by one-pass exact match before fine-tuning, the model is fine-tuned on the
training half (fully, or through a LoRA adapter), every pair is scored again, and the term/ID
embedding alignment of the *pre*-fine-tuning model is recorded per pair, so it can be related to
what fine-tuning then achieved on the withheld terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rotelab.lm import LM
from rotelab.termnorm.evaluate import alignment, exact_match
from rotelab.termnorm.finetune import FinetuneConfig, LoraSettings, finetune, lora_model
from rotelab.termnorm.prompts import Template

__all__ = ["StudyResult", "run_study"]


@dataclass
class StudyResult:
    """``pairs``: one row per pair (term, id, popularity, bucket, lexical, source, split, before,
    after, logprob_before, logprob_after, alignment); ``log``: the fine-tuning log."""

    pairs: pd.DataFrame
    log: list[dict]


def run_study(
    model,
    tokenizer,
    pairs: pd.DataFrame,
    template: Template,
    config: FinetuneConfig,
    *,
    lora: LoraSettings | None = None,
    layer: int | None = None,
    batch_size: int = 64,
) -> StudyResult:
    """Run the study on ``pairs`` (already split: a ``split`` column of train/withheld).

    ``model`` is fine-tuned in place (full fine-tuning), or wrapped by a LoRA adapter when
    ``lora`` is given (its base weights then stay as they were).
    """
    out = pairs.copy().reset_index(drop=True)
    lm = LM.from_model(model, tokenizer)
    before = exact_match(lm, out["term"], out["id"], template, batch_size=batch_size)
    out["before"] = before["correct"].to_numpy()
    out["logprob_before"] = before["logprob"].to_numpy()
    out["id_tokens"] = before["id_tokens"].to_numpy()
    out["alignment"] = alignment(lm, out["term"].tolist(), out["id"].tolist(), layer=layer)
    train = out[out["split"] == "train"]
    tuned = lora_model(model, lora) if lora is not None else model
    log = finetune(tuned, tokenizer, train["term"].tolist(), train["id"].tolist(), template, config)
    # peft injects the adapter into the base model's layers: score that model, adapter included
    scored = tuned.get_base_model() if lora is not None else tuned
    after = exact_match(
        LM.from_model(scored, tokenizer), out["term"], out["id"], template, batch_size=batch_size
    )
    out["after"] = after["correct"].to_numpy()
    out["logprob_after"] = after["logprob"].to_numpy()
    return StudyResult(out, log)

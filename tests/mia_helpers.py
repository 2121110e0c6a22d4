"""Shared by the membership-inference tests: tiny texts, direct float64 references, files."""

from __future__ import annotations

import json

import torch

from rotelab.lm import LM

TEXTS = [
    "the cat sat on the mat.",
    "a dog ran to the park and the bird sang.",
    "the bird sat on the park mat and the cat ran.",
    "a cat and a dog sang to the bird.",
    "the mat sat on the cat. the dog ran.",
    "park the dog, the cat sang on a mat.",
]
SPANS = [None, (6, 21), None, (20, 33), (2, 10), None]
MEMBERS = [True, True, True, False, False, False]


def ref_logp(lm: LM, tokens, start, end):
    """Full softmax in float64, one text at a time: (log p(target), mu, sigma2) over the span."""
    ids = torch.tensor([list(tokens[:end])])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits[start - 1 : end - 1], dim=-1)
    lp = logp.gather(1, ids[0, start:end, None]).squeeze(1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma2 = (p * logp.square()).sum(-1) - mu.square()
    return lp.numpy(), mu.numpy(), sigma2.numpy()


def ref_nll(lm: LM, tokens, start, end) -> float:
    return -ref_logp(lm, tokens, start, end)[0].mean()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def other_tokenizer():
    """A BPE tokenizer with another vocabulary than the tiny models'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=90, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok.train_from_iterator(["zebra quartz jumps over lazy fox vexing " * 4], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )  # fmt: skip

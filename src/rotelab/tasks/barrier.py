"""The memorization barrier on the program task: bases that memorized the fine-tuning problems.

Wang et al. 2025 ("Breaking Memorization Barriers in LLM Code Fine-Tuning via Information
Bottleneck") observe that when a base model already memorizes the downstream data, supervised
fine-tuning on it gains little: optimization is trapped near the memorized solution (the
*memorization barrier*, diagnosed by Min-K% (K = 20%) of the fine-tuning data under the base).
Here the barrier is planted on purpose. A small model is pretrained on the program task's
pretraining problems (with their correct programs) and, in the memorized base, also on the
fine-tuning problems paired with a spurious solution (a plausible near miss that fails the
tests, :meth:`rotelab.tasks.programs.Problem.wrong_solution`) inserted ``copies`` times; the
clean base gets the same number of steps with the insertion slots filled by more pretraining
text. Both are then fine-tuned on the fine-tuning problems' correct programs.

This module builds the pieces; the experiment itself (arms, seeds, run directory) is the
``barrier`` pipeline's.

Example:
    >>> docs = pretrain_docs(task, tok.encode, copies=64, n_finetune=100, tokens=1_200_000)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.mia import min_k_score
from rotelab.tasks.programs import Problem, ProgramTask

__all__ = ["ModelShape", "fresh_model", "min_k_scores", "pretrain_docs", "spurious_texts"]


@dataclass(frozen=True)
class ModelShape:
    """A fresh Llama's shape (the tiny organism's by default: 2 blocks, hidden 128)."""

    blocks: int = 2
    hidden: int = 128
    heads: int = 4
    context: int = 128

    def check(self) -> ModelShape:
        if self.blocks < 1 or self.hidden < 1 or self.heads < 1 or self.hidden % self.heads:
            raise RotelabError(
                f"a model needs >= 1 block and a hidden size divisible by its heads, got "
                f"{self.blocks} blocks, hidden {self.hidden}, {self.heads} heads"
            )
        if self.context < 16:
            raise RotelabError(f"the context must be >= 16 tokens, got {self.context}")
        return self


def fresh_model(tokenizer, shape: ModelShape = ModelShape(), seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` of ``shape`` for ``tokenizer`` (seeded)."""
    import torch
    from transformers import LlamaForCausalLM

    from rotelab.train import llama_config

    shape.check()
    cfg = llama_config(
        tokenizer, hidden=shape.hidden, intermediate=int(2.75 * shape.hidden),
        layers=shape.blocks, heads=shape.heads, context=shape.context,
        bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def spurious_texts(problems: Sequence[Problem], seed: int) -> list[str]:
    """Each problem's prompt with its wrong (memorized) solution: what the memorized base sees."""
    return [p.text(p.wrong_solution(seed)) for p in problems]


def pretrain_docs(
    task: ProgramTask,
    encode: Callable[[str], list[int]],
    *,
    copies: int,
    finetune: Sequence[Problem],
    tokens: int,
    seed: int,
) -> tuple[list[list[int]], dict[str, int]]:
    """The pretraining documents (token lists, in training order) of one base.

    Pretraining problems with their correct programs fill ``tokens`` (whole shuffled epochs,
    the last one cut), after ``copies`` copies of every problem in ``finetune`` paired with its
    spurious solution took their share; the insertions are scattered uniformly over the stream.
    The same ``seed`` gives the two bases of a seed the same epochs in the same order, up to
    where the memorized base's budget runs out.

    Returns:
        ``(docs, counts)``: ``counts`` has ``inserted_docs``, ``inserted_tokens``,
        ``pretrain_docs`` and ``pretrain_epochs`` (fractional).
    """
    if copies < 0:
        raise RotelabError(f"insertion copies must be >= 0, got {copies}")
    rng = random.Random(seed)
    inserted = [encode(t) for t in spurious_texts(finetune, seed)] * copies
    budget = tokens - sum(len(d) + 1 for d in inserted)
    if budget <= 0:
        raise RotelabError(
            f"{copies} copies of {len(finetune)} problems fill the whole pretraining budget of "
            f"{tokens} tokens; use fewer copies or problems, or more steps"
        )
    pre = [encode(p.text()) for p in task.split("pretrain")]
    if not pre:
        raise RotelabError("the task has no pretraining problems")
    clean: list[list[int]] = []
    used = 0
    while used < budget:
        order = list(range(len(pre)))
        rng.shuffle(order)
        for i in order:
            if used >= budget:
                break
            clean.append(pre[i])
            used += len(pre[i]) + 1
    # scatter the insertions: each goes to a uniformly drawn position of the clean stream
    slots = sorted(rng.randrange(len(clean) + 1) for _ in inserted)
    ins_rng = random.Random(f"{seed}/insertions")
    ins_rng.shuffle(inserted)
    docs: list[list[int]] = []
    j = 0
    for i, doc in enumerate(clean):
        while j < len(slots) and slots[j] == i:
            docs.append(inserted[j])
            j += 1
        docs.append(doc)
    docs += inserted[j:]
    counts = {
        "inserted_docs": len(inserted), "inserted_tokens": sum(len(d) + 1 for d in inserted),
        "pretrain_docs": len(clean), "pretrain_epochs": round(len(clean) / len(pre), 3),
    }  # fmt: skip
    return docs, counts


def min_k_scores(lm: LM, texts: Sequence[str], k: float = 0.2) -> np.ndarray:
    """(texts,) Min-K% of each text under ``lm`` (mean of its K% lowest token log-probs, Shi et
    al. 2024; the paper's barrier diagnostic with K = 20%): higher = more memorized."""
    seqs = [[lm.tokenizer.eos_token_id, *lm.encode(t)] for t in texts]
    scores = lm.score(seqs, targets_from=1)
    return np.array([min_k_score(s.logprobs, k) for s in scores])

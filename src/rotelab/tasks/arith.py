"""Character-level arithmetic for GAPT's generalization and interference settings (Yu 2025,
"Memorization-Compression Cycles Improve Generalization", §OOD multiplication and the
catastrophic-forgetting setting).

A problem is the text ``a*b=`` (or ``a+b=``) followed by its answer written least significant
digit first and a ``;`` that ends it: ``12*34=804;`` is 12 × 34 = 408 (the reversed digits put the
carry a digit needs after the digits it comes from, which is what lets a small model learn the
task at all). Texts are spelled in a 14-symbol vocabulary (:data:`VOCAB`), one token a character.

- :func:`operand_pairs`: the pairs of operands with a given number of digits, split into disjoint
  training and held-out sets (in distribution); :func:`ood_pairs` draws pairs with longer
  operands than any seen in training (out of distribution).
- :func:`training_rows`: a stream of shuffled training problems packed into rows of
  ``length + 1`` tokens, as pretraining packs documents.
- :func:`answer_scores`: per problem, the mean cross-entropy of its answer tokens (the answer's
  digits and the closing ``;``, which fixes its length) given ``;a*b=``, and whether the model's
  argmax reproduces all of them (exactly what greedy decoding would answer).
- :func:`prompt_states` and :func:`separation`: each block's hidden state at the ``=`` of each
  prompt, and how far apart two tasks' states lie: the squared distance between their means over
  the mean within-task variance (a Fisher ratio, unchanged by a rescaling of the states).

Example:
    >>> train, test = operand_pairs((1, 2), heldout=0.1, seed=0)
    >>> text(train[0], "*")  # doctest: +SKIP
    '19*77=3641;'
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rotelab.errors import RotelabError
from rotelab.lm import block_outputs

__all__ = [
    "END",
    "OPS",
    "VOCAB",
    "answer_scores",
    "encode",
    "fresh_model",
    "ood_pairs",
    "operand_pairs",
    "prompt_states",
    "separation",
    "text",
    "training_rows",
]

#: The symbols, one token each (index = token id).
VOCAB = "0123456789*+=;"
#: The operators and what they compute.
OPS = {"*": lambda a, b: a * b, "+": lambda a, b: a + b}
#: The token that ends a problem (and starts an evaluation prompt).
END = VOCAB.index(";")
_ID = {c: i for i, c in enumerate(VOCAB)}


def encode(s: str) -> list[int]:
    """Token ids of ``s`` (characters of :data:`VOCAB` only)."""
    return [_ID[c] for c in s]


def text(pair: tuple[int, int], op: str) -> str:
    """``a<op>b=`` + the answer's digits, least significant first, + ``;``."""
    a, b = pair
    return f"{a}{op}{b}={str(OPS[op](a, b))[::-1]};"


def _digits_range(digits: tuple[int, int]) -> tuple[int, int]:
    lo, hi = digits
    if not 1 <= lo <= hi:
        raise RotelabError(f"operand digits must be 1 <= min <= max, got {lo}..{hi}")
    return (0 if lo == 1 else 10 ** (lo - 1)), 10**hi - 1


def operand_pairs(
    digits: tuple[int, int], *, heldout: float, seed: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Every pair of operands with ``digits[0]..digits[1]`` digits, shuffled, split into
    ``(train, heldout)`` with a fraction ``heldout`` of them held out (disjoint)."""
    if not 0 < heldout < 1:
        raise RotelabError(f"the held-out fraction must be in (0, 1), got {heldout}")
    lo, hi = _digits_range(digits)
    if (hi - lo + 1) ** 2 > 4_000_000:
        raise RotelabError(f"operands of up to {digits[1]} digits make too many pairs to list")
    pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = max(1, int(round(heldout * len(pairs))))
    test = [pairs[i] for i in order[:n_test]]
    train = [pairs[i] for i in order[n_test:]]
    return train, test


def ood_pairs(digits: int, n: int, *, seed: int) -> list[tuple[int, int]]:
    """``n`` pairs of operands with exactly ``digits`` digits each (drawn with replacement)."""
    if digits < 1 or n < 1:
        raise RotelabError(f"OOD operands need >= 1 digit and >= 1 pair, got {digits}, {n}")
    lo = 10 ** (digits - 1) if digits > 1 else 0
    rng = np.random.default_rng(seed)
    return [tuple(int(x) for x in rng.integers(lo, 10**digits, 2)) for _ in range(n)]


def training_rows(
    pairs: Sequence[tuple[int, int]], op: str, *, length: int, batch: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless ``(batch, length + 1)`` batches: shuffled epochs of the problems' texts, packed
    back to back (a row may start or end inside a problem, as in pretraining)."""
    rng = np.random.default_rng(seed)
    buf: list[int] = []
    need = batch * (length + 1)
    while True:
        while len(buf) < need:
            for i in rng.permutation(len(pairs)):
                buf.extend(encode(text(pairs[i], op)))
        yield torch.tensor(buf[:need], dtype=torch.long).view(batch, length + 1)
        buf = buf[need:]


def fresh_model(
    *, hidden: int = 64, blocks: int = 2, heads: int = 4, context: int = 64, seed: int = 0
):
    """A randomly initialised ``LlamaForCausalLM`` over :data:`VOCAB` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise RotelabError(f"hidden {hidden} is not divisible by {heads} heads")
    cfg = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=context, tie_word_embeddings=True,
        bos_token_id=END, eos_token_id=END, pad_token_id=END,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _prompts(pairs: Sequence[tuple[int, int]], op: str) -> list[list[int]]:
    return [[END, *encode(text(p, op))] for p in pairs]


@torch.no_grad()
def answer_scores(
    model: torch.nn.Module, pairs: Sequence[tuple[int, int]], op: str, *, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Per problem, the mean CE (nats) of its answer tokens given ``;a<op>b=`` and whether
    every one of them is the model's argmax; ``(ce, exact)``, each ``(len(pairs),)``."""
    was_training = model.training
    model.eval()
    seqs = _prompts(pairs, op)
    ce, exact = np.empty(len(seqs)), np.empty(len(seqs), dtype=bool)
    try:
        for s in range(0, len(seqs), batch):
            chunk = seqs[s : s + batch]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), END, dtype=torch.long)
            for i, q in enumerate(chunk):
                ids[i, : len(q)] = torch.tensor(q)
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)  # (B, T, V)
            for i, q in enumerate(chunk):
                start = q.index(_ID["="]) + 1  # the answer's first token
                tgt = torch.tensor(q[start:])
                rows = logp[i, start - 1 : len(q) - 1]  # the positions that predict them
                ce[s + i] = float(-rows.gather(1, tgt[:, None]).mean())
                exact[s + i] = bool((rows.argmax(-1) == tgt).all())
    finally:
        model.train(was_training)
    return ce, exact


@torch.no_grad()
def prompt_states(
    model: torch.nn.Module, pairs: Sequence[tuple[int, int]], op: str, *, batch: int = 256
) -> np.ndarray:
    """Each block's output at the ``=`` of each prompt ``;a<op>b=``: ``(blocks, n, hidden)``."""
    out = []
    with block_outputs(model) as captured:
        for s in range(0, len(pairs), batch):
            chunk = [q[: q.index(_ID["="]) + 1] for q in _prompts(pairs[s : s + batch], op)]
            width = max(map(len, chunk))
            # right-padded (causal: the padding after '=' cannot change the state at '=')
            ids = torch.full((len(chunk), width), END, dtype=torch.long)
            for i, q in enumerate(chunk):
                ids[i, : len(q)] = torch.tensor(q)
            last = torch.tensor([len(q) - 1 for q in chunk])
            captured.clear()
            model(input_ids=ids)
            rows = torch.arange(len(chunk))
            out.append(torch.stack([h[rows, last].float() for h in captured]))  # (blocks, B, D)
    return torch.cat(out, 1).numpy()


def separation(a: np.ndarray, b: np.ndarray) -> float:
    """``‖mean(a) − mean(b)‖² / ((tr Σ_a + tr Σ_b) / 2)`` for ``(n, dim)`` states of two tasks:
    how many within-task spreads apart the two tasks' representations lie (0: on top of each
    other); unchanged when all states are scaled by one factor."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("separation needs at least two states per task")
    between = float(np.square(a.mean(0) - b.mean(0)).sum())
    within = float((a.var(0, ddof=1).sum() + b.var(0, ddof=1).sum()) / 2)
    return between / within if within > 0 else float("inf")

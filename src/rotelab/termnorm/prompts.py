"""How a term -> ID pair becomes tokens: one template for pretraining text, fine-tuning and
evaluation, so the model is always asked in the words it learned from.

Prompt and target are encoded separately and concatenated (``prompt_ids + target_ids``): the
target's tokens are then the same in training and scoring, never re-split by the tokenizer at
the prompt boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rotelab.lm import encode_texts

__all__ = ["TEMPLATES", "Template", "encode_pairs"]


@dataclass(frozen=True)
class Template:
    """``prompt`` (with ``{term}``) asks; ``target`` (with ``{id}``) is the answer the model must
    reproduce exactly; ``end`` closes a pretraining statement."""

    prompt: str
    target: str = " {id}"
    end: str = "."

    def statement(self, term: str, ident: str) -> str:
        """The pair as one sentence of pretraining text."""
        return self.prompt.format(term=term) + self.target.format(id=ident) + self.end


#: ``synthetic`` matches the organism's pretraining statements; the others ask a real model.
TEMPLATES = {
    "synthetic": Template("{term} has the identifier"),
    "hpo": Template("The Human Phenotype Ontology ID of {term} is"),
    "genes": Template("The NCBI Gene ID of the gene {term} is"),
    "file": Template("The identifier of {term} is"),
}


def encode_pairs(
    tokenizer, terms: Sequence[str], ids: Sequence[str], template: Template
) -> tuple[list[list[int]], list[int]]:
    """Token ids of ``prompt + target`` per pair and where each target starts."""
    terms, ids = list(terms), list(ids)
    if len(terms) != len(ids):
        raise ValueError(f"{len(terms)} terms but {len(ids)} IDs")
    if not terms:
        return [], []
    # one batched call per side: a fast tokenizer encodes a list far faster than string by string
    prompts = encode_texts(tokenizer, [template.prompt.format(term=t) for t in terms])
    targets = encode_texts(tokenizer, [template.target.format(id=i) for i in ids])
    seqs = [p + t for p, t in zip(prompts, targets)]
    starts = [len(p) for p in prompts]
    return seqs, starts

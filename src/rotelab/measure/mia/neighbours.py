"""The neighbourhood attack's neighbours and scores (Mattern et al. 2023, "Membership inference
attacks against language models via neighbourhood comparison").

A member's likelihood stands out from that of texts close to it; a non-member's does not. The
neighbours come from a pluggable :class:`NeighbourGenerator`, by default word substitution from a
corpus vocabulary (:class:`WordSubstitution`: no masked LM needed).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.mia._scoring import mean_nll, span_nll
from rotelab.measure.mia.inputs import MIAText

__all__ = ["NeighbourGenerator", "WordSubstitution", "neighbourhood_scores"]


class NeighbourGenerator(Protocol):
    """Makes ``n`` perturbed neighbours of a text; must be deterministic given ``rng``."""

    def __call__(self, text: str, n: int, rng: np.random.Generator) -> list[str]: ...


_WORD = re.compile(r"\w+")


def _word_class(word: str) -> str:
    if word.isdigit():
        return "digit"
    if word[:1].isupper():
        return "upper"
    return "lower" if word.isalpha() else "other"


@dataclass
class WordSubstitution:
    """Neighbours by replacing a fraction of words with random corpus words of the same shape.

    Shape classes (digits, Capitalized, lowercase, other) keep a neighbour plausible: a digit in a
    secret is swapped for a digit, a name for a capitalized word. No hub model is needed.

    Args:
        vocabulary: candidate replacement words (use :meth:`from_texts`).
        fraction: share of the words replaced in each neighbour (at least one).
    """

    vocabulary: Sequence[str]
    fraction: float = 0.15

    def __post_init__(self) -> None:
        check_neighbour_fraction(self.fraction)
        by_class: dict[str, list[str]] = {}
        for word in sorted(set(self.vocabulary)):
            by_class.setdefault(_word_class(word), []).append(word)
        self._by_class = by_class

    @classmethod
    def from_texts(cls, texts: Iterable[str], fraction: float = 0.15) -> WordSubstitution:
        """Vocabulary = every word in ``texts``."""
        vocab = {w for t in texts for w in _WORD.findall(t)}
        return cls(sorted(vocab), fraction)

    def __call__(self, text: str, n: int, rng: np.random.Generator) -> list[str]:
        matches = list(_WORD.finditer(text))
        if not matches:
            return [text] * n
        out = []
        for _ in range(n):
            m = max(1, round(self.fraction * len(matches)))
            chosen = sorted(rng.choice(len(matches), size=min(m, len(matches)), replace=False))
            pieces, last = [], 0
            for j in chosen:
                match = matches[j]
                pool = self._by_class.get(_word_class(match.group()), [])
                options = [w for w in pool if w != match.group()] if len(pool) < 64 else pool
                new = options[int(rng.integers(len(options)))] if options else match.group()
                if new == match.group() and len(pool) > 1:
                    new = pool[(pool.index(new) + 1) % len(pool)]
                pieces += [text[last : match.start()], new]
                last = match.end()
            pieces.append(text[last:])
            out.append("".join(pieces))
        return out


def check_neighbour_fraction(fraction: float) -> None:
    """One line for a substitution fraction outside (0, 1]."""
    if not 0 < fraction <= 1:
        raise RotelabError(f"neighbour substitution fraction must be in (0, 1], got {fraction}")


def _text_rng(seed: int, text_id: str) -> np.random.Generator:
    # Seeded by the text's id, not its position, so a text gets the same neighbours in any split.
    return np.random.default_rng([seed, zlib.crc32(text_id.encode("utf-8"))])


def neighbourhood_scores(
    lm: LM,
    items: Sequence[MIAText],
    generator: NeighbourGenerator,
    *,
    n_neighbours: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Neighbourhood attack: mean NLL of neighbours of the span - NLL of the span, shape (n,).

    Only the scored span is perturbed; the tokens before it stay, so the neighbours are scored in
    the same context as the original.
    """
    if n_neighbours < 1:
        raise RotelabError("the neighbourhood attack needs at least one neighbour")
    ctx = lm.context_length
    seqs, starts, owner = [], [], []
    for i, it in enumerate(items):
        start, end = it.span
        span_text = lm.decode(it.tokens[start:end])
        for nb in generator(span_text, n_neighbours, _text_rng(seed, it.text_id)):
            seq = (list(it.tokens[:start]) + lm.encode(nb))[:ctx]
            if len(seq) <= start:  # a neighbour that encodes to nothing keeps the original span
                seq = list(it.tokens[:end])
            seqs.append(seq)
            starts.append(start)
            owner.append(i)
    kw = {"batch_size": batch_size, "progress": progress}
    nb_nll = mean_nll(lm, seqs, starts, **kw)
    nb_mean = np.bincount(owner, weights=nb_nll, minlength=len(items)) / np.bincount(
        owner, minlength=len(items)
    )
    return nb_mean - span_nll(lm, items, **kw)

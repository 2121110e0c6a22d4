"""Teacher-forced span scoring shared by the attacks and the neighbourhood scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rotelab.lm import LM, TokenScores
from rotelab.measure.mia.inputs import MIAText


def loss_score(logprobs: np.ndarray) -> float:
    """LOSS: mean log-probability of the scored tokens (= minus the NLL). ``logprobs``: (n,)."""
    return float(np.mean(logprobs, dtype=np.float64))


def span_scores(lm: LM, items: Sequence[MIAText], **kw) -> list[TokenScores]:
    """Each item's span scored given the tokens before it (``kw`` go to :meth:`LM.score`)."""
    return lm.score(
        [it.tokens[: it.span[1]] for it in items],
        targets_from=[it.span[0] for it in items],
        **kw,
    )


def mean_nll(lm: LM, seqs: Sequence[Sequence[int]], starts: Sequence[int], **kw) -> np.ndarray:
    """Mean NLL of ``seqs[i][starts[i]:]`` for each sequence, shape (n,)."""
    scores = lm.score(seqs, targets_from=list(starts), **kw)
    return np.array([-loss_score(sc.logprobs) for sc in scores])


def span_nll(lm: LM, items: Sequence[MIAText], **kw) -> np.ndarray:
    """Mean NLL of each item's span, shape (n,)."""
    seqs = [it.tokens[: it.span[1]] for it in items]
    return mean_nll(lm, seqs, [it.span[0] for it in items], **kw)

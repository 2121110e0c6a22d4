"""What a model still does well beside memorizing: held-out perplexity and probe accuracy.

Every perplexity and probe accuracy rotelab reports comes from here (``compare``, the demo's ρ
sweep, the organism's description), so the numbers share one definition:

- **perplexity** is ``exp`` of the mean negative log-likelihood of every predicted token, pooled
  over tokens (not averaged per window), teacher forced; the first token of each window is context
  only. Documents are joined by end-of-text and cut into context-length windows
  (:func:`rotelab.data.windows.stream_chunks`), as the organism was trained, so every token is
  predicted from real context. The value depends on how much text is read: the organism's
  description reads its held-out text up to ``eval_tokens`` (the default organism's 18.6k
  held-out tokens are all under its 20,000), ``compare`` the first ``--heldout-tokens`` (the
  demo: 12,000), the demo's ρ sweep whole windows up to 8,192 predicted tokens.
- **probe accuracy** is greedy exact-answer accuracy: a probe is correct when greedy decoding from
  its prompt reproduces the whole answer, decided exactly from one teacher-forced pass (the argmax
  equals the answer token at every answer position).

Example:
    >>> ppl = perplexity(lm, org.heldout_docs(), max_tokens=12_000)  # doctest: +SKIP
    >>> ppl.value, ppl.frame()  # the number, and one row per window  # doctest: +SKIP
    >>> probe_accuracy(lm, org.probes).groupby("task")["correct"].mean()  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rotelab.data.windows import stream_chunks
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.registry import register_metric

__all__ = ["Perplexity", "perplexity", "pooled_perplexity", "probe_accuracy"]

register_metric(
    "perplexity", higher_is_better=False, description="token perplexity on held-out text"
)


@dataclass(frozen=True)
class Perplexity:
    """The per-token negative log-likelihoods of some windows, and their perplexity.

    Attributes:
        token_nll: per window, ``(len(window) - 1,)`` float64 ``-log p(token | tokens before)``.
    """

    token_nll: list[np.ndarray]

    @property
    def value(self) -> float:
        """``exp`` of the mean NLL over every predicted token of every window."""
        return float(np.exp(np.concatenate(self.token_nll).mean()))

    @property
    def tokens(self) -> np.ndarray:
        """``(windows,)`` predicted tokens per window."""
        return np.array([len(x) for x in self.token_nll], dtype=np.int64)

    @property
    def nll(self) -> np.ndarray:
        """``(windows,)`` summed NLL per window (float64)."""
        return np.array([float(x.sum()) for x in self.token_nll], dtype=np.float64)

    def frame(self) -> pd.DataFrame:
        """One row per window: ``window, tokens, nll`` (what a resumable run stores)."""
        return pd.DataFrame({
            "window": np.arange(len(self.token_nll)), "tokens": self.tokens, "nll": self.nll,
        })  # fmt: skip


def perplexity(
    lm: LM,
    data: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_tokens: int | None = None,
    length: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Perplexity:
    """Teacher-forced perplexity of ``lm`` on documents or on token windows.

    Args:
        lm: the model.
        data: documents (strings: joined by end-of-text, cut at ``max_tokens`` and into
            ``lm.context_length`` windows) or token windows (lists of ids, used as they are).
        max_tokens: how much of the documents' token stream to read (default: all of it); only
            for documents.
        length: tokens per window cut from documents (default and at most: the context).
        batch_size: windows per forward pass.
        progress: a progress bar.

    Returns:
        A :class:`Perplexity`; ``.value`` is the number.
    """
    if isinstance(data, str):
        raise TypeError("perplexity() takes a list of documents or of token windows, not a str")
    docs = len(data) > 0 and isinstance(data[0], str)
    if docs:
        windows = stream_chunks(
            data, lm.encode, lm.tokenizer.eos_token_id,  # type: ignore[arg-type]
            max_tokens=sys.maxsize if max_tokens is None else max_tokens,
            length=lm.context_length if length is None else min(length, lm.context_length),
        )  # fmt: skip
    elif max_tokens is not None:
        raise ValueError("max_tokens applies to documents; cut token windows before passing them")
    else:
        windows = [list(w) for w in data if len(w) > 1]  # type: ignore[arg-type]
    if not windows:
        raise RotelabError("no text to measure perplexity on (no window of at least 2 tokens)")
    scores = lm.score(windows, targets_from=1, batch_size=batch_size, progress=progress)
    return Perplexity([-s.logprobs.astype(np.float64) for s in scores])


def pooled_perplexity(tokens: np.ndarray, nll: np.ndarray) -> float | np.ndarray:
    """Perplexity from stored per-window rows: ``exp(sum nll / sum tokens)`` over the last axis.

    The same quantity as :attr:`Perplexity.value` (equal up to float summation order), for runs
    that store :meth:`Perplexity.frame` and resume, and for bootstraps over windows (pass
    ``(replicates, windows)`` arrays to get one value per replicate).
    """
    out = np.exp(np.asarray(nll).sum(-1) / np.asarray(tokens).sum(-1))
    return float(out) if np.ndim(out) == 0 else out


def probe_accuracy(
    lm: LM, probes: pd.DataFrame, *, batch_size: int = 32, progress: bool = False
) -> pd.DataFrame:
    """Greedy exact-answer correctness of every probe; accuracy is the mean of ``correct``.

    Args:
        lm: the model.
        probes: rows with ``probe_id, task, subtask, prompt, answer`` (an organism's probes).
        batch_size: probes per forward pass.
        progress: a progress bar.

    Returns:
        One row per probe: ``probe_id, task, subtask, correct``, and ``foil`` (the greedy answer
        is the probe's memorized foil, the organism's planted tasks; else False) and
        ``prefers_answer`` (log P(answer) > log P(foil); True where there is no foil) when the
        probes have a ``foil`` column.
    """
    prompts = [lm.encode(p) for p in probes["prompt"]]
    answers = [lm.encode(a) for a in probes["answer"]]
    has_foil = "foil" in probes.columns
    foils = [(i, lm.encode(f)) for i, f in enumerate(probes["foil"]) if f] if has_foil else []
    seqs = [p + a for p, a in zip(prompts, answers)] + [prompts[i] + f for i, f in foils]
    scores = lm.score(
        seqs,
        targets_from=[len(p) for p in prompts] + [len(prompts[i]) for i, _ in foils],
        batch_size=batch_size,
        progress=progress,
    )
    out = pd.DataFrame({
        "probe_id": probes["probe_id"].to_numpy(), "task": probes["task"].to_numpy(),
        "subtask": probes["subtask"].to_numpy(),
        "correct": [bool(s.argmax_match.all()) for s in scores[: len(prompts)]],
    })  # fmt: skip
    if has_foil:
        hit = np.zeros(len(prompts), dtype=bool)
        prefers = np.ones(len(prompts), dtype=bool)
        for (i, _), s in zip(foils, scores[len(prompts) :]):
            hit[i] = bool(s.argmax_match.all())
            prefers[i] = float(scores[i].logprobs.sum()) > float(s.logprobs.sum())
        out["foil"] = hit
        out["prefers_answer"] = prefers
    return out

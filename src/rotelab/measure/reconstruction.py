"""Whole-document reconstruction: from a document's first N tokens, generate the rest.

Ma et al. 2025 ("Memorization: A Close Look at Books") rebuild a whole book by prompting with its
first 500 tokens and decoding autoregressively, feeding the model's own output back in, to the
book's length; similarity to the true text (Jaccard, Levenshtein, BLEU, ROUGE-L, SequenceMatcher)
is reported over the whole and per chunk. Documents longer than the context are decoded with a
sliding context: when it is full, the oldest half is dropped and decoding continues from the rest.
Every registered similarity metric (:mod:`rotelab.measure.similarity`) is computed per document
and per chunk, and summarised. The ``rotelab reconstruct`` run (inputs, run directory) is
:func:`rotelab.pipelines.reconstruct.reconstruct`.
"""

from __future__ import annotations

import difflib
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import Sampler
from rotelab.measure.similarity import similarity_names, similarity_scores
from rotelab.registry import SIMILARITY, direction
from rotelab.stats import check_group_by, rate_with_ci

__all__ = [
    "ReconstructConfig",
    "Reconstruction",
    "document_columns",
    "reconstruct_documents",
    "reconstruct_tokens",
    "reconstruction_summary",
    "side_by_side_html",
]


@dataclass
class ReconstructConfig:
    """Args:
    prefix_len: tokens of the true document given as the prompt (Ma et al.: 500).
    chunk_len: tokens per chunk of the per-chunk similarity and of the diff.
    max_tokens: stop after this many tokens of each document (``None``: whole document).
    max_docs: reconstruct at most this many documents.
    sample, temperature, top_k, seed: sample instead of greedy decoding.
    """

    prefix_len: int = 64
    chunk_len: int = 32
    max_tokens: int | None = None
    max_docs: int | None = None
    sample: bool = False
    temperature: float | None = None  # None: not given (1.0 when sampling)
    top_k: int | None = None  # None: not given (0 when sampling)
    seed: int = 0

    def with_defaults(self) -> ReconstructConfig:
        """A copy with the sampler's defaults filled in."""
        return replace(
            self,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=0 if self.top_k is None else self.top_k,
        )

    def validate(self) -> None:
        if self.prefix_len < 1:
            raise RotelabError(f"prefix length must be >= 1, got {self.prefix_len}")
        if self.chunk_len < 1:
            raise RotelabError(f"chunk length must be >= 1, got {self.chunk_len}")
        if self.max_tokens is not None and self.max_tokens <= self.prefix_len:
            raise RotelabError(
                f"--max-tokens ({self.max_tokens}) must exceed --prefix-len ({self.prefix_len})"
            )
        if self.max_docs is not None and self.max_docs < 1:
            raise RotelabError(f"--max-docs must be >= 1, got {self.max_docs}")
        # Checked with or without --sample: a bad value is a mistake either way.
        if self.temperature is not None and not 0 < self.temperature < math.inf:
            raise RotelabError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise RotelabError(f"top-k must be >= 0 (0 = whole vocabulary), got {self.top_k}")
        given = [f for f, v in (("--temperature", self.temperature), ("--top-k", self.top_k))
                 if v is not None]  # fmt: skip
        if given and not self.sample:
            raise RotelabError(
                f"{', '.join(given)} shape{'s' if len(given) == 1 else ''} the sampler, so "
                f"{'it does' if len(given) == 1 else 'they do'} not apply to greedy decoding; "
                "add --sample or leave them out"
            )


def reconstruct_tokens(
    lm,
    prefixes: Sequence[Sequence[int]],
    lengths: Sequence[int],
    *,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[int]]:
    """Continue each prefix autoregressively to ``lengths[i]`` total tokens; returns new tokens.

    Within the context this is one KV-cached decode; past it, the context slides by half its
    length (re-encoding the kept half) and decoding resumes, so any length can be reached.
    """
    ctx = lm.context_length
    contexts = [list(p) for p in prefixes]
    produced: list[list[int]] = [[] for _ in prefixes]
    step = 0
    while True:
        todo = [i for i, p in enumerate(prefixes) if len(p) + len(produced[i]) < lengths[i]]
        if not todo:
            return produced
        budgets = []
        for i in todo:
            if len(contexts[i]) >= ctx:
                contexts[i] = contexts[i][-(ctx // 2) :]
            remaining = lengths[i] - len(prefixes[i]) - len(produced[i])
            budgets.append(min(remaining, ctx - len(contexts[i])))
        new = lm.generate(
            [contexts[i] for i in todo], budgets, batch_size=batch_size, seed=seed + step,
            sampler=Sampler(greedy=not sample, temperature=temperature, top_k=top_k),
        )  # fmt: skip
        for i, tokens in zip(todo, new):
            produced[i].extend(tokens)
            contexts[i].extend(tokens)
        step += 1


def side_by_side_html(
    lm, reference: Sequence[int], generated: Sequence[int], chunk_len: int, title: str
) -> str:
    """A self-contained HTML side-by-side diff, one line per chunk of decoded text."""

    def lines(ids: Sequence[int]) -> list[str]:
        return [
            lm.decode(ids[j : j + chunk_len]).replace("\n", "⏎")
            for j in range(0, len(ids), chunk_len)
        ]

    table = difflib.HtmlDiff(wrapcolumn=70).make_file(
        lines(reference), lines(generated), "true text", "reconstruction", charset="utf-8"
    )
    return table.replace("<title></title>", f"<title>{html.escape(title)}</title>")


def document_columns(meta: Iterable[str]) -> list[str]:
    """The columns of a document's row in :class:`Reconstruction` for metadata keys ``meta``."""
    return ["doc_id", *meta, "doc_tokens", "prefix_len", "generated_tokens",
            *similarity_names(), "generated"]  # fmt: skip


@dataclass
class Reconstruction:
    """What :func:`reconstruct_documents` returns.

    Attributes:
        documents: one row per document (:func:`document_columns`): every similarity metric over
            the whole continuation, and the ``generated`` tokens.
        chunks: one row per ``chunk_len`` tokens of each continuation: ``doc_id, chunk, start``
            and every similarity metric.
        diffs: ``(doc_id, html)`` side-by-side diffs (:func:`side_by_side_html`), one per document.
    """

    documents: pd.DataFrame
    chunks: pd.DataFrame
    diffs: list[tuple[str, str]]


def reconstruct_documents(
    lm,
    docs: Sequence[tuple[str, Sequence[int], dict]],
    cfg: ReconstructConfig,
    *,
    batch_size: int = 16,
) -> Reconstruction:
    """Reconstruct each ``(doc_id, tokens, meta)`` from its first ``cfg.prefix_len`` tokens and
    compare the continuation with the true text, whole and per chunk."""
    cfg = cfg.with_defaults()
    doc_rows, chunk_rows, diffs = [], [], []
    ends = [min(len(t), cfg.max_tokens or len(t)) for _, t, _ in docs]
    gens = reconstruct_tokens(
        lm, [t[: cfg.prefix_len] for _, t, _ in docs], ends, sample=cfg.sample,
        temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed, batch_size=batch_size,
    )  # fmt: skip
    for (doc_id, tokens, meta), end, gen in zip(docs, ends, gens):
        ref = tokens[cfg.prefix_len : end]
        doc_rows.append({"doc_id": doc_id, **meta, "doc_tokens": len(tokens),
                         "prefix_len": cfg.prefix_len, "generated_tokens": len(gen),
                         **similarity_scores(gen, ref, decode=lm.decode),
                         "generated": gen})  # fmt: skip
        for j in range(0, len(ref), cfg.chunk_len):
            piece = (gen[j : j + cfg.chunk_len], ref[j : j + cfg.chunk_len])
            chunk_rows.append({"doc_id": doc_id, "chunk": j // cfg.chunk_len,
                               "start": cfg.prefix_len + j,
                               **similarity_scores(*piece, decode=lm.decode)})  # fmt: skip
        diffs.append(
            (doc_id, side_by_side_html(lm, ref, gen, cfg.chunk_len, f"{doc_id}: reconstruction"))
        )
    return Reconstruction(pd.DataFrame(doc_rows), pd.DataFrame(chunk_rows), diffs)


def reconstruction_summary(result: Reconstruction, groups: Sequence[str]) -> dict:
    """Means and medians of the similarity scores and rates of the verdicts (with CIs), overall
    and, under ``by_group``, per value of each metadata column in ``groups``."""
    frame = result.documents
    summary = {**_fields(frame, result.chunks), "by_group": {}}
    check_group_by(groups, frame.columns)
    for g in groups:
        summary["by_group"][g] = {
            str(k): _fields(part, None) for k, part in frame.groupby(g, sort=True)
        }
    return summary


def _fields(frame: pd.DataFrame, chunks: pd.DataFrame | None) -> dict:
    out: dict = {"documents": len(frame)}
    for entry in SIMILARITY:
        name = entry.name
        if entry.meta.get("verdict", False):
            r = rate_with_ci(frame[name].astype(bool).tolist())
            out.update(r.as_dict(f"{name}_rate", count=name, total="_n"))
            out.pop("_n")
        else:
            values = frame[name].to_numpy(dtype=float)
            out[f"mean_{name}"] = float(values.mean())
            out[f"median_{name}"] = float(np.median(values))
        out.setdefault("higher_is_better", {})[name] = direction(name, "similarity")
    if chunks is not None and len(chunks):
        out["chunks"] = len(chunks)
        out["chunk_mean_jaccard"] = float(chunks["jaccard"].mean())
        out["chunk_loose_rate"] = float(chunks["loose"].mean())
    return out

"""Whole-document reconstruction: from a document's first N tokens, generate the rest.

Ma et al. 2025 ("Memorization: A Close Look at Books") rebuild a whole book by prompting with its
first 500 tokens and decoding autoregressively, feeding the model's own output back in, to the
book's length; similarity to the true text (Jaccard, Levenshtein, BLEU, ROUGE-L, SequenceMatcher)
is reported over the whole and per chunk. Documents longer than the context are decoded with a
sliding context: when it is full, the oldest half is dropped and decoding continues from the rest.
"""

from __future__ import annotations

import difflib
import html
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import Sampler
from rotelab.measure.similarity import METRICS, similarity_scores
from rotelab.stats import rate_with_ci

__all__ = ["ReconstructConfig", "reconstruct", "reconstruct_tokens", "side_by_side_html"]


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
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0

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


def _documents(model, data, field, errors, corpus_format, cfg):
    """(lm, list of (doc_id, tokens, meta), groups, described)."""
    from rotelab.lm import LM

    if data is None:
        from rotelab.pipelines.inputs import load_model, organism_of

        org = organism_of(model)
        if org is None:
            raise RotelabError(
                f"{model} is not an organism; give --data (a corpus) to reconstruct with it"
            )
        lm = LM.load(org.path)
        led = org.ledger
        led = led[led["kind"] == "passage"]
        docs = [
            (r.item_id, list(map(int, r.tokens)), {"count": int(r.count), "phase": r.phase})
            for r in led.itertuples(index=False)
        ]
        return lm, docs, ["count"], f"organism passages ({org.path})"
    from rotelab.data.corpus import read_corpus

    lm = load_model(model)
    docs = []
    for doc in read_corpus(data, field=field, errors=errors, corpus_format=corpus_format):
        meta = {k: v for k, v in doc.meta.items() if isinstance(v, (str, int, float, bool))}
        docs.append((doc.doc_id, lm.encode(doc.text), meta))
        if cfg.max_docs is not None and len(docs) >= cfg.max_docs:
            break
    return lm, docs, [], str(data)


def reconstruct(
    model: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    *,
    config: ReconstructConfig | None = None,
    group_by: Sequence[str] = (),
    out: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    field: str = "text",
    errors: str = "strict",
    corpus_format: str = "auto",
    batch_size: int = 16,
) -> tuple[Path, dict]:
    """Reconstruct documents from their first ``prefix_len`` tokens and write a run directory.

    With neither ``model`` nor ``data`` the organism's passages are reconstructed (grouped by
    insertion count). Writes ``results/documents`` (per document: every similarity metric over the
    whole continuation), ``results/chunks`` (per chunk), ``diffs/<doc>.html`` (side by side) and
    ``summary.json`` (means overall and per group, strict/loose rates with CIs).
    """
    from rotelab.runs import Run

    cfg = config or ReconstructConfig()
    cfg.validate()
    if batch_size < 1:  # before the model is loaded, not deep inside decoding
        raise RotelabError(f"--batch-size must be >= 1, got {batch_size}")
    settings = {"model": model, "data": data, **asdict(cfg), "group_by": list(group_by),
                "field": field, "errors": errors, "format": corpus_format,
                "batch_size": batch_size}  # fmt: skip
    lm, docs, default_groups, described = _documents(
        model, data, field, errors, corpus_format, cfg
    )
    if cfg.max_docs is not None:
        docs = docs[: cfg.max_docs]
    docs = [d for d in docs if len(d[1]) > cfg.prefix_len]
    if not docs:
        raise RotelabError(
            f"no document is longer than --prefix-len ({cfg.prefix_len} tokens); use a shorter prefix"
        )
    groups = list(group_by) or default_groups
    with Run.create(
        out, "reconstruct", settings, resume=resume, force=force, inputs=(model, data)
    ) as run:
        summary = run.summary() if resume and run.has_part("documents", "00000") else None
        if summary is None:
            summary = _reconstruct(run, lm, docs, groups, cfg, batch_size, described)
    return run.path, summary


def _reconstruct(run, lm, docs, groups, cfg: ReconstructConfig, batch_size: int, described):
    """Decode, score and write every document of ``docs`` into ``run``; returns the summary."""
    doc_rows, chunk_rows = [], []
    ends = [min(len(t), cfg.max_tokens or len(t)) for _, t, _ in docs]
    gens = reconstruct_tokens(
        lm, [t[: cfg.prefix_len] for _, t, _ in docs], ends, sample=cfg.sample,
        temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed, batch_size=batch_size,
    )  # fmt: skip
    (run.path / "diffs").mkdir(exist_ok=True)
    for (doc_id, tokens, meta), end, gen in zip(docs, ends, gens):
        ref = tokens[cfg.prefix_len : end]
        doc_rows.append({"doc_id": doc_id, **meta, "doc_tokens": len(tokens),
                         "prefix_len": cfg.prefix_len, "generated_tokens": len(gen),
                         **similarity_scores(gen, ref), "generated": gen})  # fmt: skip
        for j in range(0, len(ref), cfg.chunk_len):
            chunk_rows.append({"doc_id": doc_id, "chunk": j // cfg.chunk_len,
                               "start": cfg.prefix_len + j,
                               **similarity_scores(gen[j : j + cfg.chunk_len], ref[j : j + cfg.chunk_len])})  # fmt: skip
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(doc_id))
        (run.path / "diffs" / f"{safe}.html").write_text(
            side_by_side_html(lm, ref, gen, cfg.chunk_len, f"{doc_id}: reconstruction"),
            encoding="utf-8",
        )
    frame = pd.DataFrame(doc_rows)
    run.write_table("documents", frame)
    run.write_table("chunks", pd.DataFrame(chunk_rows))
    summary = {"model": lm.name, "data": described, **_fields(frame, pd.DataFrame(chunk_rows)),
               "by_group": {}}  # fmt: skip
    for g in groups:
        if g not in frame.columns:
            raise RotelabError(f"cannot group by {g}: no such metadata column")
        summary["by_group"][g] = {
            str(k): _fields(part, None) for k, part in frame.groupby(g, sort=True)
        }
    run.write_summary(summary)
    return summary


def _fields(frame: pd.DataFrame, chunks: pd.DataFrame | None) -> dict:
    out: dict = {"documents": len(frame)}
    for name, m in METRICS.items():
        if name in ("strict", "loose"):
            r = rate_with_ci(frame[name].astype(bool).tolist())
            out.update(r.as_dict(f"{name}_rate", count=name, total="_n"))
            out.pop("_n")
        else:
            values = frame[name].to_numpy(dtype=float)
            out[f"mean_{name}"] = float(values.mean())
            out[f"median_{name}"] = float(np.median(values))
        out.setdefault("higher_is_better", {})[name] = m.higher_is_better
    if chunks is not None and len(chunks):
        out["chunks"] = len(chunks)
        out["chunk_mean_jaccard"] = float(chunks["jaccard"].mean())
        out["chunk_loose_rate"] = float(chunks["loose"].mean())
    return out

"""``rotelab reconstruct``: rebuild whole documents from their first tokens (Ma et al. 2025).

1. Before any model is loaded or the default organism built: ``--model`` and ``--data`` are
   resolved (:mod:`rotelab.pipelines.inputs`), the options checked, the ``--group-by`` columns
   checked against the rows the documents will have (the organism passages' metadata, or the
   first document's) and the output directory checked.
2. :func:`rotelab.measure.reconstruction.reconstruct_documents` decodes and compares.
3. The run directory gets ``results/documents``, ``results/chunks``, ``diffs/<doc>.html`` and
   ``summary.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from rotelab.data.corpus import read_corpus
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.reconstruction import (
    ReconstructConfig,
    document_columns,
    reconstruct_documents,
    reconstruction_summary,
)
from rotelab.options import CorpusOptions, RunOptions
from rotelab.pipelines.inputs import ModelInput, resolve_corpus, resolve_model
from rotelab.runs import Run
from rotelab.stats import check_group_by

__all__ = ["PASSAGE_GROUPS", "reconstruct"]

#: How the organism's passages are broken down unless ``group_by`` says otherwise.
PASSAGE_GROUPS = ("count",)
#: The metadata of an organism passage.
_PASSAGE_META = ("count", "phase")


def reconstruct(
    model: str | os.PathLike | LM | None = None,
    data: str | os.PathLike | None = None,
    *,
    config: ReconstructConfig | None = None,
    group_by: Sequence[str] = (),
    batch_size: int = 16,
    run: RunOptions = RunOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> tuple[Path, dict]:
    """Reconstruct documents from their first ``prefix_len`` tokens and write a run directory.

    Without ``data`` the model must be an organism (by default the default organism): its
    passages are reconstructed, grouped by insertion count. Writes ``results/documents`` (per
    document: every similarity metric over the whole continuation), ``results/chunks`` (per
    chunk), ``diffs/<doc>.html`` (side by side) and ``summary.json`` (means overall and per group,
    strict/loose rates with CIs). Returns ``(run directory, summary)``.
    """
    cfg = config or ReconstructConfig()
    cfg = replace(cfg, seed=run.one_seed(cfg.seed))
    cfg.validate()
    cfg = cfg.with_defaults()
    if batch_size < 1:
        raise RotelabError(f"--batch-size must be >= 1, got {batch_size}")
    run.check()
    model_in = resolve_model(model)
    data_in = resolve_corpus(data, corpus, model=model_in)
    data_path = data_in.path
    if data_in.scan is None:
        meta, groups = list(_PASSAGE_META), list(group_by) or list(PASSAGE_GROUPS)
    else:  # the scalar fields every document has (the resolver read them all)
        meta, groups = sorted(data_in.scan.fields), list(group_by)
    check_group_by(groups, document_columns(meta))
    Run.check(run.out, resume=run.resume, force=run.force, inputs=(model_in.source, data_path))
    settings = {"model": model, "data": data, **asdict(cfg), "group_by": list(group_by),
                "field": corpus.field, "errors": corpus.errors, "format": corpus.format,
                "batch_size": batch_size}  # fmt: skip

    lm, docs, source, described = _documents(model_in, data, data_path, corpus, cfg)
    if cfg.max_docs is not None:
        docs = docs[: cfg.max_docs]
    docs = [d for d in docs if len(d[1]) > cfg.prefix_len]
    if not docs:
        raise RotelabError(
            f"no document is longer than --prefix-len ({cfg.prefix_len} tokens); use a shorter "
            "prefix"
        )
    with Run.create(
        run.out, "reconstruct", settings, resume=run.resume, force=run.force,
        inputs=(source, data),
    ) as out:  # fmt: skip
        summary = out.summary() if run.resume and out.has_part("documents", "00000") else None
        if summary is None:
            result = reconstruct_documents(lm, docs, cfg, batch_size=batch_size)
            summary = {"model": lm.name, "data": described,
                       **reconstruction_summary(result, groups)}  # fmt: skip
            (out.path / "diffs").mkdir(exist_ok=True)
            for doc_id, page in result.diffs:
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(doc_id))
                (out.path / "diffs" / f"{safe}.html").write_text(page, encoding="utf-8")
            out.write_table("documents", result.documents)
            out.write_table("chunks", result.chunks)
            out.write_summary(summary)
    return out.path, summary


def _scalar(meta: dict) -> dict:
    # Parquet columns need one type: only scalar metadata goes into the documents table.
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}


def _documents(model_in: ModelInput, data, data_path: Path | None, corpus: CorpusOptions, cfg):
    """(lm, list of (doc_id, tokens, meta), the model's source, the data's description)."""
    if data_path is None:
        org = model_in.organism()
        # Loaded from its directory, so the summary names the organism by its path.
        lm = resolve_model(str(org.path)).load()
        led = org.ledger
        led = led[led["kind"] == "passage"]
        docs = [
            (r.item_id, list(map(int, r.tokens)), {"count": int(r.count), "phase": r.phase})
            for r in led.itertuples(index=False)
        ]
        return lm, docs, org.path, f"organism passages ({org.path})"
    lm = model_in.load()
    docs = []
    for doc in read_corpus(data_path, **corpus.read_kwargs()):
        docs.append((doc.doc_id, lm.encode(doc.text), _scalar(doc.meta)))
        if cfg.max_docs is not None and len(docs) >= cfg.max_docs:
            break
    return lm, docs, model_in.source, str(data)

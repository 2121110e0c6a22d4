"""``rotelab extract``: which training text a model reproduces, over a corpus or the organism.

1. Before any model is loaded or the default organism built: ``--model`` and ``--data`` are
   resolved (:mod:`rotelab.pipelines.inputs`), the options checked, the window flags refused
   without ``--data`` (the ledger fixes its own windows), the ``--group-by`` columns checked
   against the rows the windows will have (the ledger's metadata, or the first document's) and
   the output directory checked.
2. The windows stream through :mod:`rotelab.measure.extraction` part by part (one pass, near-tie
   recheck, free-running similarity, verification).
3. Each part is written to the run directory as it is done (so ``--resume`` continues where a run
   stopped), then the per-document spans and ``summary.json``.

Under ``torchrun`` the parts are shared round-robin between processes and rank 0 writes
everything; the rows equal those of one process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.data.corpus import read_corpus
from rotelab.data.windows import Window, check_window_shape
from rotelab.distributed import all_gather_objects, broadcast_object, dist_context, local_device
from rotelab.errors import RotelabError
from rotelab.lm import LM, progress_bar
from rotelab.measure.extraction import (
    LEDGER_META,
    DocumentTally,
    ExtractConfig,
    ExtractionTally,
    corpus_windows,
    default_near_tie,
    free_running,
    ledger_windows,
    recheck_near_ties,
    row_columns,
    score_windows,
    verify_windows,
)
from rotelab.measure.similarity import similarity_names, similarity_scores
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.pipelines.inputs import ModelInput, resolve_corpus, resolve_model
from rotelab.runs import Run
from rotelab.stats import check_group_by

__all__ = ["LEDGER_GROUPS", "ExtractResult", "extract"]

#: How the organism's ledger is broken down unless ``group_by`` says otherwise.
LEDGER_GROUPS = ("count", "kind", "phase", "kind+count")


@dataclass
class ExtractResult:
    """What :func:`extract` returns on every rank (files are written by rank 0 only)."""

    summary: dict
    run_dir: Path | None
    is_main: bool = True


def extract(
    model: str | os.PathLike | LM | None = None,
    data: str | os.PathLike | None = None,
    *,
    config: ExtractConfig | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> ExtractResult:
    """Audit extraction over a corpus (or the organism's ledger) and write a run directory.

    Without ``data`` the model must be an organism (by default the default organism): one window
    per ledger item (prefix → sensitive span, count-0 controls included), rates broken down by
    count, kind and phase. With ``data``, windows slide over every document (``prefix_len``,
    ``suffix_len``, ``stride`` of ``config``; defaults 32, 48, no overlap) and are streamed
    through the model part by part.

    Writes ``results/windows/part-*.parquet`` (one row per window: ``doc_id``, ``offset`` and
    every metric of :func:`~rotelab.measure.extraction.score_windows`, plus the registered
    similarity metrics and ``verified`` when asked), ``results/documents`` (extractable spans and
    covered fraction per document) and ``summary.json`` (``windows``, ``extracted``,
    ``extraction_rate``, ``extraction_rate_ci``, ``mean_matched_prefix``, ..., ``by_group``).

    Example:
        >>> from rotelab.options import RunOptions
        >>> result = extract("path/to/organism", run=RunOptions(out="runs/x"))  # doctest: +SKIP
        >>> result.summary["by_group"]["count"]["64"]["extraction_rate"]  # doctest: +SKIP
    """
    model_in, data_path, cfg, group_by = _check(model, data, config, run, load, corpus)
    settings = {"model": model, "data": data, **asdict(cfg), "device": load.device,
                "dtype": load.dtype, "field": corpus.field, "errors": corpus.errors,
                "format": corpus.format}  # fmt: skip
    t0 = time.perf_counter()
    with dist_context() as (rank, world):
        main = rank == 0
        opts = replace(load, device=local_device(load.device))
        if data_path is None:
            org = model_in.organism()
            # Loaded from its directory, so the summary names the organism by its path.
            loader = resolve_model(str(org.path))
            lm = loader.load(opts)
            source, described = org.path, f"organism ledger ({org.path})"
            ledger = ledger_windows(org.ledger)

            def make_windows() -> Iterator[Window]:
                return iter(ledger)
        else:
            loader = model_in
            lm = loader.load(opts)
            source, described = model_in.source, str(data)
            check_window_shape(cfg.prefix_len, cfg.suffix_len, cfg.stride, lm.context_length)

            def make_windows() -> Iterator[Window]:
                docs = read_corpus(data_path, **corpus.read_kwargs())
                return corpus_windows(docs, lm.encode, cfg.prefix_len, cfg.suffix_len, cfg.stride)

        reduced = lm.dtype not in (torch.float32, torch.float64)
        exact = _LazyModel(loader, opts) if cfg.recheck and reduced else None
        stream, verify_ids = _windows_to_verify(make_windows, cfg)
        out = (
            Run.create(
                run.out,
                "extract",
                settings,
                resume=run.resume,
                force=run.force,
                inputs=(source, data),
            )  # fmt: skip
            if main
            else None
        )
        with out if out is not None else contextlib.nullcontext():
            done = broadcast_object(_done_parts(out) if main else None)
            tally = ExtractionTally(group_by, cfg.free_running)
            docs = DocumentTally(cfg.part_size)
            doc_parts = 0
            n_tokens = verified = verify_ties = rechecked = 0
            with progress_bar(run.progress and main, None, "extracting") as advance:
                parts = _parts(stream, cfg.part_size)
                index = 0
                while batch_parts := list(itertools.islice(parts, world)):
                    # Round-robin: rank r takes part index + r; the parts' contents and batching
                    # do not depend on the number of processes, so neither do the rows.
                    payload: Any = None
                    mine = index + rank
                    if rank < len(batch_parts) and mine not in done:
                        try:
                            payload = _process_part(
                                lm, batch_parts[rank], mine, cfg, verify_ids, mine * cfg.part_size,
                                exact,
                            )  # fmt: skip
                        except RotelabError as exc:  # every rank must reach the gather
                            payload = exc
                    gathered = all_gather_objects(payload)
                    for got in gathered:
                        if isinstance(got, RotelabError):
                            raise got
                    if main:
                        for r, part in enumerate(batch_parts):
                            key = f"{index + r:06d}"
                            frame = gathered[r]
                            if frame is None:  # written by an earlier run (--resume)
                                frame = pd.read_parquet(_part_path(out, key))
                            else:
                                out.write_part("windows", key, frame)
                            tally.feed(frame)
                            for rows in docs.feed(frame):
                                out.write_part("documents", f"{doc_parts:06d}", rows)
                                doc_parts += 1
                            n_tokens += int((frame["prefix_len"] + frame["suffix_len"]).sum())
                            if "rechecked" in frame.columns:
                                rechecked += int(frame["rechecked"].sum())
                            if "verified" in frame.columns:
                                verified += int(frame["verified"].notna().sum())
                                verify_ties += int((frame["verified"] == 0).sum())
                            advance(len(part))
                    index += len(batch_parts)
            summary = None
            if main:
                for rows in docs.finish():
                    out.write_part("documents", f"{doc_parts:06d}", rows)
                    doc_parts += 1
                summary = _summary(lm, cfg, data, described, tally, docs, world, n_tokens, t0)
                if exact is not None:
                    summary["rechecked_in_float32"] = rechecked
                if cfg.verify:
                    summary["verified"] = verified
                    summary["verify_near_tie_disagreements"] = verify_ties
                summary["by_group"] = summary.pop("by_group")  # last: the long part
                out.write_summary(summary)
            summary = broadcast_object(summary)
    return ExtractResult(summary, out.path if out is not None else None, main)


# ------------------------------------------------------------------------ step 1: check
def _check(model, data, config, run, load, corpus):
    """(model, data path or None, config with defaults, groups), all checked, nothing loaded."""
    run.check()
    load.check()
    model_in = resolve_model(model)
    cfg = config or ExtractConfig()
    given = cfg.window_options()
    if data is None and given:
        raise RotelabError(
            f"{', '.join(given)} apply only with --data (a corpus); the organism's ledger fixes "
            "its own windows"
        )
    cfg = replace(cfg.with_defaults(), seed=run.one_seed(cfg.seed))
    cfg.validate()
    data_in = resolve_corpus(data, corpus, model=model_in)
    data_path = data_in.path
    if data_in.scan is None:
        meta = [*LEDGER_META, "doc_tokens"]
        group_by = cfg.group_by or LEDGER_GROUPS
    else:  # the scalar fields every document has (the resolver read them all)
        meta = [*sorted(data_in.scan.fields), "doc_tokens"]
        group_by = cfg.group_by
    columns = row_columns(
        meta, free_running=cfg.free_running, verify=cfg.verify > 0, recheck=cfg.recheck
    )
    check_group_by(group_by, columns)
    Run.check(run.out, resume=run.resume, force=run.force, inputs=(model_in.source, data_path))
    return model_in, data_path, cfg, tuple(group_by)


# ------------------------------------------------------------------------ step 2: measure
def _windows_to_verify(make_windows, cfg: ExtractConfig) -> tuple[Iterator[Window], set[int]]:
    """The window stream (refused when empty) and the indices ``--verify`` decodes."""
    stream = make_windows()
    first = next(stream, None)
    if first is None:
        raise _no_windows(cfg)
    if not cfg.verify:
        return itertools.chain([first], stream), set()
    total = 1 + sum(1 for _ in stream)
    if cfg.verify > total:
        raise RotelabError(
            f"--verify {cfg.verify} is more than the {total} windows; use at most {total}"
        )
    rng = np.random.default_rng(cfg.seed)
    return make_windows(), set(rng.choice(total, size=cfg.verify, replace=False).tolist())


def _no_windows(cfg: ExtractConfig) -> RotelabError:
    return RotelabError(
        f"no windows: the data is empty or every document is shorter than prefix+suffix "
        f"({cfg.prefix_len + cfg.suffix_len} tokens); use shorter windows or more data"
    )


def _parts(windows: Iterator[Window], size: int) -> Iterator[list[Window]]:
    while True:
        part = list(itertools.islice(windows, size))
        if not part:
            return
        yield part


def _process_part(
    lm, part: list[Window], index: int, cfg: ExtractConfig, verify_ids: set[int], first: int, exact
):
    """Score one part (and recheck / decode / verify what was asked); returns its result frame.

    ``exact``: a :class:`_LazyModel` of the float32 model when near-ties are rechecked, else None.
    """
    score_kw = {"temperature": cfg.temperature, "top_k": cfg.top_k, "n": cfg.n, "p": cfg.p,
                "near_tie": cfg.near_tie}  # fmt: skip
    scores = score_windows(lm, part, batch_size=cfg.batch_size, **score_kw)
    if exact is not None:
        if scores["near_tie"].any():
            scores = recheck_near_ties(
                scores, part, exact.get(), batch_size=cfg.batch_size, **score_kw
            )
        else:
            scores = scores.assign(rechecked=False)
    extra: dict[str, list] = {}
    if cfg.free_running:
        gens = free_running(
            lm, part, scores, sample=cfg.sample, temperature=cfg.temperature, top_k=cfg.top_k,
            seed=cfg.seed + index, batch_size=cfg.batch_size,
        )  # fmt: skip
        sims = [similarity_scores(g, w.suffix, decode=lm.decode) for g, w in zip(gens, part)]
        extra["generated"] = gens
        for name in similarity_names():
            extra[name] = [s[name] for s in sims]
    if cfg.verify:
        idx = [j for j in range(len(part)) if first + j in verify_ids]
        checked = np.full(len(part), np.nan)
        if idx:
            # Under --recheck every verdict claims to be the float32 model's, the unflagged ones
            # included: decoding with that model checks the claim where it is not proven.
            model = exact.get() if exact is not None else lm
            chosen = [part[j] for j in idx]
            ver = verify_windows(model, chosen, scores.iloc[idx], batch_size=cfg.batch_size)
            checked[idx] = ver["agrees"].astype(float).to_numpy()
        extra["verified"] = checked  # NaN = not checked, 1 = agrees, 0 = near-tie disagreement
    frame = scores.assign(**extra)
    return frame.drop(columns="first_miss_token")


class _LazyModel:
    """A model loaded on first use (the float32 copy, only if a near-tie or --verify needs it)."""

    def __init__(self, model: ModelInput, options: LoadOptions) -> None:
        self.model, self.options = model, replace(options, dtype="float32")
        self._lm: LM | None = None

    def get(self) -> LM:
        if self._lm is None:
            self._lm = self.model.load(self.options)
        return self._lm


# ------------------------------------------------------------------------ step 3: write
def _part_path(run: Run, key: str) -> Path:
    return run.path / "results" / "windows" / f"part-{key}.parquet"


def _done_parts(run: Run) -> set[int]:
    folder = run.path / "results" / "windows"
    return {int(p.stem.removeprefix("part-")) for p in folder.glob("part-*.parquet")}


def _summary(lm, cfg, data, described, tally, docs, world, n_tokens, t0) -> dict:
    elapsed = time.perf_counter() - t0
    corpus = data is not None
    return {
        "model": lm.name,
        "data": described,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "prefix_len": cfg.prefix_len if corpus else None,
        "suffix_len": cfg.suffix_len if corpus else None,
        "stride": (cfg.stride or cfg.prefix_len + cfg.suffix_len) if corpus else None,
        "near_tie_margin": cfg.near_tie if cfg.near_tie is not None else default_near_tie(lm.dtype),
        "sampler": {"temperature": cfg.temperature, "top_k": cfg.top_k, "n": cfg.n, "p": cfg.p},
        "ci_method": cfg.ci.value,
        "ci_level": 1 - cfg.alpha,
        **tally.summary(cfg.ci, cfg.alpha),
        "documents": docs.documents,
        "mean_extractable_fraction": docs.mean_fraction,
        "processes": world,
        "elapsed_s": round(elapsed, 2),
        "tokens_per_s": round(n_tokens / elapsed, 1) if elapsed > 0 else None,
    }

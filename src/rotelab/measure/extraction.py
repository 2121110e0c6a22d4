"""Extraction: which training text a model reproduces from a prefix, from one teacher-forced pass.

A suffix ``s`` is *k-extractable* (Carlini et al. 2022, "Quantifying Memorization Across Neural
Language Models") if greedy decoding from the k-token prefix ``p`` that precedes it in the training
data reproduces ``s`` exactly. Greedy decoding reproduces ``s`` iff the argmax at every suffix
position of one teacher-forced pass over ``p‖s`` is the true token, and the number of tokens it
reproduces before its first deviation is exactly the length of the leading run of argmax matches:
while the generated text equals the true text, the two computations see the same input. So one
forward pass per window gives, exactly and without decoding:

- the greedy verdict and the greedy matched length (Pythia's memorization score is its ratio),
- the teacher-forced exact-match rate, the suffix log-likelihood,
- the smallest top-1/top-2 logit margin over the positions that decide the verdict, flagging
  near-ties where another precision or kernel could flip the argmax,
- the probability ``p_z`` that a sampler (temperature, top-k) emits the suffix, and the
  (n, p)-discoverable verdict ``1 - (1 - p_z)^n >= p`` (Hayes, Cooper et al. 2025, "Measuring
  memorization in language models via probabilistic extraction").

Free-running metrics (similarity of the decoded continuation after a deviation; Merullo et al.
2025 verdicts) need real decoding; it resumes at the first mismatch, whose greedy token the pass
already knows. :func:`extract` streams windows from a corpus (sliding over whole documents, as Ma
et al. 2025 do over books) or from the organism's ledger, writes per-window rows and per-document
extractable spans to a run directory, and breaks rates down by metadata with binomial intervals.
Under ``torchrun`` the parts of the window stream are shared round-robin between processes and the
rows equal those of one process.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.data.corpus import Document
from rotelab.data.windows import Window, check_window_shape, iter_windows
from rotelab.errors import RotelabError
from rotelab.lm import Sampler
from rotelab.measure.similarity import METRICS, similarity_scores
from rotelab.stats import CIMethod, rate_with_ci

__all__ = [
    "ExtractConfig",
    "ExtractResult",
    "corpus_windows",
    "default_near_tie",
    "document_spans",
    "extract",
    "free_running",
    "ledger_windows",
    "recheck_near_ties",
    "VERDICT_COLUMNS",
    "score_windows",
    "summary_table",
    "verify_windows",
]

#: Per-window columns and their direction (True = higher means more memorization/extraction).
HIGHER_IS_BETTER = {
    "extracted": True,
    "matched_prefix": True,
    "match_rate": True,
    "suffix_logprob": True,
    "sampler_logprob": True,
    "discoverable_prob": True,
    "np_discoverable": True,
    **{name: m.higher_is_better for name, m in METRICS.items()},
}


def default_near_tie(dtype: torch.dtype) -> float:
    """Logit margin below which a greedy choice counts as a near-tie, for a compute dtype.

    fp32 teacher-forced and KV-cache logits agree to ~1e-4. On SmolLM2 a bf16 model's logit gaps
    differ from the fp32 model's with a long tail: over 24k positions where greedy misses the true
    token, its lead over the true token moved by 0.27 at the 99th percentile, 0.42 at the 99.9th,
    0.70 at the 99.99th and 0.91 at most (top-1/top-2 margins alike; about the same with the head
    computed in fp32, so the error comes from the bf16 blocks). The largest error grows with the
    number of positions looked at, so bf16 gets 1.5, 1.65x the largest seen: a measured margin,
    not a bound. fp16 keeps 3 more mantissa bits (0.5). ``--near-tie`` overrides.
    """
    if dtype in (torch.float32, torch.float64):
        return 0.01
    return 1.5 if dtype == torch.bfloat16 else 0.5


@dataclass
class ExtractConfig:
    """What :func:`extract` measures.

    Args:
        prefix_len, suffix_len: window shape in tokens (corpus mode; the ledger fixes its own).
        stride: tokens between window starts; ``None`` = prefix_len + suffix_len (no overlap).
        batch_size: windows per forward pass.
        temperature, top_k: the sampler whose suffix probability ``p_z`` is reported (top_k 0 =
            full vocabulary).
        n, p: (n, p)-discoverable when ``1 - (1 - p_z)^n >= p``.
        near_tie: margin threshold for near-ties; ``None`` picks :func:`default_near_tie`.
        free_running: decode each suffix and compute the similarity metrics.
        sample: free-running continuation sampled with the sampler instead of greedy.
        verify: re-check this many random windows with real greedy decoding.
        recheck: with a reduced-precision model (``dtype`` bfloat16/float16), redo the verdicts of
            the windows flagged as near-ties with the model loaded again in float32
            (:func:`recheck_near_ties`), so the verdicts are the float32 ones; ``verify`` then
            decodes with the float32 model (checking that claim on unflagged windows too),
            ``free_running`` continuations still come from the reduced-precision one. A float32
            model needs no recheck and ignores it.
        group_by: metadata columns (``"kind+count"`` for joint groups) to break rates down by.
        part_size: windows per result part (the unit of resume and of sharding).
        seed: for --verify's choice of windows and for sampling.
        ci: ``wilson`` or ``clopper_pearson``; alpha: 1 - confidence level.
    """

    prefix_len: int = 32
    suffix_len: int = 48
    stride: int | None = None
    batch_size: int = 16
    temperature: float = 1.0
    top_k: int = 40
    n: int = 100
    p: float = 0.5
    near_tie: float | None = None
    free_running: bool = False
    sample: bool = False
    verify: int = 0
    recheck: bool = False
    group_by: tuple[str, ...] = ()
    part_size: int = 1024
    seed: int = 0
    ci: CIMethod = CIMethod.wilson
    alpha: float = 0.05

    def validate(self) -> None:
        """Refuse settings that cannot work, with the fix in the message."""
        check_window_shape(self.prefix_len, self.suffix_len, self.stride, None)
        if self.batch_size < 1:
            raise RotelabError(f"batch size must be >= 1, got {self.batch_size}")
        if self.part_size < 1:
            raise RotelabError(f"part size must be >= 1, got {self.part_size}")
        if not self.temperature > 0:
            raise RotelabError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise RotelabError(f"top-k must be >= 0 (0 = whole vocabulary), got {self.top_k}")
        if self.n < 1:
            raise RotelabError(f"n must be >= 1, got {self.n}")
        if not 0 < self.p <= 1:
            raise RotelabError(f"p must be in (0, 1], got {self.p}")
        if self.near_tie is not None and self.near_tie < 0:
            raise RotelabError(f"near-tie margin must be >= 0, got {self.near_tie}")
        if self.verify < 0:
            raise RotelabError(f"--verify must be >= 0, got {self.verify}")
        if self.sample and not self.free_running:
            raise RotelabError("--sample decodes free-running text; add --free-running")
        self.ci = CIMethod(self.ci)


# ------------------------------------------------------------------------ window sources
def ledger_windows(ledger: pd.DataFrame) -> list[Window]:
    """One window per ledger item: ``prefix_tokens`` → ``suffix_tokens``, with count/kind/phase."""
    need = {"item_id", "prefix_tokens", "suffix_tokens"}
    if not need <= set(ledger.columns):
        raise RotelabError(f"the ledger lacks columns {sorted(need - set(ledger.columns))}")
    meta_cols = [c for c in ("count", "kind", "phase") if c in ledger.columns]
    out = []
    for row in ledger.itertuples(index=False):
        prefix, suffix = list(map(int, row.prefix_tokens)), list(map(int, row.suffix_tokens))
        meta = {c: getattr(row, c) for c in meta_cols}
        n_tokens = int(getattr(row, "n_tokens", len(prefix) + len(suffix)))
        meta["doc_tokens"] = n_tokens
        out.append(Window(str(row.item_id), 0, prefix, suffix, meta))
    return out


def _scalar_meta(meta: dict) -> dict:
    # Parquet columns need one scalar type; nested metadata is kept out of result rows.
    return {k: v for k, v in meta.items() if v is None or isinstance(v, (str, int, float, bool))}


def corpus_windows(
    docs: Iterable, encode, prefix_len: int, suffix_len: int, stride: int | None
) -> Iterator[Window]:
    """Sliding windows over whole documents, streamed; each carries ``doc_tokens`` in its meta."""
    for doc in docs:
        ids = encode(doc.text)
        tagged = Document(doc.doc_id, doc.text, {**_scalar_meta(doc.meta), "doc_tokens": len(ids)})
        yield from iter_windows([tagged], lambda _text, ids=ids: ids, prefix_len, suffix_len, stride)


# ------------------------------------------------------------------------ one pass
def score_windows(
    lm,
    windows: Sequence[Window],
    *,
    batch_size: int = 16,
    temperature: float = 1.0,
    top_k: int = 40,
    n: int = 100,
    p: float = 0.5,
    near_tie: float | None = None,
) -> pd.DataFrame:
    """The one-pass extraction metrics of each window, in input order.

    Args:
        lm: a :class:`rotelab.lm.LM`.
        windows: prefix/suffix windows (each prefix >= 1 token).
        batch_size: windows per forward pass.
        temperature, top_k: the sampler of ``sampler_logprob`` (log p_z).
        n, p: the (n, p)-discoverable verdict.
        near_tie: margin threshold; ``None``: :func:`default_near_tie` of the model's dtype.

    Returns:
        One row per window: ``doc_id, offset, prefix_len, suffix_len``, the metadata, and
        ``extracted`` (bool: greedy reproduces the whole suffix), ``matched_prefix`` (int: tokens
        greedy reproduces before its first deviation), ``match_rate`` (teacher-forced exact-match
        rate), ``min_margin`` (smallest top-1/top-2 logit margin over the suffix),
        ``decisive_margin`` (the smallest logit gap the verdict and matched length hang on: the
        true token's lead over the runner-up at each position greedy reproduces, and the greedy
        token's lead over the true one at the first deviation), ``near_tie``
        (decisive_margin < near_tie: numerical noise of that size could change the verdict),
        ``suffix_logprob`` (sum of log p), ``sampler_logprob`` (log p_z), ``discoverable_prob``
        (1 - (1 - p_z)^n) and ``np_discoverable``.
    """
    tie = default_near_tie(lm.dtype) if near_tie is None else near_tie
    ctx = lm.context_length
    for w in windows:
        if not w.prefix or not w.suffix:
            raise RotelabError(f"window {w.doc_id}@{w.offset} has an empty prefix or suffix")
        if len(w.prefix) + len(w.suffix) > ctx:
            raise RotelabError(
                f"window {w.doc_id}@{w.offset} has {len(w.prefix) + len(w.suffix)} tokens, longer "
                f"than the model's context of {ctx}; shorten the prefix or suffix"
            )
    rows: list[dict | None] = [None] * len(windows)
    passes = lm.iter_score(
        [w.tokens for w in windows],
        targets_from=[len(w.prefix) for w in windows],
        batch_size=batch_size,
        sampler=Sampler(temperature=temperature, top_k=top_k),
    )
    for i, sc in passes:
        w = windows[i]
        s = len(w.suffix)
        misses = np.flatnonzero(~sc.argmax_match)
        matched = int(misses[0]) if misses.size else s
        # The verdict and matched length hang on these logit gaps: at each matched position the
        # true token's lead over the runner-up, at the first deviation the greedy token's lead
        # over the true one (which of the others leads there does not change the verdict).
        gaps = sc.margin[:matched]
        if matched < s:
            gaps = np.append(gaps, sc.target_gap[matched])
        decisive = float(gaps.min())
        lp_z = float(sc.sampler_logprobs.sum())
        # 1 - (1 - p_z)^n without cancellation when p_z is tiny.
        disc = float(-np.expm1(n * np.log1p(-np.exp(lp_z)))) if lp_z < 0 else 1.0
        rows[i] = {
            "doc_id": w.doc_id,
            "offset": w.offset,
            "prefix_len": len(w.prefix),
            "suffix_len": s,
            **w.meta,
            "extracted": matched == s,
            "matched_prefix": matched,
            "match_rate": float(sc.argmax_match.mean()),
            "min_margin": float(sc.margin.min()),
            "decisive_margin": decisive,
            "near_tie": decisive < tie,
            "suffix_logprob": float(sc.logprobs.sum()),
            "sampler_logprob": lp_z,
            "discoverable_prob": disc,
            "np_discoverable": disc >= p,
            "_next": int(sc.argmax[matched]) if matched < s else -1,
        }
    frame = pd.DataFrame(rows)
    return frame.drop(columns="_next").assign(first_miss_token=frame["_next"])


#: The columns that state a window's greedy verdict; :func:`recheck_near_ties` replaces them on the
#: windows it rechecks.
VERDICT_COLUMNS = ("extracted", "matched_prefix", "decisive_margin", "near_tie", "first_miss_token")


def recheck_near_ties(
    frame: pd.DataFrame,
    windows: Sequence[Window],
    exact_lm,
    *,
    batch_size: int = 16,
    lookahead: int = 4,
    **score_kw,
) -> pd.DataFrame:
    """Redo the verdicts a reduced-precision pass flagged as near-ties with an exact model.

    A bfloat16 pass is 2-3x faster than float32 on CPUs with AMX, but its logit gaps differ from
    float32's (by up to 0.91 on SmolLM2 so far), so a verdict decided by a gap under the near-tie
    threshold (:func:`default_near_tie`) may differ; those windows are flagged ``near_tie``. Only
    they are scored again, by the float32 model, and only as far as the verdict needs: each is cut
    ``lookahead`` tokens past the position where the fast pass deviated (positions see only earlier
    tokens, so the cut changes nothing before it), and scored whole only if the exact model matches
    the entire cut. The verdicts (``extracted``, ``matched_prefix``) of every window are then the
    float32 ones, as long as the bf16 error stays below the threshold on the unflagged windows (it
    did on every window measured so far; it is not a proven bound). The flagged windows get all
    :data:`VERDICT_COLUMNS` from float32; an unflagged window keeps the fast pass's
    ``first_miss_token``, which float32 may not share where the two leading tokens at the first
    deviation are close (the verdict does not depend on which of them leads). The other columns
    (log likelihoods, margins, ``p_z``) stay the reduced-precision pass's.

    Args:
        frame: :func:`score_windows` rows of ``windows`` from the reduced-precision model.
        windows: the same windows, in the same order.
        exact_lm: the model in float32 (an :class:`~rotelab.lm.LM`).
        batch_size: windows per forward pass.
        lookahead: suffix tokens scored past the fast pass's first deviation.
        score_kw: passed to :func:`score_windows` (sampler, n, p, near_tie).

    Returns:
        ``frame`` with the verdict columns of the flagged windows replaced by the exact model's and
        a bool column ``rechecked`` (True on those rows).
    """
    out = frame.assign(rechecked=frame["near_tie"].to_numpy(dtype=bool))
    copied = [c for c in VERDICT_COLUMNS if c in out.columns and c != "extracted"]
    todo = np.flatnonzero(out["rechecked"].to_numpy())
    full = np.array([len(w.suffix) for w in windows])
    cut = np.minimum(full, out["matched_prefix"].to_numpy() + 1 + lookahead)
    while todo.size:
        short = [Window(windows[i].doc_id, windows[i].offset, windows[i].prefix,
                        windows[i].suffix[: cut[i]], windows[i].meta) for i in todo]  # fmt: skip
        exact = score_windows(exact_lm, short, batch_size=batch_size, **score_kw)
        got = exact["matched_prefix"].to_numpy()
        # matched all of its cut: the verdict lies further on, so score that window whole
        further = (got == cut[todo]) & (cut[todo] < full[todo])
        done = todo[~further]
        for c in copied:
            out.iloc[done, out.columns.get_loc(c)] = exact[c].to_numpy()[~further]
        out.iloc[done, out.columns.get_loc("extracted")] = got[~further] == full[done]
        todo = todo[further]
        cut[todo] = full[todo]
    return out


# ------------------------------------------------------------------------ decoding
def free_running(
    lm,
    windows: Sequence[Window],
    scores: pd.DataFrame,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 40,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[int]]:
    """Each window's decoded continuation, as long as its suffix.

    Greedy decoding resumes at the first mismatch: the matched tokens and the greedy token at the
    mismatch are known from :func:`score_windows`, so only the rest is decoded (KV cache). With
    ``sample`` the whole suffix is sampled (temperature/top-k) with ``seed``.
    """
    if sample:
        return lm.generate(
            [w.prefix for w in windows],
            [len(w.suffix) for w in windows],
            batch_size=batch_size,
            sampler=Sampler(temperature=temperature, top_k=top_k),
            seed=seed,
        )
    heads, contexts, budgets = [], [], []
    for w, m, nxt in zip(windows, scores["matched_prefix"], scores["first_miss_token"]):
        m = int(m)
        head = [*w.suffix[:m], int(nxt)] if m < len(w.suffix) else list(w.suffix)
        heads.append(head)
        contexts.append([*w.prefix, *head])
        budgets.append(len(w.suffix) - len(head))
    tails = lm.generate(contexts, budgets, batch_size=batch_size)
    return [h + t for h, t in zip(heads, tails)]


def verify_windows(
    lm, windows: Sequence[Window], scores: pd.DataFrame, *, batch_size: int = 16
) -> pd.DataFrame:
    """Re-check one-pass verdicts with real greedy decoding (KV cache).

    Returns:
        One row per window: ``decoded_matched`` (tokens greedy decoding reproduced) and
        ``agrees`` (same verdict and same matched length as the one pass).

    Raises:
        RotelabError: on a disagreement at a window not flagged as a near-tie.
    """
    decoded = lm.generate([w.prefix for w in windows], [len(w.suffix) for w in windows], batch_size=batch_size)
    out = []
    for w, gen, (_, row) in zip(windows, decoded, scores.iterrows()):
        misses = np.flatnonzero(np.asarray(gen) != np.asarray(w.suffix))
        matched = int(misses[0]) if misses.size else len(w.suffix)
        agrees = matched == int(row["matched_prefix"])
        if not agrees and not bool(row["near_tie"]):
            raise RotelabError(
                f"--verify failed at window {w.doc_id}@{w.offset}: the one-pass audit says "
                f"{int(row['matched_prefix'])} tokens match but greedy decoding reproduces {matched} "
                f"(decisive margin {row['decisive_margin']:.3g} is not flagged as a near-tie); "
                "raise --near-tie if this is numerical noise, else report a bug"
            )
        out.append({"decoded_matched": matched, "agrees": agrees})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------ documents
def document_spans(intervals: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Merge half-open token intervals ``[start, end)`` into sorted disjoint spans."""
    spans: list[list[int]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return spans


class _DocTally:
    """Per-document extractable spans, from window rows arriving in document order.

    Finished documents are written out in parts of ``part_size`` rows, so memory holds one
    document's spans and one part, whatever the corpus size.
    """

    def __init__(self, run, part_size: int) -> None:
        self.run, self.part_size = run, part_size
        self.doc_id: str | None = None
        self.pending: list[dict] = []
        self.parts = 0
        self.documents = 0
        self.fraction_sum = 0.0
        self._reset()

    def _reset(self) -> None:
        self.tokens = self.windows = self.extracted = 0
        self.full: list[tuple[int, int]] = []
        self.partial: list[tuple[int, int]] = []

    def feed(self, frame: pd.DataFrame) -> None:
        cols = ["doc_id", "offset", "prefix_len", "suffix_len", "extracted", "matched_prefix"]
        tokens = frame["doc_tokens"] if "doc_tokens" in frame.columns else frame["prefix_len"] + frame["suffix_len"]
        for (doc, off, p, s, ext, m), n_tok in zip(frame[cols].itertuples(index=False), tokens):
            if doc != self.doc_id:
                self._close()
                self.doc_id = doc
            self.tokens = int(n_tok)
            self.windows += 1
            self.extracted += bool(ext)
            start = int(off) + int(p)
            if ext:
                self.full.append((start, start + int(s)))
            self.partial.append((start, start + int(m)))
        self._flush(final=False)

    def finish(self) -> None:
        self._close()
        self._flush(final=True)

    def _close(self) -> None:
        if self.doc_id is None:
            return
        full, partial = document_spans(self.full), document_spans(self.partial)
        n_full = sum(e - s for s, e in full)
        n_part = sum(e - s for s, e in partial)
        fraction = n_full / max(self.tokens, 1)
        self.pending.append({
            "doc_id": self.doc_id, "doc_tokens": self.tokens, "windows": self.windows,
            "extracted_windows": self.extracted, "extractable_spans": full,
            "extractable_tokens": n_full, "extractable_fraction": fraction,
            "reproduced_tokens": n_part, "reproduced_fraction": n_part / max(self.tokens, 1),
        })  # fmt: skip
        self.documents += 1
        self.fraction_sum += fraction
        self.doc_id = None
        self._reset()

    def _flush(self, final: bool) -> None:
        while len(self.pending) >= self.part_size or (final and self.pending):
            rows, self.pending = self.pending[: self.part_size], self.pending[self.part_size :]
            self.run.write_part("documents", f"{self.parts:06d}", pd.DataFrame(rows))
            self.parts += 1


# ------------------------------------------------------------------------ summary
_SUM_COLS = ["extracted", "matched_prefix", "match_rate", "near_tie", "np_discoverable"]
_FREE_COLS = ["strict", "loose", "levenshtein", "rouge_l", "bleu", "jaccard", "seq_ratio"]


class _Tally:
    """Running sums per group value, so the summary never needs the whole table in memory."""

    def __init__(self, group_by: Sequence[str], free: bool) -> None:
        self.group_by = list(group_by)
        self.cols = _SUM_COLS + (_FREE_COLS if free else [])
        self.total: dict[str, float] = {}
        self.groups: dict[str, dict[tuple, dict[str, float]]] = {g: {} for g in self.group_by}

    @staticmethod
    def _add(acc: dict, values: dict) -> None:
        for k, v in values.items():
            acc[k] = acc.get(k, 0.0) + float(v)

    def feed(self, frame: pd.DataFrame) -> None:
        numeric = frame[self.cols].astype(float).assign(windows=1.0)
        self._add(self.total, numeric.sum().to_dict())
        for spec in self.group_by:
            cols = spec.split("+")
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise RotelabError(
                    f"cannot group by {', '.join(missing)}: no such metadata column "
                    f"(available: {', '.join(c for c in frame.columns if not c.startswith('_'))})"
                )
            keyed = numeric.assign(**{f"_g{i}": frame[c].astype(str) for i, c in enumerate(cols)})
            keys = [f"_g{i}" for i in range(len(cols))]
            for key, part in keyed.groupby(keys, sort=False):
                key = key if isinstance(key, tuple) else (key,)
                self._add(self.groups[spec].setdefault(key, {}), part.drop(columns=keys).sum().to_dict())

    def fields(self, sums: dict[str, float], method: CIMethod, alpha: float) -> dict[str, Any]:
        n = int(sums.get("windows", 0))
        ext = rate_with_ci(int(sums.get("extracted", 0)), n, method=method, alpha=alpha)
        disc = rate_with_ci(int(sums.get("np_discoverable", 0)), n, method=method, alpha=alpha)
        out = {
            **ext.as_dict("extraction_rate", count="extracted", total="windows"),
            "mean_matched_prefix": sums.get("matched_prefix", 0.0) / n if n else math.nan,
            "mean_match_rate": sums.get("match_rate", 0.0) / n if n else math.nan,
            "near_ties": int(sums.get("near_tie", 0)),
            **disc.as_dict("np_discoverable_rate", count="np_discoverable", total="_n"),
        }
        out.pop("_n")
        if "strict" in sums:
            for verdict in ("strict", "loose"):
                r = rate_with_ci(int(sums[verdict]), n, method=method, alpha=alpha)
                out.update(r.as_dict(f"{verdict}_rate", count=verdict, total="_n"))
                out.pop("_n")
            for m in _FREE_COLS[2:]:
                out[f"mean_{m}"] = sums[m] / n if n else math.nan
        return out

    def summary(self, method: CIMethod, alpha: float) -> dict[str, Any]:
        by_group = {}
        for spec, groups in self.groups.items():
            ordered = sorted(groups, key=lambda key: tuple(_sort_key(v) for v in key))
            by_group[spec] = {"|".join(k): self.fields(groups[k], method, alpha) for k in ordered}
        return {**self.fields(self.total, method, alpha), "by_group": by_group}


def _sort_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


# ------------------------------------------------------------------------ the run
@dataclass
class ExtractResult:
    """What :func:`extract` returns on every rank (files are written by rank 0 only)."""

    summary: dict
    run_dir: Path | None
    is_main: bool = True


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
            scores = recheck_near_ties(scores, part, exact.get(), batch_size=cfg.batch_size, **score_kw)
        else:
            scores = scores.assign(rechecked=False)
    extra: dict[str, list] = {}
    if cfg.free_running:
        gens = free_running(
            lm, part, scores, sample=cfg.sample, temperature=cfg.temperature, top_k=cfg.top_k,
            seed=cfg.seed + index, batch_size=cfg.batch_size,
        )  # fmt: skip
        sims = [similarity_scores(g, w.suffix) for g, w in zip(gens, part)]
        extra["generated"] = gens
        for name in METRICS:
            extra[name] = [s[name] for s in sims]
    if cfg.verify:
        idx = [j for j in range(len(part)) if first + j in verify_ids]
        checked = np.full(len(part), np.nan)
        if idx:
            # Under --recheck every verdict claims to be the float32 model's, the unflagged ones
            # included: decoding with that model checks the claim where it is not proven.
            model = exact.get() if exact is not None else lm
            ver = verify_windows(model, [part[j] for j in idx], scores.iloc[idx], batch_size=cfg.batch_size)
            checked[idx] = ver["agrees"].astype(float).to_numpy()
        extra["verified"] = checked  # NaN = not checked, 1 = agrees, 0 = near-tie disagreement
    frame = scores.assign(**extra)
    return frame.drop(columns="first_miss_token")


def _load(model, device: str, dtype: str, allow_pickle: bool):
    from rotelab.distributed import local_device
    from rotelab.options import LoadOptions
    from rotelab.pipelines.inputs import load_model

    return load_model(model, LoadOptions(local_device(device), dtype, allow_pickle))


class _LazyModel:
    """A model loaded on first use (the float32 copy, only if a near-tie or --verify needs it)."""

    def __init__(self, source, device: str, allow_pickle: bool) -> None:
        self.source, self.device, self.allow_pickle = source, device, allow_pickle
        self._lm = None

    def get(self):
        if self._lm is None:
            self._lm = _load(self.source, self.device, "float32", self.allow_pickle)
        return self._lm


def _window_source(
    model, data, cfg: ExtractConfig, device, dtype, allow_pickle, field_, errors, corpus_format
):
    """(lm, the model's source, a fresh window iterator factory, group columns, data description)."""
    if data is None:
        from rotelab.pipelines.inputs import organism_of

        org = organism_of(model)
        if org is None:
            raise RotelabError(
                f"{model} is not an organism, and the organism's windows only fit its own "
                "tokenizer; give --data (a corpus) to audit another model"
            )
        lm = _load(org.path, device, dtype, allow_pickle)
        wins = ledger_windows(org.ledger)
        groups = cfg.group_by or ("count", "kind", "phase", "kind+count")
        return lm, org.path, (lambda: iter(wins)), groups, f"organism ledger ({org.path})"
    from rotelab.data.corpus import read_corpus

    lm = _load(model, device, dtype, allow_pickle)
    check_window_shape(cfg.prefix_len, cfg.suffix_len, cfg.stride, lm.context_length)

    def make() -> Iterator[Window]:
        docs = read_corpus(data, field=field_, errors=errors, corpus_format=corpus_format)
        return corpus_windows(docs, lm.encode, cfg.prefix_len, cfg.suffix_len, cfg.stride)

    return lm, model, make, cfg.group_by, str(data)


def extract(
    model: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    *,
    config: ExtractConfig | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    allow_pickle: bool = False,
    field: str = "text",
    errors: str = "strict",
    corpus_format: str = "auto",
    progress: bool = True,
) -> ExtractResult:
    """Audit extraction over a corpus (or the default organism) and write a run directory.

    With neither ``model`` nor ``data``, windows come from the default organism's ledger
    (prefix → sensitive span, count-0 controls included) and rates are broken down by count, kind
    and phase. With ``data``, windows slide over every document (``prefix_len``, ``suffix_len``,
    ``stride``) and are streamed through the model part by part.

    Writes ``results/windows/part-*.parquet`` (one row per window: ``doc_id``, ``offset`` and every
    metric of :func:`score_windows`, plus free-running similarities and ``verified`` when asked),
    ``results/documents`` (extractable spans and covered fraction per document) and
    ``summary.json`` (``windows``, ``extracted``, ``extraction_rate``, ``extraction_rate_ci``,
    ``mean_matched_prefix``, ..., ``by_group``). Under ``torchrun`` parts are shared between
    processes and rank 0 writes everything; the rows equal those of one process.
    """
    from rotelab.distributed import all_gather_objects, broadcast_object, dist_context
    from rotelab.lm import check_load_options
    from rotelab.runs import Run

    cfg = config or ExtractConfig()
    cfg.validate()
    check_load_options(device, dtype)
    settings = {"model": model, "data": data, **asdict(cfg), "device": device, "dtype": dtype,
                "field": field, "errors": errors, "format": corpus_format}  # fmt: skip
    t0 = time.perf_counter()
    with dist_context() as (rank, world):
        main = rank == 0
        lm, source, make_windows, group_by, described = _window_source(
            model, data, cfg, device, dtype, allow_pickle, field, errors, corpus_format
        )
        reduced = lm.dtype not in (torch.float32, torch.float64)
        exact = _LazyModel(source, device, allow_pickle) if cfg.recheck and reduced else None
        stream = make_windows()
        first = next(stream, None)
        if first is None:
            raise RotelabError(
                f"no windows: the data is empty or every document is shorter than prefix+suffix "
                f"({cfg.prefix_len + cfg.suffix_len} tokens); use shorter windows or more data"
            )
        verify_ids: set[int] = set()
        if cfg.verify:
            total = 1 + sum(1 for _ in stream)
            if cfg.verify > total:
                raise RotelabError(f"--verify {cfg.verify} is more than the {total} windows; use at most {total}")
            rng = np.random.default_rng(cfg.seed)
            verify_ids = set(rng.choice(total, size=cfg.verify, replace=False).tolist())
            stream = make_windows()
        else:
            stream = itertools.chain([first], stream)
        run = (
            Run.create(
                out, "extract", settings, resume=resume, force=force, inputs=(source, data)
            )
            if main
            else None
        )
        with run if run is not None else contextlib.nullcontext():
            done = broadcast_object(_done_parts(run) if main else None)
            tally = _Tally(group_by, cfg.free_running)
            docs = _DocTally(run, cfg.part_size)
            n_tokens = verified = verify_ties = rechecked = 0
            with _Bar(progress and main, "extracting") as bar:
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
                                frame = pd.read_parquet(run.path / "results" / "windows" / f"part-{key}.parquet")
                            else:
                                run.write_part("windows", key, frame)
                            tally.feed(frame)
                            docs.feed(frame)
                            n_tokens += int((frame["prefix_len"] + frame["suffix_len"]).sum())
                            if "rechecked" in frame.columns:
                                rechecked += int(frame["rechecked"].sum())
                            if "verified" in frame.columns:
                                verified += int(frame["verified"].notna().sum())
                                verify_ties += int((frame["verified"] == 0).sum())
                            bar.advance(len(part))
                    index += len(batch_parts)
            summary = None
            if main:
                docs.finish()
                summary = _summary(lm, cfg, data, described, tally, docs, world, n_tokens, t0)
                if exact is not None:
                    summary["rechecked_in_float32"] = rechecked
                if cfg.verify:
                    summary["verified"] = verified
                    summary["verify_near_tie_disagreements"] = verify_ties
                summary["by_group"] = summary.pop("by_group")  # last: the long part
                run.write_summary(summary)
            summary = broadcast_object(summary)
    return ExtractResult(summary, run.path if run is not None else None, main)


def summary_table(summary: dict, group: str | None = None):
    """A rich table of the extraction rate (with CI) overall and per value of one group."""
    from rich.table import Table

    groups = summary.get("by_group", {})
    group = group or next(iter(groups), None)
    level = round(100 * summary.get("ci_level", 0.95))
    table = Table(title=f"extraction rate ({level}% {summary.get('ci_method', 'wilson')} CI)")
    for col in (group or "", "windows", "extracted", "rate", "CI", "mean matched"):
        table.add_column(col, justify="left" if col == group else "right")

    def add(name: str, f: dict) -> None:
        lo, hi = f["extraction_rate_ci"]
        table.add_row(
            name, str(f["windows"]), str(f["extracted"]), f"{f['extraction_rate']:.3f}",
            f"[{lo:.3f}, {hi:.3f}]", f"{f['mean_matched_prefix']:.1f}",
        )  # fmt: skip

    for value, fields in groups.get(group, {}).items():
        add(value, fields)
    add("all", summary)
    return table


def _done_parts(run) -> set[int]:
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
        "mean_extractable_fraction": docs.fraction_sum / docs.documents if docs.documents else math.nan,
        "processes": world,
        "elapsed_s": round(elapsed, 2),
        "tokens_per_s": round(n_tokens / elapsed, 1) if elapsed > 0 else None,
    }


class _Bar:
    """A rich progress bar over windows when enabled, else nothing."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label = enabled, label
        self.progress_bar = None
        self._task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress

            self.progress_bar = Progress(transient=True, console=Console(stderr=True))
            self.progress_bar.start()
            self._task = self.progress_bar.add_task(self.label, total=None)
        return self

    def advance(self, n: int) -> None:
        if self.progress_bar is not None:
            self.progress_bar.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self.progress_bar is not None:
            self.progress_bar.stop()

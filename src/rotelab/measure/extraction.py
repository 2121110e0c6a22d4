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
already knows. Windows come from a corpus (sliding over whole documents, as Ma et al. 2025 do over
books, :func:`corpus_windows`) or from the organism's ledger (:func:`ledger_windows`);
:class:`ExtractionTally` and :class:`DocumentTally` turn result rows into rates with binomial
intervals per metadata group and into per-document extractable spans. The ``rotelab extract``
run (streaming, torchrun sharding, the run directory) is :func:`rotelab.pipelines.extract.extract`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.data.corpus import Document
from rotelab.data.windows import Window, check_window_shape, iter_windows
from rotelab.errors import RotelabError
from rotelab.lm import Sampler
from rotelab.measure.similarity import similarity_names
from rotelab.registry import register_metric
from rotelab.stats import CIMethod, check_group_by, rate_with_ci

__all__ = [
    "DEFAULT_PREFIX_LEN",
    "DEFAULT_SUFFIX_LEN",
    "KEY_COLUMNS",
    "LEDGER_META",
    "SCORE_COLUMNS",
    "VERDICT_COLUMNS",
    "DocumentTally",
    "ExtractConfig",
    "ExtractionTally",
    "corpus_windows",
    "default_near_tie",
    "document_spans",
    "free_running",
    "ledger_windows",
    "recheck_near_ties",
    "row_columns",
    "scalar_meta",
    "score_windows",
    "summary_table",
    "verify_windows",
]

#: Window shape in corpus mode when not given (the organism's ledger fixes its own windows).
DEFAULT_PREFIX_LEN, DEFAULT_SUFFIX_LEN = 32, 48

#: What identifies a window in its result row.
KEY_COLUMNS = ("doc_id", "offset", "prefix_len", "suffix_len")
#: The ledger's metadata a window carries (besides ``doc_tokens``).
LEDGER_META = ("count", "kind", "phase")
#: The one-pass metrics of :func:`score_windows`, after the window's key and metadata.
SCORE_COLUMNS = (
    "extracted", "matched_prefix", "match_rate", "min_margin", "decisive_margin", "near_tie",
    "suffix_logprob", "sampler_logprob", "discoverable_prob", "np_discoverable",
)  # fmt: skip

# Directions: higher = more memorization/extraction (the similarity metrics register their own).
for _name, _description in [
    ("extracted", "greedy decoding reproduces the whole suffix"),
    ("matched_prefix", "suffix tokens greedy decoding reproduces before its first deviation"),
    ("match_rate", "teacher-forced exact-match rate over the suffix"),
    ("suffix_logprob", "log-likelihood of the suffix"),
    ("sampler_logprob", "log-probability p_z that the sampler emits the suffix"),
    ("discoverable_prob", "1 - (1 - p_z)^n"),
    ("np_discoverable", "(n, p)-discoverable: 1 - (1 - p_z)^n >= p"),
]:
    register_metric(_name, higher_is_better=True, description=_description, scope="extraction")


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
    """What :func:`rotelab.pipelines.extract.extract` measures.

    Args:
        prefix_len, suffix_len: window shape in tokens (corpus mode; the ledger fixes its own);
            ``None``: :data:`DEFAULT_PREFIX_LEN`, :data:`DEFAULT_SUFFIX_LEN`.
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

    prefix_len: int | None = None
    suffix_len: int | None = None
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

    def window_options(self) -> list[str]:
        """The window-shape flags given (not left at ``None``), as ``--prefix-len`` etc."""
        names = ("prefix_len", "suffix_len", "stride")
        return ["--" + n.replace("_", "-") for n in names if getattr(self, n) is not None]

    def with_defaults(self) -> ExtractConfig:
        """A copy with the window shape's defaults filled in."""
        return replace(
            self,
            prefix_len=DEFAULT_PREFIX_LEN if self.prefix_len is None else self.prefix_len,
            suffix_len=DEFAULT_SUFFIX_LEN if self.suffix_len is None else self.suffix_len,
        )

    def validate(self) -> None:
        """Refuse settings that cannot work, with the fix in the message."""
        shape = self.with_defaults()
        check_window_shape(shape.prefix_len, shape.suffix_len, self.stride, None)
        if self.batch_size < 1:
            raise RotelabError(f"batch size must be >= 1, got {self.batch_size}")
        if self.part_size < 1:
            raise RotelabError(f"part size must be >= 1, got {self.part_size}")
        if not 0 < self.temperature < math.inf:
            raise RotelabError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k < 0:
            raise RotelabError(f"top-k must be >= 0 (0 = whole vocabulary), got {self.top_k}")
        if self.n < 1:
            raise RotelabError(f"n must be >= 1, got {self.n}")
        if not 0 < self.p <= 1:
            raise RotelabError(f"p must be in (0, 1], got {self.p}")
        if self.near_tie is not None and not 0 <= self.near_tie < math.inf:
            raise RotelabError(f"near-tie margin must be a finite number >= 0, got {self.near_tie}")
        if self.verify < 0:
            raise RotelabError(f"--verify must be >= 0, got {self.verify}")
        if self.sample and not self.free_running:
            raise RotelabError("--sample decodes free-running text; add --free-running")
        self.ci = CIMethod(self.ci)


# ------------------------------------------------------------------------ window sources
def ledger_windows(ledger: pd.DataFrame) -> list[Window]:
    """One window per ledger item: ``prefix_tokens`` → ``suffix_tokens``, with its metadata."""
    need = {"item_id", "prefix_tokens", "suffix_tokens"}
    if not need <= set(ledger.columns):
        raise RotelabError(f"the ledger lacks columns {sorted(need - set(ledger.columns))}")
    meta_cols = [c for c in LEDGER_META if c in ledger.columns]
    out = []
    for row in ledger.itertuples(index=False):
        prefix, suffix = list(map(int, row.prefix_tokens)), list(map(int, row.suffix_tokens))
        meta = {c: getattr(row, c) for c in meta_cols}
        n_tokens = int(getattr(row, "n_tokens", len(prefix) + len(suffix)))
        meta["doc_tokens"] = n_tokens
        out.append(Window(str(row.item_id), 0, prefix, suffix, meta))
    return out


def scalar_meta(meta: dict) -> dict:
    """The metadata a result row keeps: scalars (Parquet columns need one scalar type; nested
    metadata is kept out of result rows)."""
    return {k: v for k, v in meta.items() if v is None or isinstance(v, (str, int, float, bool))}


def corpus_windows(
    docs: Iterable, encode, prefix_len: int, suffix_len: int, stride: int | None
) -> Iterator[Window]:
    """Sliding windows over whole documents, streamed; each carries ``doc_tokens`` in its meta."""
    for doc in docs:
        ids = encode(doc.text)
        tagged = Document(doc.doc_id, doc.text, {**scalar_meta(doc.meta), "doc_tokens": len(ids)})
        yield from iter_windows(
            [tagged], lambda _text, ids=ids: ids, prefix_len, suffix_len, stride
        )


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
    decoded = lm.generate(
        [w.prefix for w in windows], [len(w.suffix) for w in windows], batch_size=batch_size
    )
    out = []
    for w, gen, (_, row) in zip(windows, decoded, scores.iterrows()):
        misses = np.flatnonzero(np.asarray(gen) != np.asarray(w.suffix))
        matched = int(misses[0]) if misses.size else len(w.suffix)
        agrees = matched == int(row["matched_prefix"])
        if not agrees and not bool(row["near_tie"]):
            raise RotelabError(
                f"--verify failed at window {w.doc_id}@{w.offset}: the one-pass audit says "
                f"{int(row['matched_prefix'])} tokens match but greedy decoding reproduces "
                f"{matched} "
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


class DocumentTally:
    """Per-document extractable spans, from window rows arriving in document order.

    :meth:`feed` and :meth:`finish` return the finished documents' rows in parts of ``part_size``
    rows, for the caller to write, so memory holds one document's spans and one part, whatever
    the corpus size. ``documents`` and ``fraction_sum`` count the documents finished so far.
    """

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.doc_id: str | None = None
        self.pending: list[dict] = []
        self.documents = 0
        self.fraction_sum = 0.0
        self._reset()

    def _reset(self) -> None:
        self.tokens = self.windows = self.extracted = 0
        self.full: list[tuple[int, int]] = []
        self.partial: list[tuple[int, int]] = []

    def feed(self, frame: pd.DataFrame) -> list[pd.DataFrame]:
        """Take one part of window rows; returns the document parts that are now full."""
        cols = ["doc_id", "offset", "prefix_len", "suffix_len", "extracted", "matched_prefix"]
        tokens = (
            frame["doc_tokens"] if "doc_tokens" in frame.columns
            else frame["prefix_len"] + frame["suffix_len"]
        )  # fmt: skip
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
        return self._flush(final=False)

    def finish(self) -> list[pd.DataFrame]:
        """Close the last document; returns the remaining document parts."""
        self._close()
        return self._flush(final=True)

    @property
    def mean_fraction(self) -> float:
        """Mean extractable fraction over the finished documents."""
        return self.fraction_sum / self.documents if self.documents else math.nan

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

    def _flush(self, final: bool) -> list[pd.DataFrame]:
        parts = []
        while len(self.pending) >= self.part_size or (final and self.pending):
            rows, self.pending = self.pending[: self.part_size], self.pending[self.part_size :]
            parts.append(pd.DataFrame(rows))
        return parts


# ------------------------------------------------------------------------ summary
_SUM_COLS = ["extracted", "matched_prefix", "match_rate", "near_tie", "np_discoverable"]


def row_columns(
    meta: Iterable[str],
    *,
    free_running: bool = False,
    verify: bool = False,
    recheck: bool = False,
) -> list[str]:
    """The columns of a result row of a window whose metadata has the keys ``meta``."""
    cols = [*KEY_COLUMNS, *meta, *SCORE_COLUMNS]
    if recheck:
        cols.append("rechecked")
    if free_running:
        cols += ["generated", *similarity_names()]
    if verify:
        cols.append("verified")
    return cols


class ExtractionTally:
    """Running sums per group value, so the summary never needs the whole table in memory.

    ``group_by`` names metadata columns (``"kind+count"`` for joint groups); with ``free`` the
    registered similarity metrics are summed too (verdicts as rates, the others as means).
    """

    def __init__(self, group_by: Sequence[str], free: bool) -> None:
        self.group_by = list(group_by)
        self.verdicts = similarity_names(verdict=True) if free else []
        self.scores = similarity_names(verdict=False) if free else []
        self.cols = _SUM_COLS + self.verdicts + self.scores
        self.total: dict[str, float] = {}
        self.groups: dict[str, dict[tuple, dict[str, float]]] = {g: {} for g in self.group_by}

    @staticmethod
    def _add(acc: dict, values: dict) -> None:
        for k, v in values.items():
            acc[k] = acc.get(k, 0.0) + float(v)

    def feed(self, frame: pd.DataFrame) -> None:
        numeric = frame[self.cols].astype(float).assign(windows=1.0)
        self._add(self.total, numeric.sum().to_dict())
        check_group_by(self.group_by, frame.columns)
        for spec in self.group_by:
            cols = spec.split("+")
            keyed = numeric.assign(**{f"_g{i}": frame[c].astype(str) for i, c in enumerate(cols)})
            keys = [f"_g{i}" for i in range(len(cols))]
            for key, part in keyed.groupby(keys, sort=False):
                key = key if isinstance(key, tuple) else (key,)
                sums = part.drop(columns=keys).sum().to_dict()
                self._add(self.groups[spec].setdefault(key, {}), sums)

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
        for verdict in self.verdicts:
            r = rate_with_ci(int(sums[verdict]), n, method=method, alpha=alpha)
            out.update(r.as_dict(f"{verdict}_rate", count=verdict, total="_n"))
            out.pop("_n")
        for m in self.scores:
            out[f"mean_{m}"] = sums[m] / n if n else math.nan
        return out

    def summary(self, method: CIMethod, alpha: float) -> dict[str, Any]:
        """The rates overall and, under ``by_group``, per value of each group."""
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

"""The texts membership inference classifies, in token space, with the span of each that is scored.

A text is scored on a token span (the secret inside a canary rather than the whole sequence): the
span's tokens given everything before them. Spans come from character offsets in the text
(:func:`prepare_texts`, files with ``span_char_start``/``span_char_end``) or from an organism's
ledger (:func:`ledger_texts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pandas as pd

from rotelab.data.corpus import Document
from rotelab.errors import RotelabError
from rotelab.lm import LM

__all__ = ["MIAText", "SpanMode", "document_texts", "ledger_texts", "prepare_texts"]


class SpanMode(str, Enum):
    """Which tokens of an organism item are scored.

    ``auto``: the sensitive span for secrets and bios (the digits, the e-mail and ID: a whole-text
    loss would be dominated by the template shared with the controls), the whole text for passages
    (every token of a passage is equally private, so more tokens means more signal).
    ``full``: every token after the first. ``sensitive``: the ledger's span for every kind.
    """

    auto = "auto"
    full = "full"
    sensitive = "sensitive"


@dataclass
class MIAText:
    """One text to classify, in token space.

    Attributes:
        text_id: a stable id (ledger item id, or ``<file>:<line>``).
        tokens: token ids fed to the model (no special tokens; at most the context length).
        span: ``[start, end)`` token positions scored; ``1 <= start < end <= len(tokens)`` because
            the first token has no context to be predicted from.
        member: the ground truth.
        groups: attributes results are broken down by (``count``, ``phase``, ``kind``, ...).
    """

    text_id: str
    tokens: list[int]
    span: tuple[int, int]
    member: bool
    groups: dict[str, Any] = field(default_factory=dict)


def prepare_texts(
    lm: LM,
    texts: Sequence[str],
    members: Sequence[bool],
    *,
    text_ids: Sequence[str] | None = None,
    char_spans: Sequence[tuple[int, int] | None] | None = None,
    groups: Sequence[dict[str, Any]] | None = None,
) -> list[MIAText]:
    """Tokenize texts and map optional character spans ``[start, end)`` to token spans.

    A span covers every token overlapping its characters; a span beginning at the first token
    starts at the second (the first has no context to be predicted from). Texts longer than the
    context are cut to it, which must keep the span.
    """
    n = len(texts)
    ids = list(text_ids) if text_ids is not None else [f"text-{i}" for i in range(n)]
    spans = list(char_spans) if char_spans is not None else [None] * n
    grp = list(groups) if groups is not None else [{} for _ in range(n)]
    ctx = lm.context_length
    out = []
    for text, member, tid, span, g in zip(texts, members, ids, spans, grp):
        enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=span is not None)
        tokens = list(enc["input_ids"])
        if len(tokens) < 2:
            raise RotelabError(
                f"text {tid!r} has {len(tokens)} token(s); membership scores need at least 2"
            )
        if span is None:
            t0, t1 = 1, min(len(tokens), ctx)
        else:
            c0, c1 = int(span[0]), int(span[1])
            if not 0 <= c0 < c1 <= len(text):
                raise RotelabError(
                    f"text {tid!r}: span [{c0}, {c1}) is outside the text ({len(text)} "
                    "characters); give 0 <= span_char_start < span_char_end <= length"
                )
            offsets = enc["offset_mapping"]
            t0 = next(i for i, (_, e) in enumerate(offsets) if e > c0)
            t1 = next((i for i, (b, _) in enumerate(offsets) if b >= c1), len(tokens))
            t0 = max(t0, 1)
            if t1 <= t0:
                raise RotelabError(
                    f"text {tid!r}: span [{c0}, {c1}) covers only the first token, which cannot be "
                    "scored; widen the span"
                )
        out.append(_fit_context(MIAText(tid, tokens, (t0, t1), bool(member), dict(g)), ctx))
    return out


def document_texts(
    lm: LM, members: Sequence[Document], nonmembers: Sequence[Document]
) -> list[MIAText]:
    """Member and non-member documents as texts: ids ``m:<doc id>`` and ``n:<doc id>``.

    A document's ``span_char_start``/``span_char_end`` fields restrict scoring to that character
    span; its ``count``, ``phase`` and ``kind`` fields become groups.
    """
    docs = [(d, True) for d in members] + [(d, False) for d in nonmembers]
    seen: set[str] = set()
    ids = []
    for d, is_member in docs:
        tid = ("m:" if is_member else "n:") + d.doc_id
        if tid in seen:
            raise RotelabError(f"duplicate text id {tid!r}; ids must be unique")
        seen.add(tid)
        ids.append(tid)
    return prepare_texts(
        lm,
        [d.text for d, _ in docs],
        [m for _, m in docs],
        text_ids=ids,
        char_spans=[_doc_span(d) for d, _ in docs],
        groups=[{g: d.meta[g] for g in ("count", "phase", "kind") if g in d.meta} for d, _ in docs],
    )


def _doc_span(doc: Document) -> tuple[int, int] | None:
    m = doc.meta
    if m.get("span_char_start") is None and m.get("span_char_end") is None:
        return None
    if m.get("span_char_start") is None or m.get("span_char_end") is None:
        raise RotelabError(f"text {doc.doc_id!r}: give both span_char_start and span_char_end")
    return int(m["span_char_start"]), int(m["span_char_end"])


def _fit_context(item: MIAText, ctx: int) -> MIAText:
    if item.span[1] > ctx:
        raise RotelabError(
            f"text {item.text_id!r}: its span ends at token {item.span[1]}, beyond the model's "
            f"context of {ctx} tokens; choose an earlier span or shorter text"
        )
    item.tokens = list(item.tokens[:ctx])
    return item


def _check_token_span(item: MIAText) -> None:
    s, e = item.span
    if not 1 <= s < e <= len(item.tokens):
        raise RotelabError(
            f"text {item.text_id!r}: token span [{s}, {e}) is outside the text "
            f"({len(item.tokens)} tokens); spans need 1 <= start < end <= length"
        )


def ledger_texts(ledger: pd.DataFrame, span_mode: SpanMode, ctx: int) -> list[MIAText]:
    """Members (count >= 1) and same-kind controls (count 0) of an organism ledger.

    ``span_mode`` says which tokens are scored (:class:`SpanMode`); ``ctx`` is the model's context
    length, which every scored span must fit.
    """
    led = ledger
    member_kinds = set(led.loc[led["count"] >= 1, "kind"])
    control_kinds = set(led.loc[led["count"] == 0, "kind"])
    kinds = sorted(member_kinds & control_kinds)
    if not kinds:
        raise RotelabError("the organism ledger has no kind with both members and count-0 controls")
    out = []
    for row in led[led["kind"].isin(kinds)].itertuples(index=False):
        tokens = list(row.tokens)
        sensitive = span_mode is SpanMode.sensitive or (
            span_mode is SpanMode.auto and row.kind != "passage"
        )
        span = (max(1, int(row.span_start)), int(row.span_end)) if sensitive else (1, len(tokens))
        if span[1] > ctx:
            span = (span[0], ctx) if not sensitive else span
        groups = {"count": int(row.count), "phase": str(row.phase), "kind": str(row.kind)}
        item = MIAText(str(row.item_id), tokens, span, row.count >= 1, groups)
        _check_token_span(item)
        out.append(_fit_context(item, ctx))
    return out

"""The user's own insertions: reading them, giving them counts and phases, and their ledger.

Hubble (Wei et al. 2025) controls memorization by inserting chosen text a chosen number of times
(its duplication) in a chosen part of training (its phase); items generated the same way but never
inserted (count 0) are the controls of every membership and extraction measurement. Here the
items are the user's: a JSONL file of ``{"text": ..., "id": ..., "kind": ..., "count": ...,
"phase": ..., "secret": ...}`` (only ``text`` is required), with a count grid (and phase grid)
giving items without a count one, round-robin within each kind so every kind gets every count.

The ledger has the organism's columns (see :mod:`rotelab.organism.world`), so ``rotelab extract``
and ``rotelab mia`` read a trained model's ledger exactly as an organism's: the sensitive span is
the ``secret`` substring when the line gives one, else the last ``suffix_len`` tokens (at most
half the item), and the prefix is what precedes it.

Example:
    >>> items = read_insertions("canaries.jsonl")  # doctest: +SKIP
    >>> items = assign_grid(items, counts=(0, 1, 4, 16), phases=("all",))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError

__all__ = ["InsertionItem", "assign_grid", "item_ledger", "read_insertions", "template_controls"]

_FIELDS = {"text", "id", "kind", "count", "phase", "secret"}


@dataclass(frozen=True)
class InsertionItem:
    """One item to insert (``count`` 0: a control, never trained on).

    ``count`` and ``phase`` are ``None`` until a grid gives them (see :func:`assign_grid`).
    ``secret`` is the sensitive substring of ``text`` (empty: the item's last tokens).
    """

    item_id: str
    text: str
    kind: str = "user"
    count: int | None = None
    phase: str | None = None
    secret: str = ""
    span: tuple[int, int] | None = None  # the sensitive span in characters (wins over secret)


def read_insertions(path: str | os.PathLike) -> list[InsertionItem]:
    """Read and check an insertions JSONL file, every line, before anything is trained.

    Raises:
        RotelabError: one line naming the file, the line and what is wrong (not JSON, no
            ``text``, a count that is not a whole number >= 0, a ``secret`` not in the text, a
            repeated id, an unknown field).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise RotelabError(f"insertions file {path} does not exist (give a JSONL file)")
    items: list[InsertionItem] = []
    seen: set[str] = set()
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RotelabError(f"{where} is not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise RotelabError(f"{where} is not a JSON object")
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise RotelabError(f"{where} has no text (each line needs a non-empty 'text')")
            unknown = sorted(set(row) - _FIELDS)
            if unknown:
                raise RotelabError(f"{where} has unknown fields {unknown}; use {sorted(_FIELDS)}")
            count = row.get("count")
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 0
            ):
                raise RotelabError(f"{where}: count {count!r} is not a whole number >= 0")
            phase = row.get("phase")
            if phase is not None and not isinstance(phase, str):
                raise RotelabError(f"{where}: phase {phase!r} is not a string")
            secret = row.get("secret") or ""
            if not isinstance(secret, str) or (secret and secret not in text):
                raise RotelabError(f"{where}: secret is not a substring of the text")
            item_id = str(row.get("id", f"item-{len(items):05d}"))
            if item_id in seen:
                raise RotelabError(f"{where}: id {item_id!r} is used twice")
            seen.add(item_id)
            kind = str(row.get("kind") or "user")
            items.append(InsertionItem(item_id, text, kind, count, phase, secret))
    if not items:
        raise RotelabError(f"insertions file {path} holds no items")
    return items


def assign_grid(
    items: Sequence[InsertionItem],
    counts: Sequence[int] | None = None,
    phases: Sequence[str] | None = None,
    *,
    override: bool = False,
) -> list[InsertionItem]:
    """Give each item without a count (every item with ``override``) a count from ``counts`` and
    a phase from ``phases``, round-robin within each kind (the i-th item of a kind gets
    ``counts[i % len(counts)]`` and ``phases[(i // len(counts)) % len(phases)]``), so each kind
    covers the grid. Items still without a count afterwards get 1, without a phase ``all``.
    """
    index: dict[str, int] = {}
    out = []
    for it in items:
        i = index.get(it.kind, 0)
        index[it.kind] = i + 1
        count, phase = it.count, it.phase
        if counts and (override or count is None):
            count = int(counts[i % len(counts)])
        if phases and (override or phase is None):
            phase = str(phases[(i // max(1, len(counts or [1]))) % len(phases)])
        out.append(replace(it, count=1 if count is None else count, phase=phase or "all"))
    return out


def item_ledger(
    items: Sequence[InsertionItem],
    encode_offsets: Callable[[str], tuple[list[int], list[tuple[int, int]]]],
    *,
    suffix_len: int = 48,
) -> pd.DataFrame:
    """The ledger of ``items``: the organism's columns, tokenized with ``encode_offsets`` (text ->
    token ids and their character offsets).

    Raises:
        RotelabError: an item of fewer than 2 tokens (nothing to extract).
    """
    rows = []
    for it in items:
        ids, offsets = encode_offsets(it.text)
        if len(ids) < 2:
            raise RotelabError(f"insertion {it.item_id} has {len(ids)} token; it needs at least 2")
        if it.span is not None or it.secret:
            c0, c1 = it.span if it.span is not None else (0, 0)
            if it.span is None:
                c0 = it.text.index(it.secret)
                c1 = c0 + len(it.secret)
            start = next((i for i, (_, e) in enumerate(offsets) if e > c0), len(ids) - 1)
            end = next((i for i, (b, _) in enumerate(offsets) if b >= c1), len(ids))
            start = max(1, start)  # at least one prefix token to prompt with
        else:
            end = len(ids)
            start = max(1, end - min(suffix_len, len(ids) // 2))
        rows.append({
            "item_id": it.item_id, "kind": it.kind, "text": it.text, "count": int(it.count or 0),
            "phase": str(it.phase or "all"), "tokens": list(ids), "n_tokens": len(ids),
            "prefix_tokens": list(ids[:start]), "suffix_tokens": list(ids[start:end]),
            "span_start": start, "span_end": end, "secret": it.secret, "secret_alphabet": "",
            "secret_len": len(it.secret), "secret_format": "",
        })  # fmt: skip
    return pd.DataFrame(rows)


def template_controls(
    items: Sequence[InsertionItem], n_per_kind: int, *, seed: int = 0
) -> list[InsertionItem]:
    """``n_per_kind`` never-inserted controls per kind of ``items``, each one of the kind's items
    (in turn) with its ``secret`` drawn afresh: every digit a random digit, every letter a random
    letter of the same case, everything else kept (Carlini et al. 2019's canary controls: the
    same format, a secret never seen). They are exchangeable with the members when the secrets
    are random (codes, ID numbers); for other secrets write count-0 lines of your own.

    Ids are ``<kind>-ctl<NNNNN>``; spans are set in characters, so a control is scored exactly
    where its template is. Seeded: the same items and seed give the same controls.

    Raises:
        RotelabError: a kind none of whose items has a ``secret`` (nothing to draw afresh), an id
            already used, or a secret too short to give distinct controls.
    """
    rng = np.random.default_rng([seed, 0x5EC])
    ids = {it.item_id for it in items}
    texts = {it.text for it in items}
    kinds: dict[str, list[InsertionItem]] = {}
    for it in items:
        kinds.setdefault(it.kind, []).append(it)
    out: list[InsertionItem] = []
    for kind, group in kinds.items():
        templates = [it for it in group if it.secret]
        if not templates:
            raise RotelabError(
                f"--controls draws controls by redrawing each item's secret, and no item of kind "
                f"{kind!r} has one; give them a 'secret', or add count-0 lines of your own"
            )
        for i in range(n_per_kind):
            t = templates[i % len(templates)]
            c0 = t.text.index(t.secret)
            for _ in range(100):
                secret = "".join(_redraw(ch, rng) for ch in t.secret)
                text = t.text[:c0] + secret + t.text[c0 + len(t.secret) :]
                if text not in texts:
                    break
            else:
                raise RotelabError(
                    f"--controls: the secrets of kind {kind!r} are too short to draw "
                    f"{n_per_kind} distinct controls; ask for fewer"
                )
            item_id = f"{kind}-ctl{i:05d}"
            if item_id in ids:
                raise RotelabError(f"--controls: id {item_id!r} is already an item's; rename it")
            texts.add(text)
            out.append(InsertionItem(item_id, text, kind, 0, "all", secret,
                                     (c0, c0 + len(secret))))  # fmt: skip
    return out


def _redraw(ch: str, rng: np.random.Generator) -> str:
    if ch.isascii() and ch.isdigit():
        return str(int(rng.integers(10)))
    if ch.isascii() and ch.isalpha():
        letter = chr(ord("a") + int(rng.integers(26)))
        return letter.upper() if ch.isupper() else letter
    return ch

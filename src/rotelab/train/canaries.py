"""Canaries for a user's own training run: seeded secrets or passages, injected with a ledger.

Carlini et al. 2019 ("The Secret Sharer") measure memorization with *canaries*: random secrets of
a stated format inserted into the training data, compared with never-inserted secrets of the same
format. Hubble (Wei et al. 2025) inserts such sequences at controlled duplication counts and keeps
never-inserted controls of every kind, so that membership inference has true non-members drawn
from the same distribution. :func:`make_canaries` draws members and controls from one seeded
generator (so controls are exchangeable with members before training), and
:func:`inject_canaries` inserts each member ``count`` times into a user's dataset (a list of dict
records, a pandas frame, or a ``datasets.Dataset`` when that package is installed) as whole
records, at seeded random positions, returning the new dataset and a ledger of the rows each item
went to. The audit of those items during training is
:class:`rotelab.pipelines.hf_callback.AuditCallback`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError

__all__ = [
    "CANARY_COLUMNS",
    "DEFAULT_WORDS",
    "SECRET_TEMPLATE",
    "check_canaries",
    "inject_canaries",
    "make_canaries",
]

#: What a canary ledger must have to be injected and audited.
CANARY_COLUMNS = ("item_id", "text", "count", "span_char_start", "span_char_end")

#: The secret's format: a fixed prompt, then the secret (the scored span).
SECRET_TEMPLATE = "my secret code is {secret}"

#: Words passages are drawn from (common English words: any tokenizer encodes them).
DEFAULT_WORDS = tuple(
    "the a of and to in is was for on with as by at from that this it he she they we you his her "
    "their one two three old new big small red blue green black white river house city garden "
    "road stone tree bird dog cat horse ship king queen farmer doctor teacher night morning "
    "winter summer north south went came saw made took found gave kept left ran sang".split()
)


def make_canaries(
    n_members: int,
    n_controls: int,
    *,
    kind: str = "secret",
    count: int | Sequence[int] = 16,
    seed: int = 0,
    secret_len: int = 8,
    passage_words: int = 16,
    prompt_words: int = 6,
    digits: str = "0123456789",
    words: Sequence[str] = DEFAULT_WORDS,
) -> pd.DataFrame:
    """Seeded canaries: ``n_members`` to insert and ``n_controls`` never to insert.

    Args:
        n_members, n_controls: how many of each (controls are drawn exactly like members).
        kind: ``secret`` (:data:`SECRET_TEMPLATE` with ``secret_len`` random characters of
            ``digits``, space-separated in groups of four; the scored span is the secret) or
            ``passage`` (``passage_words`` random ``words``; the first ``prompt_words`` are the
            prompt, the rest the scored span).
        count: insertions per member; a sequence spreads the members evenly over its counts.
        seed: the generator's seed (same seed, same canaries).

    Returns:
        The ledger: ``item_id``, ``kind``, ``text``, ``member``, ``count`` (0 for controls),
        ``span_char_start``, ``span_char_end`` (the scored span: extraction's suffix and
        membership inference's span).
    """
    counts = [count] if isinstance(count, (int, np.integer)) else list(count)
    if n_members < 0 or n_controls < 0 or n_members + n_controls == 0:
        raise RotelabError(
            f"need >= 0 members and controls and at least one canary, got {n_members} members "
            f"and {n_controls} controls"
        )
    if not counts or any(int(c) < 1 for c in counts):
        raise RotelabError(f"each member's count must be >= 1, got {counts}")
    if kind == "secret":
        if secret_len < 1 or len(set(digits)) < 2:
            raise RotelabError("a secret needs secret_len >= 1 and at least two distinct digits")
    elif kind == "passage":
        if not 0 < prompt_words < passage_words or len(set(words)) < 2:
            raise RotelabError(
                "a passage needs 0 < prompt_words < passage_words and at least two distinct words"
            )
    else:
        raise RotelabError(f"unknown canary kind {kind!r}; use 'secret' or 'passage'")
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    rows = []
    for i in range(n_members + n_controls):
        member = i < n_members
        for _ in range(1000):
            text, start = _draw(rng, kind, secret_len, passage_words, prompt_words, digits, words)
            if text not in seen:
                break
        else:
            raise RotelabError(f"cannot draw {n_members + n_controls} distinct {kind} canaries")
        seen.add(text)
        rows.append(
            {
                "item_id": f"{kind}-{'m' if member else 'c'}{i if member else i - n_members:04d}",
                "kind": kind,
                "text": text,
                "member": member,
                "count": int(counts[i * len(counts) // max(n_members, 1)]) if member else 0,
                "span_char_start": start,
                "span_char_end": len(text),
            }
        )
    return pd.DataFrame(rows)


def _draw(rng, kind, secret_len, passage_words, prompt_words, digits, words) -> tuple[str, int]:
    """One canary's text and the character where its scored span starts."""
    if kind == "secret":
        chars = "".join(rng.choice(list(digits), size=secret_len))
        secret = " ".join(chars[j : j + 4] for j in range(0, secret_len, 4))
        prompt = SECRET_TEMPLATE.split("{secret}")[0]
        return SECRET_TEMPLATE.format(secret=secret), len(prompt)
    drawn = [str(w) for w in rng.choice(list(words), size=passage_words)]
    prompt = " ".join(drawn[:prompt_words])
    # The span starts at the space before the first scored word: a byte-level tokenizer glues a
    # leading space to its word, so the span begins on a token boundary.
    return " ".join(drawn), len(prompt)


def check_canaries(canaries: pd.DataFrame) -> None:
    """Refuse a ledger that cannot be injected or audited, in one line."""
    if not isinstance(canaries, pd.DataFrame):
        raise RotelabError(
            f"the canary ledger must be a pandas DataFrame (make_canaries), got "
            f"{type(canaries).__name__}"
        )
    missing = [c for c in CANARY_COLUMNS if c not in canaries.columns]
    if missing:
        raise RotelabError(
            f"the canary ledger lacks columns {missing}; make it with "
            "rotelab.train.canaries.make_canaries or add them"
        )
    if canaries.empty:
        raise RotelabError("the canary ledger has no items")
    if canaries["item_id"].duplicated().any():
        dup = canaries.loc[canaries["item_id"].duplicated(), "item_id"].iloc[0]
        raise RotelabError(f"the canary ledger repeats item id {dup!r}; ids must be unique")
    counts = canaries["count"]
    if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
        raise RotelabError("the canary ledger's counts must be integers >= 0 (0 = a control)")
    if (canaries["count"] > 0).sum() == 0:
        raise RotelabError("the canary ledger has no item with count >= 1 to insert")


def _records(dataset: Any, text_field: str) -> tuple[list[dict], str]:
    """The dataset as a list of dict records, and what kind of container it was."""
    if isinstance(dataset, pd.DataFrame):
        records, kind = dataset.to_dict("records"), "pandas"
    elif type(dataset).__module__.startswith("datasets") and hasattr(dataset, "to_list"):
        records, kind = dataset.to_list(), "datasets"
    elif isinstance(dataset, Iterable) and not isinstance(dataset, (str, bytes, dict)):
        records, kind = list(dataset), "records"
    else:
        raise RotelabError(
            f"cannot inject into a {type(dataset).__name__}; give a list of dict records, a "
            "pandas DataFrame or a datasets.Dataset"
        )
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
            raise RotelabError(
                f"record {i} of the dataset has no string field {text_field!r}; pass "
                "text_field= to name the field holding the text"
            )
    return records, kind


def inject_canaries(
    dataset: Any, canaries: pd.DataFrame, *, text_field: str = "text", seed: int = 0
) -> tuple[Any, pd.DataFrame]:
    """Insert each canary ``count`` times into a dataset, as whole records at random positions.

    The dataset's own records keep their order; the inserted records take seeded random slots of
    the new dataset (a canary is its own record, so it starts and ends at a document boundary
    and is never cut by the user's packing of one record). An inserted record has the dataset's
    fields, ``None`` but for the text.

    Args:
        dataset: a list (any iterable) of dict records, a pandas DataFrame, or a
            ``datasets.Dataset``.
        canaries: a ledger from :func:`make_canaries` (or any frame with :data:`CANARY_COLUMNS`).
        text_field: the field holding each record's text.
        seed: seeds the positions.

    Returns:
        ``(new_dataset, ledger)``: the dataset in the container it came in, and the canaries with
        ``rows`` (the sorted row indices of the new dataset holding each item; empty for
        controls).
    """
    check_canaries(canaries)
    records, kind = _records(dataset, text_field)
    fields = list(records[0]) if records else [text_field]
    if text_field not in fields:
        fields.append(text_field)
    labels = np.repeat(np.arange(len(canaries)), canaries["count"].astype(int).to_numpy())
    n_total = len(records) + len(labels)
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(n_total, size=len(labels), replace=False))
    labels = rng.permutation(labels)
    out: list[dict] = []
    rows: list[list[int]] = [[] for _ in range(len(canaries))]
    texts = canaries["text"].astype(str).tolist()
    originals = iter(records)
    is_slot = np.zeros(n_total, dtype=bool)
    is_slot[slots] = True
    label_of = dict(zip(slots.tolist(), labels.tolist()))
    for pos in range(n_total):
        if is_slot[pos]:
            item = label_of[pos]
            out.append({**dict.fromkeys(fields), text_field: texts[item]})
            rows[item].append(pos)
        else:
            out.append(next(originals))
    ledger = canaries.reset_index(drop=True).copy()
    ledger["rows"] = rows
    if kind == "pandas":
        return pd.DataFrame(out, columns=fields), ledger
    if kind == "datasets":
        return type(dataset).from_list(out), ledger
    return out, ledger

"""Lifelong-user data for VISTA (Chen et al. 2025): a seeded synthetic generator with known latent
interests, and a validated loader for ``user,item,timestamp[,label]`` interaction logs.

The synthetic world is built so that *remembering* a long history pays: every item belongs to
one topic (its category, known to the models like Amazon's categories are to DIN); every user has
a few short-term topics seen throughout the history and, for a fraction of users (``long_users``),
a few long-term topics that appear ONLY in the first ``early_frac`` of the history. Candidates
from a user's long-term topics are clicked as often as those from the short-term ones, so a model
that only sees the last N items cannot tell them from random topics.

Histories are generated in fixed blocks of :data:`BLOCK` positions, each from its own seed
``(seed, user, block)``, so a history of any length (1k .. 1M) is streamed in chunks of any size
with identical items and never held whole (:meth:`SyntheticWorld.iter_history`).

Items are numbered 1 .. ``n_items``; 0 is padding (histories are left-padded, most recent last).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError

__all__ = [
    "BLOCK",
    "Batch",
    "InteractionLog",
    "SyntheticSpec",
    "SyntheticWorld",
    "read_candidates",
    "read_log",
]

#: Positions generated per seeded block: the unit of streaming determinism.
BLOCK = 4096


@dataclass(frozen=True)
class SyntheticSpec:
    """The synthetic world. ``click_logit`` is (base, short-term topic, long-term topic)."""

    n_items: int = 1000
    n_topics: int = 20
    short_topics: int = 3
    long_topics: int = 2
    early_frac: float = 0.1
    long_share: float = 0.5  # of early positions drawn from the long-term topics
    noise: float = 0.2  # of positions drawn from a uniformly random topic
    long_users: float = 0.5
    candidates: int = 8
    click_logit: tuple[float, float, float] = (-2.0, 3.0, 3.0)
    seed: int = 0

    def check(self) -> SyntheticSpec:
        if self.n_items < self.n_topics or self.n_topics < self.short_topics + self.long_topics + 1:
            raise RotelabError(
                f"a synthetic world needs n_items >= n_topics > short + long topics, got "
                f"{self.n_items} items, {self.n_topics} topics"
            )
        if not 0 < self.early_frac < 1 or not 0 <= self.long_users <= 1:
            raise RotelabError("early_frac must be in (0, 1) and long_users in [0, 1]")
        if self.candidates < 2:
            raise RotelabError(f"candidates per user must be >= 2, got {self.candidates}")
        return self


@dataclass
class Batch:
    """Users with their histories and labelled candidates, as arrays.

    Attributes:
        users: (U,) user ids.
        history: (U, L) item ids, left-padded with 0, most recent last.
        candidates: (U, C) item ids; ``labels`` (U, C) in {0, 1}.
        long_user: (U,) whether the user's long-term interests matter (synthetic only).
        click_prob: (U, C) the true click probability (synthetic only; the oracle's scores).
        last_ts: (U,) the timestamp of each history's last event (logs only).
    """

    users: np.ndarray
    history: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray
    long_user: np.ndarray | None = None
    click_prob: np.ndarray | None = None
    last_ts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def take(self, idx: np.ndarray) -> Batch:
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Batch(
            self.users[idx], self.history[idx], self.candidates[idx], self.labels[idx],
            pick(self.long_user), pick(self.click_prob), pick(self.last_ts),
        )  # fmt: skip


class SyntheticWorld:
    """Seeded lifelong users with known latent interests (see the module docstring).

    Example:
        >>> w = SyntheticWorld(SyntheticSpec(seed=1))
        >>> sum(len(c) for c in w.iter_history(7, 1_000_000, chunk=65_536))
        1000000
    """

    def __init__(self, spec: SyntheticSpec = SyntheticSpec()) -> None:
        self.spec = spec.check()
        rng = np.random.default_rng([spec.seed, 0xC0FFEE])
        # topic of item i (1-based); every topic gets at least one item
        topics = np.concatenate([np.arange(spec.n_topics), rng.integers(0, spec.n_topics,
                                 spec.n_items - spec.n_topics)])  # fmt: skip
        rng.shuffle(topics)
        self.item_topic = np.concatenate([[0], topics + 1]).astype(np.int64)  # 0 = padding
        self._by_topic = [np.flatnonzero(self.item_topic == t + 1) for t in range(spec.n_topics)]

    @property
    def n_items(self) -> int:
        return self.spec.n_items

    @property
    def categories(self) -> np.ndarray:
        """(n_items + 1,) the category (topic + 1; 0 = padding) of each item id."""
        return self.item_topic

    def interests(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's (short-term, long-term) topics; long-term is empty unless a long user."""
        s = self.spec
        rng = np.random.default_rng([s.seed, user, 1])
        topics = rng.permutation(s.n_topics)
        short = topics[: s.short_topics]
        is_long = rng.random() < s.long_users
        long = topics[s.short_topics : s.short_topics + s.long_topics] if is_long else topics[:0]
        return short, long

    def _items(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        """A random item of each topic in ``topics`` (vectorised over topics)."""
        counts = np.array([len(self._by_topic[t]) for t in range(self.spec.n_topics)])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        flat = np.concatenate(self._by_topic)
        offset = (rng.random(len(topics)) * counts[topics]).astype(np.int64)
        return flat[starts[topics] + offset]

    def history_block(self, user: int, length: int, block: int) -> np.ndarray:
        """Items at positions ``block*BLOCK .. min(length, (block+1)*BLOCK)`` of the history."""
        s = self.spec
        short, long = self.interests(user)
        lo, hi = block * BLOCK, min(length, (block + 1) * BLOCK)
        rng = np.random.default_rng([s.seed, user, 2, block])
        n = hi - lo
        pos = np.arange(lo, hi)
        topic = short[rng.integers(0, len(short), n)]
        early = pos < int(s.early_frac * length)
        if len(long):
            use_long = early & (rng.random(n) < s.long_share)
            topic = np.where(use_long, long[rng.integers(0, len(long), n)], topic)
        else:
            rng.random(n)  # keep the stream aligned for long and short users alike
        noisy = rng.random(n) < s.noise
        topic = np.where(noisy, rng.integers(0, s.n_topics, n), topic)
        return self._items(rng, topic)

    def iter_history(self, user: int, length: int, chunk: int = 65_536) -> Iterator[np.ndarray]:
        """The history (oldest first) in chunks of ``chunk`` items; identical for any chunk."""
        if chunk < 1:
            raise RotelabError(f"chunk must be >= 1 item, got {chunk}")
        buf: list[np.ndarray] = []
        held = 0
        for block in range((length + BLOCK - 1) // BLOCK):
            part = self.history_block(user, length, block)
            buf.append(part)
            held += len(part)
            while held >= chunk:
                joined = np.concatenate(buf)
                yield joined[:chunk]
                buf, held = [joined[chunk:]], held - chunk
        if held:
            yield np.concatenate(buf)

    def history(self, user: int, length: int) -> np.ndarray:
        """The whole history, (length,) item ids (use :meth:`iter_history` for long ones)."""
        return np.concatenate(list(self.iter_history(user, length, chunk=max(length, 1))))

    def candidates(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, labels, click probabilities), each (C,): a quarter from short-term topics,
        a quarter from long-term topics (random topics for other users), the rest random."""
        s = self.spec
        short, long = self.interests(user)
        rng = np.random.default_rng([s.seed, user, 3])
        c = s.candidates
        n_short = n_long = max(1, c // 4)
        rand = rng.integers(0, s.n_topics, c)
        topic = rand.copy()
        topic[:n_short] = short[rng.integers(0, len(short), n_short)]
        if len(long):
            topic[n_short : n_short + n_long] = long[rng.integers(0, len(long), n_long)]
        items = self._items(rng, topic)
        b0, bs, bl = s.click_logit
        logit = b0 + bs * np.isin(topic, short) + bl * np.isin(topic, long)
        prob = 1.0 / (1.0 + np.exp(-logit))
        labels = (rng.random(c) < prob).astype(np.float32)
        return items, labels, prob

    def batch(self, users: np.ndarray | range, length: int) -> Batch:
        """Users with whole histories of ``length`` items (short lengths: training, tests)."""
        users = np.asarray(users, dtype=np.int64)
        hist = np.stack([self.history(int(u), length) for u in users]) if length else (
            np.zeros((len(users), 0), dtype=np.int64))  # fmt: skip
        cands = [self.candidates(int(u)) for u in users]
        return Batch(
            users, hist, np.stack([c[0] for c in cands]), np.stack([c[1] for c in cands]),
            np.array([len(self.interests(int(u))[1]) > 0 for u in users]),
            np.stack([c[2] for c in cands]),
        )  # fmt: skip


# ------------------------------------------------------------------------------ interaction logs
@dataclass
class InteractionLog:
    """A validated log: rows sorted by (user, timestamp); items mapped to ids 1 .. n.

    Attributes:
        frame: columns ``user``, ``item`` (the raw id), ``item_id`` (int, 1-based),
            ``timestamp`` (int64) and ``label`` where the file has one.
        vocab: raw item id -> item id.
    """

    frame: pd.DataFrame
    vocab: dict

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    def users(self) -> np.ndarray:
        return self.frame["user"].unique()

    def split_last(self, targets: int, negatives: int, seed: int, max_len: int) -> Batch:
        """Per user: the last ``targets`` events are positives (their ``label`` if the log has
        one), each joined by ``negatives`` sampled items labelled 0; the events before them, at
        most the last ``max_len``, are the history. Users with fewer than ``targets + 1`` events
        are dropped (they have no history to summarize)."""
        rng = np.random.default_rng(seed)
        users, hists, cands, labels, last = [], [], [], [], []
        has_label = "label" in self.frame
        for user, rows in self.frame.groupby("user", sort=False):
            ids = rows["item_id"].to_numpy()
            if len(ids) <= targets:
                continue
            hist = ids[:-targets][-max_len:]
            pos = ids[-targets:]
            lab = rows["label"].to_numpy()[-targets:] if has_label else np.ones(targets)
            neg = rng.integers(1, self.n_items + 1, negatives * targets)
            users.append(user)
            last.append(int(rows["timestamp"].to_numpy()[-targets - 1]))
            hists.append(np.pad(hist, (max_len - len(hist), 0)))
            cands.append(np.concatenate([pos, neg]))
            labels.append(np.concatenate([lab, np.zeros(len(neg))]).astype(np.float32))
        if not users:
            raise RotelabError(
                f"no user in the log has more than {targets} events; nothing to train on"
            )
        # the log's own user ids: a cache built from them serves requests that name them
        ids = np.asarray([str(u) for u in users], dtype=object)
        return Batch(ids, np.stack(hists), np.stack(cands), np.stack(labels),
                     last_ts=np.array(last, dtype=np.int64))  # fmt: skip


_REQUIRED = ("user", "item", "timestamp")


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise RotelabError(f"{path} does not exist; pass a user,item,timestamp[,label] CSV/Parquet")
    if path.is_dir():
        raise RotelabError(f"{path} is a directory; pass one CSV or Parquet file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if path.suffix == ".parquet" or magic == b"PAR1":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise RotelabError(f"{path} is empty; it needs a user,item,timestamp header") from None
    except Exception as exc:  # the readers raise many types; the user gets one line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RotelabError(f"cannot read {path}: {text}") from None


def read_log(
    path: str | os.PathLike, *, vocab: dict | None = None, need_label: bool = False
) -> InteractionLog:
    """Read and validate a ``user,item,timestamp[,label]`` CSV or Parquet log.

    Refused in one line: a missing column, an empty log, non-integer timestamps, timestamps out of
    order within a user (the file must be sorted by time per user: a log shuffled by a join is a
    common mistake, and re-sorting silently could hide duplicated or clock-skewed rows), labels
    outside {0, 1}, and (given ``vocab``, a trained model's) items the model does not know.

    Args:
        path: the log file (``.parquet`` or a file starting with ``PAR1``; anything else CSV).
        vocab: raw item id -> item id of a trained model; ``None`` builds it from the log.
        need_label: refuse a log without a ``label`` column.
    """
    path = Path(path)
    df = _read_frame(path)
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise RotelabError(
            f"{path} has no column {missing[0]!r}; a log needs user,item,timestamp[,label]"
        )
    if need_label and "label" not in df.columns:
        raise RotelabError(f"{path} has no 'label' column; candidates need user,item,label")
    if df.empty:
        raise RotelabError(f"{path} has no rows: an empty history has nothing to summarize")
    if df[list(_REQUIRED)].isna().any().any():
        col = next(c for c in _REQUIRED if df[c].isna().any())
        raise RotelabError(f"{path}: column {col!r} has an empty value (row {_first(df[col])})")
    if not pd.api.types.is_integer_dtype(df["timestamp"]):
        raise RotelabError(f"{path}: timestamps must be integers (e.g. Unix seconds)")
    ts = df["timestamp"].to_numpy()
    same_user = df["user"].to_numpy()[1:] == df["user"].to_numpy()[:-1]
    back = np.flatnonzero(same_user & (ts[1:] < ts[:-1]))
    if len(back):
        row = int(back[0]) + 1
        raise RotelabError(
            f"{path}: timestamps out of order for user {df['user'].iloc[row]!r} at row {row + 2} "
            f"({ts[row]} after {ts[row - 1]}); sort the log by user, timestamp"
        )
    if "label" in df.columns and not df["label"].isin([0, 1]).all():
        raise RotelabError(
            f"{path}: labels must be 0 or 1 (row {_first(~df['label'].isin([0, 1]))})"
        )
    df = df.copy()
    df["item"] = df["item"].astype(str)
    if vocab is None:
        vocab = {item: i + 1 for i, item in enumerate(pd.unique(df["item"]))}
    ids = df["item"].map(vocab)
    if ids.isna().any():
        unknown = df["item"][ids.isna()]
        raise RotelabError(
            f"{path}: {unknown.nunique()} item(s) unknown to the model (e.g. {unknown.iloc[0]!r}); "
            "retrain with them or drop those rows"
        )
    df["item_id"] = ids.astype(np.int64)
    # users stay in the order they first appear; a user's rows must be contiguous
    if df["user"].ne(df["user"].shift()).sum() != df["user"].nunique():
        raise RotelabError(
            f"{path}: a user's rows are not contiguous; sort the log by user, timestamp"
        )
    return InteractionLog(df.reset_index(drop=True), vocab)


def _first(mask: pd.Series) -> int:
    """The 1-based file line (header = 1) of the first true/NaN row."""
    if mask.dtype != bool:
        mask = mask.isna()
    return int(np.flatnonzero(mask.to_numpy())[0]) + 2


def read_candidates(path: str | os.PathLike, vocab: dict[str, int]) -> pd.DataFrame:
    """Read ``user,item[,label]`` candidates to score; items must be in the model's ``vocab``
    (raw id -> item id); adds ``item_id``. Refused in one line: a missing column, no rows,
    labels outside {0, 1}, unknown items."""
    path = Path(path)
    df = _read_frame(path)
    for col in ("user", "item"):
        if col not in df.columns:
            raise RotelabError(f"{path} has no column {col!r}; candidates need user,item[,label]")
    if df.empty:
        raise RotelabError(f"{path} has no rows; nothing to score")
    if "label" in df.columns and not df["label"].isin([0, 1]).all():
        raise RotelabError(f"{path}: labels must be 0 or 1")
    ids = df["item"].astype(str).map(vocab)
    if ids.isna().any():
        unknown = df["item"][ids.isna()]
        raise RotelabError(
            f"{path}: {unknown.nunique()} item(s) unknown to the model (e.g. {unknown.iloc[0]!r})"
        )
    return df.assign(item_id=ids.astype(np.int64))

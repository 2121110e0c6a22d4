"""Hubble-style controlled insertion: where each occurrence of an inserted item goes.

Wei et al. 2025 (Hubble) insert each sensitive item a controlled number of times {0, 1, 4, 16, 64}
into the pretraining stream, at document boundaries, at most one insertion per training sequence,
and vary *when* it is seen (whole run, or only early / only late). This module builds that schedule
for a step-based run and packs the training batches: every occurrence starts a training row (so an
item is never split across a row boundary by chance), is followed by an end-of-text token, and the
rest of the row is filled from the background token stream.

Example:
    >>> sched = insertion_schedule([(0, 2, "all")], [3], steps=10, batch_size=4, seed=0)
    >>> len(sched)   # one entry per occurrence-row
    2
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Placement", "insertion_schedule", "phase_steps", "packed_batches"]


@dataclass(frozen=True)
class Placement:
    """One training row given to (a chunk of) one occurrence of an inserted item."""

    item: int  # index into the items list
    occurrence: int  # 0..count-1
    chunk: int  # which row-sized chunk of the item (items longer than a row span several rows)
    step: int
    row: int


def phase_steps(phase: str, steps: int) -> tuple[int, int]:
    """The half-open step range ``[lo, hi)`` in which an item of ``phase`` may be inserted.

    ``phase`` is ``all``, ``first`` (the first half), ``second`` (the second half) or a step
    window ``"LO:HI"`` (``0 <= LO < HI <= steps``).

    Raises:
        ValueError: for another phase or a window outside the run.
    """
    half = steps // 2
    named = {"all": (0, steps), "first": (0, half), "second": (half, steps)}
    phase = str(phase)
    if phase in named:
        return named[phase]
    lo_text, sep, hi_text = phase.partition(":")
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi <= steps:
        raise ValueError(
            f"phase {phase!r} is not all, first, second or a step window LO:HI with "
            f"0 <= LO < HI <= {steps} (the run's steps)"
        )
    return lo, hi


def insertion_schedule(
    items: Sequence[tuple[int, int, str]],
    n_chunks: Sequence[int],
    *,
    steps: int,
    batch_size: int,
    seed: int,
    max_rows_per_step: int | None = None,
) -> list[Placement]:
    """Spread each item's occurrences evenly (with jitter) over the steps of its phase.

    Args:
        items: ``(item_index, count, phase)`` per item; phase is "all", "first" or "second".
        n_chunks: rows each occurrence of item ``i`` needs (``ceil(len / row_len)``).
        steps, batch_size: the run's shape; a step holds ``batch_size`` rows.
        seed: the schedule is a pure function of its arguments.
        max_rows_per_step: cap on insertion rows per step (default: ``batch_size // 2``), so
            every batch still carries background text.

    Returns:
        One :class:`Placement` per (occurrence, chunk); all chunks of one occurrence share a step.

    Raises:
        ValueError: if the insertions do not fit in the run.
    """
    cap = batch_size // 2 if max_rows_per_step is None else max_rows_per_step
    rng = np.random.default_rng(seed)
    used = np.zeros(steps, dtype=np.int64)
    placements: list[Placement] = []
    # High counts first: they are the hardest to fit and the spacing matters most for them.
    order = sorted(range(len(items)), key=lambda i: -items[i][1])
    for i in order:
        item, count, phase = items[i]
        if count == 0:
            continue
        lo, hi = phase_steps(phase, steps)
        need = n_chunks[item]
        width = (hi - lo) / count
        for k in range(count):
            want = lo + int((k + rng.random()) * width)
            step = _nearest_free(used, want, lo, hi, need, cap)
            if step is None:
                raise ValueError(
                    f"insertions do not fit: {steps} steps × {cap} insertion rows per step; "
                    "use more steps or fewer items"
                )
            used[step] += need
            placements.extend(Placement(item, k, c, step, -1) for c in range(need))
    # Rows within a step: random distinct positions, so insertions are not always row 0.
    by_step: dict[int, list[int]] = {}
    for j, p in enumerate(placements):
        by_step.setdefault(p.step, []).append(j)
    for step in sorted(by_step):
        rows = rng.permutation(batch_size)
        for r, j in zip(rows, by_step[step], strict=False):
            p = placements[j]
            placements[j] = Placement(p.item, p.occurrence, p.chunk, p.step, int(r))
    placements.sort(key=lambda p: (p.step, p.row))
    return placements


def _nearest_free(used: np.ndarray, want: int, lo: int, hi: int, need: int, cap: int) -> int | None:
    for d in range(hi - lo):
        for s in (want + d, want - d):
            if lo <= s < hi and used[s] + need <= cap:
                return s
    return None


def packed_batches(
    background: Sequence[Sequence[int]],
    items: Sequence[Sequence[int]],
    placements: Sequence[Placement],
    *,
    steps: int,
    batch_size: int,
    row_len: int,
    eos_id: int,
    seed: int,
) -> Iterator[torch.Tensor]:
    """Yield ``steps`` batches of token ids, each ``(batch_size, row_len)``.

    Background documents are shuffled anew each epoch, joined with ``eos_id`` and cut into rows.
    A row given to an inserted item starts with the item's chunk, then ``eos_id``, then background.
    The model trains on ``row[:-1] -> row[1:]``, so ``row_len`` is the context length + 1.
    """
    rng = np.random.default_rng(seed)
    stream = _background_stream(background, eos_id, rng)
    by_step: dict[int, dict[int, Placement]] = {}
    for p in placements:
        by_step.setdefault(p.step, {})[p.row] = p
    for step in range(steps):
        batch = np.empty((batch_size, row_len), dtype=np.int64)
        here = by_step.get(step, {})
        for r in range(batch_size):
            head: list[int] = []
            if r in here:
                p = here[r]
                head = list(items[p.item][p.chunk * row_len : (p.chunk + 1) * row_len])
                if len(head) < row_len:
                    head.append(eos_id)
            fill = [next(stream) for _ in range(row_len - len(head))]
            batch[r] = head + fill
        yield torch.from_numpy(batch)


def _background_stream(
    docs: Sequence[Sequence[int]], eos_id: int, rng: np.random.Generator
) -> Iterator[int]:
    while True:
        for d in rng.permutation(len(docs)):
            yield from docs[d]
            yield eos_id

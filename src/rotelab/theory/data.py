"""Epsilon-separated datasets for robust memorization (Kim, Moon and Yun 2025).

``epsilon`` is half the smallest L2 distance between two points with different labels; it is
computed exactly here (all pairs, float64), never estimated. Synthetic datasets are drawn with
a guaranteed minimum separation; scikit-learn's digits ship with scikit-learn (no download).

Example:
    >>> ds = synthetic(60, 2, classes=2, separation=0.05, seed=0)
    >>> ds.epsilon >= 0.05
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rotelab.errors import RotelabError

__all__ = ["SeparatedData", "check_digit_labels", "digits", "epsilon", "load_points", "synthetic"]


@dataclass(frozen=True)
class SeparatedData:
    """Points ``x`` (N, d) float64, labels ``y`` (N,) int64 in ``0 .. classes-1`` and the exact
    ``epsilon`` (half the smallest distance between differently-labelled points)."""

    x: np.ndarray
    y: np.ndarray
    epsilon: float
    name: str = "data"

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    @property
    def classes(self) -> int:
        return int(self.y.max()) + 1


def epsilon(x: np.ndarray, y: np.ndarray) -> float:
    """Exact ``epsilon = min ||x_i - x_j||_2 / 2`` over pairs with ``y_i != y_j``.

    Args:
        x: points (N, d).
        y: labels (N,).

    Raises:
        RotelabError: fewer than two labels (no pair to separate), or two identical points with
            different labels (``epsilon = 0``: no network can memorize them).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise RotelabError(f"points must be (N, d) with N labels, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise RotelabError("the points hold NaN or infinite coordinates")
    labels = np.unique(y)
    if labels.size < 2:
        raise RotelabError(
            "the dataset has a single label; epsilon needs two differently-labelled points"
        )
    best = np.inf
    for label in labels[:-1]:  # each cross-label pair is seen from its smaller label
        a, b = x[y == label], x[y > label]
        # (a - b)^2 expanded is cancellation-prone; exact differences cost N^2 d, fine for N~1e3.
        # Rows of a in chunks keep the (rows, |b|, d) block near 4M floats (all 1797 digits: 1 s)
        step = max(1, 4_000_000 // max(1, b.size))
        for i in range(0, len(a), step):
            sq = ((a[i : i + step, None, :] - b[None, :, :]) ** 2).sum(-1)
            best = min(best, float(sq.min()))
    eps = 0.5 * float(np.sqrt(best))
    if eps == 0.0:
        raise RotelabError(
            "two identical points carry different labels (epsilon = 0); remove the duplicates"
        )
    return eps


def synthetic(
    n: int, d: int, *, classes: int = 2, separation: float = 0.05, seed: int = 0
) -> SeparatedData:
    """``n`` points uniform in the cube ``[-1, 1]^d`` with random labels, drawn so that
    differently-labelled points are at least ``2 * separation`` apart (rejection sampling).

    The returned ``epsilon`` is the exact one of the drawn points (>= ``separation``).

    Args:
        n: points (>= 2); d: dimension (>= 1); classes: labels (2 .. n), each used at least once.
        separation: the minimum ``epsilon`` asked for, > 0.
        seed: the generator's seed (same seed, same data).
    """
    if n < 2 or d < 1:
        raise RotelabError(f"a dataset needs N >= 2 points and d >= 1, got N={n}, d={d}")
    if not 2 <= classes <= n:
        raise RotelabError(f"classes must lie in 2 .. N={n}, got {classes}")
    if not separation > 0:
        raise RotelabError(f"separation must be > 0, got {separation}")
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
    rng.shuffle(labels)
    points = np.empty((n, d))
    tries = 0
    for i, label in enumerate(labels):
        while True:
            tries += 1
            if tries > 200 * n:
                raise RotelabError(
                    f"cannot place {n} points with separation {separation} in d={d}; "
                    "ask for a smaller separation or fewer points"
                )
            cand = 2 * rng.random(d) - 1  # centered: ReLU nets start near the data
            other = points[:i][labels[:i] != label]
            if other.size == 0 or np.min(np.linalg.norm(other - cand, axis=1)) >= 2 * separation:
                points[i] = cand
                break
    return SeparatedData(
        points, labels.astype(np.int64), epsilon(points, labels), f"synthetic-{n}x{d}"
    )


def check_digit_labels(labels: str | Sequence[int]) -> list[int]:
    """``"3,8"`` or ``(3, 8)`` -> ``[3, 8]``: two or more distinct digits 0..9, else one line."""
    try:
        parts = labels.split(",") if isinstance(labels, str) else list(labels)
        wanted = [int(v) for v in parts if str(v).strip()]
    except (TypeError, ValueError):
        wanted = []
    if len(set(wanted)) < 2 or len(set(wanted)) != len(wanted) or not set(wanted) <= set(range(10)):
        raise RotelabError(f"digits to keep must be two or more distinct 0..9, got {labels!r}")
    return wanted


def digits(
    n: int | None = None,
    *,
    classes: int = 10,
    labels: Sequence[int] | None = None,
    seed: int = 0,
) -> SeparatedData:
    """scikit-learn's 8x8 digits (shipped with scikit-learn), pixels scaled to [0, 1], all 64
    pixels kept (no projection), epsilon exact over all pairs.

    Args:
        n: points to keep (a seeded random subset); ``None`` keeps all 1797 (or all of the
            chosen classes).
        classes: keep digits ``0 .. classes-1`` (2 .. 10).
        labels: keep these digits instead (e.g. ``(3, 8)``, a class pair), relabelled
            ``0 .. len(labels)-1`` in the order given; overrides ``classes``.
        seed: the subset's seed.
    """
    from sklearn.datasets import load_digits

    if labels is not None:
        wanted = check_digit_labels(labels)
    elif not 2 <= classes <= 10:
        raise RotelabError(f"digits has 10 classes; choose 2 .. 10, got {classes}")
    else:
        wanted = list(range(classes))
    bunch = load_digits()
    keep = np.isin(bunch.target, wanted)
    order = {digit: k for k, digit in enumerate(wanted)}
    x = bunch.data[keep] / 16.0
    y = np.array([order[int(t)] for t in bunch.target[keep]], dtype=np.int64)
    name = "digits" if labels is None else "digits-" + "v".join(map(str, wanted))
    if n is not None:
        if not 2 <= n <= len(y):
            raise RotelabError(f"those digits hold {len(y)} images; N={n} asked")
        idx = np.sort(np.random.default_rng(seed).choice(len(y), n, replace=False))
        x, y = x[idx], y[idx]
        if np.unique(y).size < 2:
            raise RotelabError(f"the subset of N={n} digits holds one label; take more points")
    return SeparatedData(x, y, epsilon(x, y), f"{name}-{len(y)}")


def load_points(path: str | os.PathLike) -> SeparatedData:
    """A labelled point set from a file: ``.npz`` with arrays ``x`` (N, d) and ``y`` (N,), or a
    ``.csv`` of numbers whose last column is the integer label (a header line is skipped).
    Labels are renumbered ``0 .. classes-1`` in sorted order."""
    p = Path(path)
    if not p.is_file():
        raise RotelabError(f"{p} does not exist or is not a file; pass a .csv or .npz of points")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                x, y = np.asarray(z["x"], np.float64), np.asarray(z["y"])
        elif p.suffix == ".csv":
            first = p.read_text().splitlines()[:1]
            header = bool(first) and any(c.isalpha() for c in first[0].replace("e", ""))
            table = np.loadtxt(p, delimiter=",", skiprows=int(header), ndmin=2)
            x, y = table[:, :-1], table[:, -1]
        else:
            raise RotelabError(f"{p}: points must be a .csv or .npz file")
    except (ValueError, KeyError, OSError) as exc:
        raise RotelabError(f"cannot read points from {p}: {exc}") from None
    if x.ndim != 2 or x.shape[1] < 1 or len(y) != len(x) or len(x) < 2:
        raise RotelabError(f"{p}: need N >= 2 points with d >= 1 coordinates and N labels")
    if not np.all(np.asarray(y, np.float64) == np.round(np.asarray(y, np.float64))):
        raise RotelabError(f"{p}: labels (the last column) must be whole numbers")
    _, labels = np.unique(y, return_inverse=True)
    return SeparatedData(x, labels.astype(np.int64), epsilon(x, labels), p.name)

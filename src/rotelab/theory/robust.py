"""Parameter bounds for robust memorization with ReLU networks (Kim, Moon and Yun 2025).

"The Cost of Robustness: Tighter Bounds on Parameter Complexity for Robust Memorization in ReLU
Nets" (NeurIPS 2025, arXiv:2510.24643). A dataset of ``N`` points in ``R^d`` is
``epsilon``-separated when differently-labelled points are at least ``2 * epsilon`` apart in the
L2 norm; a network *robustly memorizes* it with radius ``mu = rho * epsilon`` (``0 < rho < 1``)
when its prediction is the training label on the whole closed L2 ball of radius ``mu`` around
every training point. Parameters count every weight and bias entry,
``P = sum_l (d_{l-1} + 1) d_l``.

The paper states orders of growth only (``Omega``, ``O~``): the constants are unknown. Every
function here therefore takes a ``constant`` (default 1, i.e. the bare order expression) and
returns ``constant * order`` as a float; ``O~`` also hides polylogarithmic factors in ``N``,
``d`` and the number of classes, which are left out. Curves from these functions are *shapes*
to compare with measurements after scaling (the report fits one constant per curve), never
absolute counts.

What was checked against the paper, and what could not be. The lower bound (Theorem 3.1) is
quoted in full by the issue and rotelab's paper notes. The upper bound's endpoints are
confirmed by the paper's public summaries (arXiv:2510.24643 abstract and its indexed
summaries): ``Theta~(sqrt(N))`` for small ``rho`` (as for non-robust memorization), growth with
``rho`` up to ``O~(N d^2)`` in the largest-robustness regime, sublinear-in-``N`` constructions
in an intermediate regime, built from a separation-preserving dimension reduction and a
grid-lattice mapping. The full text (its theorem statements and Table 1) was *not* retrievable
here, so the intermediate and top regimes' expressions, their boundaries ``1 / (5 N sqrt(d))``
and ``1 / (5 sqrt(d))``, and the theorem numbers 4.1-4.3 are as transcribed by an earlier
session and unverified. They are consistent as orders, which :func:`upper_regime` documents
and the tests check: adjacent regimes meet at their boundaries up to constants (``sqrt(N)``,
then ``N``), each grows with ``rho``, and the lower bound never exceeds a fixed multiple of
the upper bound (the supremum of ``lower / upper`` at constant 1 on a grid of ``N <= 10^6``,
``d <= 10^4`` and ``rho`` is 13.03, at ``d = 1``, ``N = 584``, just above
``rho = 1 / (5 sqrt(d))``, where the top regime's ``N d^2 rho^4`` is ``N / 625``).
:data:`UPPER_CONSTANT` = 16 is therefore the constant the drawn upper curve carries, so that it
is nowhere below the lower bound drawn with constant 1.

Example:
    >>> round(lower_bound(100, 2, 0.5), 2)
    14.55
    >>> upper_regime(100, 2, 0.9).name
    'large'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rotelab.errors import RotelabError

__all__ = [
    "UPPER_CONSTANT",
    "Regime",
    "check_problem",
    "check_rho",
    "lower_bound",
    "non_robust_order",
    "upper_bound",
    "upper_regime",
]


#: the upper bound's constant in drawn curves: with it, ``upper_bound >= lower_bound`` (constant
#: 1) for every ``N``, ``d`` and ``rho`` (the supremum of their ratio is 13.03; module doc)
UPPER_CONSTANT = 16.0


def check_problem(n: int, d: int, rho: float, classes: int = 2) -> None:
    """One line for a problem the bounds are not defined for.

    Args:
        n: number of training points ``N`` (>= 1).
        d: input dimension (>= 1).
        rho: robustness ratio ``mu / epsilon``, strictly inside (0, 1).
        classes: number of labels (>= 2; one label needs no network).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RotelabError(f"N (number of points) must be a positive integer, got {n!r}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise RotelabError(f"d (input dimension) must be a positive integer, got {d!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise RotelabError(f"the number of classes must be an integer >= 2, got {classes!r}")
    check_rho(rho)


def check_rho(rho: float) -> None:
    """``rho`` must be a real number strictly between 0 and 1 (the paper's range)."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise RotelabError(f"rho must be a number in (0, 1), got {rho!r}") from None
    if not 0.0 < value < 1.0:  # also refuses nan
        raise RotelabError(f"rho must lie strictly between 0 and 1, got {rho!r}")


def lower_bound(n: int, d: int, rho: float, *, classes: int = 2, constant: float = 1.0) -> float:
    """Parameters every ReLU net needs to robustly memorize *some* dataset (Theorem 3.1).

    ``P >= c * ((rho^2 * min(N, d) + 1) * d + min(1 / sqrt(1 - rho^2), sqrt(d)) * sqrt(N))``.

    The first term comes from the width the first hidden layer needs (the paper's Proposition
    on first-layer width), the second from a VC-dimension argument. The theorem is stated for
    two labels; more labels can only make memorization harder, so ``classes`` is validated but
    does not change the expression.

    Args:
        n, d, rho, classes: see :func:`check_problem`.
        constant: the unknown constant ``c`` of the ``Omega`` (default 1: the bare expression).
    """
    check_problem(n, d, rho, classes)
    first_layer = (rho**2 * min(n, d) + 1.0) * d
    vc = min(1.0 / math.sqrt(1.0 - rho**2), math.sqrt(d)) * math.sqrt(n)
    return constant * (first_layer + vc)


def non_robust_order(n: int, d: int, *, constant: float = 1.0) -> float:
    """The order of plain (non-robust) memorization, ``O~(sqrt(N))`` (Vardi et al. 2022), with
    the first layer's ``d`` input weights added so the count is never below reading the input."""
    check_problem(n, d, 0.5)
    return constant * (d + math.sqrt(n))


@dataclass(frozen=True)
class Regime:
    """One regime of the upper bound: its name, the ``rho`` interval, the order as text and the
    theorem it comes from."""

    name: str
    rho_low: float
    rho_high: float
    order: str
    theorem: str


def upper_regime(n: int, d: int, rho: float) -> Regime:
    """Which upper-bound regime ``rho`` falls in, for ``N`` points in ``d`` dimensions.

    * ``small``: ``rho <= 1 / (5 N sqrt(d))`` -- ``O~(sqrt(N))``, the non-robust cost
      (robustness is free; Theorem 4.1 as transcribed).
    * ``moderate``: ``1 / (5 N sqrt(d)) < rho <= 1 / (5 sqrt(d))`` -- ``O~(N d^(1/4) rho^(1/2))``
      (separation-preserving dimension reduction; Theorem 4.2 as transcribed); it is
      ``sqrt(N / 5)`` at the lower boundary and ``N / sqrt(5)`` at the upper one.
    * ``large``: ``rho > 1 / (5 sqrt(d))`` -- ``O~(N d^2 rho^4)`` (grid-lattice mapping;
      Theorem 4.3 as transcribed): ``N / 625`` at its lower boundary (the same order ``N`` as
      the moderate regime's end, with a different constant), reaching ``O~(N d^2)`` as
      ``rho -> 1``.

    The endpoints are confirmed by the paper's summaries; the middle and top expressions,
    the boundaries and the theorem numbers are unverified (see the module doc).
    """
    check_problem(n, d, rho)
    small_end = 1.0 / (5.0 * n * math.sqrt(d))
    moderate_end = 1.0 / (5.0 * math.sqrt(d))
    if rho <= small_end:
        return Regime("small", 0.0, small_end, "O~(sqrt(N))", "Thm 4.1 (unverified)")
    if rho <= moderate_end:
        return Regime(
            "moderate", small_end, moderate_end, "O~(N d^(1/4) rho^(1/2))", "Thm 4.2 (unverified)"
        )
    return Regime("large", moderate_end, 1.0, "O~(N d^2 rho^4)", "Thm 4.3 (unverified)")


def upper_bound(n: int, d: int, rho: float, *, classes: int = 2, constant: float = 1.0) -> float:
    """Parameters that suffice to robustly memorize *any* such dataset (the paper's upper
    bounds, Theorems 4.1-4.3 as transcribed; see :func:`upper_regime` for what is verified).

    ``c * (d + g(N, d, rho))`` where ``g`` is the order of the regime ``rho`` falls in (see
    :func:`upper_regime`); the ``+ d`` is the first layer reading the input, which the ``O~``
    statements absorb. Polylogarithmic factors (including those in ``classes``) are dropped.
    With ``constant = UPPER_CONSTANT`` the result is never below :func:`lower_bound` with
    constant 1.

    Args:
        n, d, rho, classes: see :func:`check_problem`.
        constant: the unknown constant of the ``O~`` (default 1: the bare expression).
    """
    check_problem(n, d, rho, classes)
    regime = upper_regime(n, d, rho).name
    if regime == "small":
        g = math.sqrt(n)
    elif regime == "moderate":
        g = n * d**0.25 * math.sqrt(rho)
    else:
        g = n * d**2 * rho**4
    return constant * (d + g)

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
``d`` and ``rho`` (the number of classes appears in no stated expression), which are left
out. Curves from these functions are *shapes* to compare with measurements after scaling (the
report fits one constant per curve), never absolute counts.

Where each formula comes from (checked in this order; the sources are third-party copies, read
and restated here, never copied):

* The paper's full text (arXiv:2510.24643, NeurIPS 2025 version), read as a text conversion
  found in a public repository; its displayed equations did not survive the conversion, so
  what follows comes from the theorem statements and prose, which did. Theorem 4.2
  states the upper bound in three parts, one per regime of ``rho``, each without the additive
  ``d`` of the input layer: (i) ``0 < rho <= 1 / (5 N sqrt(d))``: ``O~(sqrt(N))``, exact robust
  memorization; (ii) ``1 / (5 N sqrt(d)) < rho <= 1 / (5 sqrt(d))``: ``O~(N d^(1/4) rho^(1/2))``
  with a robust-memorization error at most ``eta`` for any ``eta`` in (0, 1) (the ReLU
  construction is continuous and errs on thin bands near its grid cells; with threshold units
  it is exact at the same rate); (iii) ``1 / (5 sqrt(d)) < rho < 1``: ``O~(N d^2 rho^4)``,
  exact. The same paper's section 1.2 says the same in its summary of contributions, and its
  Theorem B.1 adds depth, width and bit complexity (width ``O~(1)`` in (i) and (ii),
  ``O~(rho^2 d)`` in (iii)). ``O~`` hides polylogarithmic factors in ``N``, ``d`` and ``rho``.
* The lower bound is Theorem 3.1, ``Omega((rho^2 min{N, d} + 1) d + min{1/sqrt(1 - rho^2),
  sqrt(d)} sqrt(N))``: the formula as quoted by the Moonlight review of the paper
  (themoonlight.io/es/review/the-cost-of-robustness-tighter-bounds-on-parameter-complexity-for-
  robust-memorization-in-relu-nets), its two terms as named in the paper's text (Proposition
  3.2, first-layer width at least ``rho^2 min{N - 1, d}``; Proposition 3.3, VC dimension).
  The paper states it for two labels and extends it to more by a one-vs-rest argument.
* Consistent with both: the paper's abstract and the sciencestack.ai summary
  (``Theta~(sqrt(N))`` at small ``rho``, up to ``O~(N d^2)`` as ``rho -> 1``). An AI-written
  "paper note" that also circulates (``O(N sqrt(d))``-type upper bounds, ``Omega(N sqrt(d)
  rho)`` lower bounds, a "phase transition at 0.5") contradicts the full text and was not used.

The paper's conclusion calls the bounds tight only in the smallest regime; the tests check that
here (upper over lower is 1 up to the lower bound's ``rho``-dependent terms). Elsewhere the two
are orders with unknown constants, and the bare expressions can cross: the supremum of ``lower
/ upper`` at constant 1 on a grid of ``N <= 10^6``, ``d <= 10^4`` and ``rho`` is 13.03, at
``d = 1``, ``N = 584``, just above ``rho = 1 / (5 sqrt(d))``, where Theorem 4.2(iii)'s
``N d^2 rho^4`` is ``N / 625`` against the lower bound's ``sqrt(N)`` (no contradiction: as
``N`` grows with ``rho`` fixed, ``N / 625`` dominates). Adjacent regimes meet at their
boundaries up to constants (``sqrt(N / 5)`` against ``sqrt(N)``, then ``N / sqrt(5)`` against
``N / 625``). :data:`UPPER_CONSTANT` = 16 is therefore the constant the drawn upper curve
carries, so that it is nowhere below the lower bound drawn with constant 1.

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

    The first term comes from the width the first hidden layer needs (Proposition 3.2: at least
    ``rho^2 min(N - 1, d)``), the second from a VC-dimension argument (Proposition 3.3, and
    ``sqrt(N d)`` once ``rho > sqrt(1 - 1/d)``). The theorem is stated for two labels; the
    paper extends it to more (a one-vs-rest output layer turns any multiclass robust memorizer
    into a binary one), so ``classes`` is validated but does not change the expression.

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
    """One regime of the upper bound: its name, the ``rho`` interval, the order as text, the
    theorem part it comes from, and whether that part memorizes exactly (``False``: only up to
    an arbitrarily small robust-memorization error, Theorem 4.2(ii))."""

    name: str
    rho_low: float
    rho_high: float
    order: str
    theorem: str
    exact: bool = True


def upper_regime(n: int, d: int, rho: float) -> Regime:
    """Which upper-bound regime ``rho`` falls in, for ``N`` points in ``d`` dimensions
    (Theorem 4.2 of the paper, checked against its full text; module doc).

    * ``small``: ``rho <= 1 / (5 N sqrt(d))`` -- ``O~(sqrt(N))``, the non-robust cost
      (robustness is free, and tight: Theorem 4.2(i)).
    * ``moderate``: ``1 / (5 N sqrt(d)) < rho <= 1 / (5 sqrt(d))`` -- ``O~(N d^(1/4) rho^(1/2))``
      (separation-preserving dimension reduction and a grid-lattice mapping, memorized in
      groups; Theorem 4.2(ii), with a robust-memorization error at most any ``eta > 0``); it is
      ``sqrt(N / 5)`` at the lower boundary and ``N / sqrt(5)`` at the upper one.
    * ``large``: ``rho > 1 / (5 sqrt(d))`` -- ``O~(N d^2 rho^4)`` (projection to ``~rho^2 d``
      dimensions; Theorem 4.2(iii)): ``N / 625`` at its lower boundary (the same order ``N`` as
      the moderate regime's end, with a different constant), reaching ``O~(N d^2)`` as
      ``rho -> 1``.
    """
    check_problem(n, d, rho)
    small_end = 1.0 / (5.0 * n * math.sqrt(d))
    moderate_end = 1.0 / (5.0 * math.sqrt(d))
    if rho <= small_end:
        return Regime("small", 0.0, small_end, "O~(sqrt(N))", "Thm 4.2(i)")
    if rho <= moderate_end:
        return Regime(
            "moderate",
            small_end,
            moderate_end,
            "O~(N d^(1/4) rho^(1/2))",
            "Thm 4.2(ii), error <= eta",
            exact=False,
        )
    return Regime("large", moderate_end, 1.0, "O~(N d^2 rho^4)", "Thm 4.2(iii)")


def upper_bound(n: int, d: int, rho: float, *, classes: int = 2, constant: float = 1.0) -> float:
    """Parameters that suffice to robustly memorize *any* such dataset (Theorem 4.2 (i)-(iii);
    :func:`upper_regime` gives the regimes).

    ``c * (d + g(N, d, rho))`` where ``g`` is the order of the regime ``rho`` falls in (see
    :func:`upper_regime`); the ``+ d`` is the first layer reading the input, the additive term
    the paper says it leaves out of Theorem 4.2's statements. Polylogarithmic factors are
    dropped; ``classes`` is validated but enters no stated expression. With
    ``constant = UPPER_CONSTANT`` the result is never below :func:`lower_bound` with constant 1.

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

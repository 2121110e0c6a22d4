"""Sound robustness certificates for ReLU MLPs: interval bounds and an exact MILP check.

Kim, Moon and Yun 2025 ask the prediction to be constant on the closed L2 ball of radius ``mu``
around each training point (the paper's norm; Linf balls are supported too). A network counts
as robust only with a certificate from here; PGD (:func:`pgd`) only *searches* for
counterexamples and never certifies.

* :func:`ibp_margins` -- interval bound propagation (Gowal et al. 2018). The first affine layer
  is bounded exactly over the ball (``W x +- mu ||W_i||_2`` for L2, ``||W_i||_1`` for Linf), the
  rest by intervals; the last layer is folded with the label differences ``z_y - z_j`` so the
  margin bound is not loosened by subtracting two intervals. Sound, incomplete, fast (batched).
* :func:`crown_margins` -- a linear relaxation (CROWN, Zhang et al. 2018): each unstable ReLU is
  bounded by two lines and the margin is propagated backwards as a linear function of the input,
  minimized exactly over the ball; intermediate bounds by the same backward pass. Sound, usually
  much tighter than IBP, cost quadratic in depth.
* :func:`milp_certify` -- the exact check by mixed-integer programming
  (``scipy.optimize.milp``, HiGHS), big-M ReLU encoding with CROWN bounds (Tjeng et al. 2019);
  classes CROWN proves are skipped and the LP relaxation is tried before the MILP. For Linf the
  ball is a box and the MILP is exact. An L2 ball is not polyhedral: the MILP runs on a lifted
  polytope that contains the ball and lies within a factor ``1 + 1e-5`` of its radius
  (Ben-Tal and Nemirovski 2001, :func:`_l2_ball_rows`), intersected with the box; an optimum in
  the thin shell outside the ball is projected onto the ball and searched from for a witness,
  and failing that cut off by a tangent plane, until the optimum is a point inside the ball (a
  counterexample, verified by a forward pass) or the margin is proven positive on the polytope
  (hence on the ball). Certification uses the solver's dual bound, not its incumbent.

Networks are ``torch.nn.Sequential`` of ``Linear`` and ``ReLU`` (see :func:`mlp`), or lists of
float64 ``(W, b)`` pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from torch import nn

from rotelab.errors import RotelabError

__all__ = [
    "MilpResult",
    "Norm",
    "crown_margins",
    "ibp_margins",
    "layers_of",
    "milp_certify",
    "mlp",
    "param_count",
    "pgd",
]


class Norm(str, Enum):
    """The ball's norm: ``l2`` (the paper's) or ``linf``."""

    L2 = "l2"
    LINF = "linf"


def mlp(d: int, width: int, depth: int, classes: int) -> nn.Sequential:
    """A ReLU MLP ``d -> width x depth -> classes`` (one logit per class)."""
    if d < 1 or width < 1 or depth < 1 or classes < 2:
        raise RotelabError(
            "an MLP needs d, width, depth >= 1 and classes >= 2, "
            f"got {d}, {width}, {depth}, {classes}"
        )
    mods: list[nn.Module] = []
    fan_in = d
    for _ in range(depth):
        mods += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    mods.append(nn.Linear(fan_in, classes))
    return nn.Sequential(*mods)


def param_count(net: nn.Module) -> int:
    """Every weight and bias entry (the paper's ``P``)."""
    return int(sum(p.numel() for p in net.parameters()))


Layers = list[tuple[np.ndarray, np.ndarray]]


def layers_of(net: nn.Sequential | Layers) -> Layers:
    """The affine layers of a Linear/ReLU stack as float64 ``(W, b)``; ReLU between each pair."""
    if isinstance(net, list):
        return [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in net]
    out: Layers = []
    expect_linear = True
    for mod in net:
        if isinstance(mod, nn.Linear):
            if not expect_linear:
                raise RotelabError("two Linear layers without a ReLU between them")
            out.append((mod.weight.detach().double().numpy(), mod.bias.detach().double().numpy()))
            expect_linear = False
        elif isinstance(mod, nn.ReLU):
            expect_linear = True
        else:
            raise RotelabError(f"only Linear and ReLU layers can be verified, got {type(mod)}")
    return out


def _first_layer(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, radius, norm: Norm):
    """Exact bounds of ``W x' + b`` over the ball around each row of ``x`` (N, d)."""
    center = x @ w.T + b
    dual = torch.linalg.vector_norm(w, ord=2 if norm == Norm.L2 else 1, dim=1)  # dual norm
    spread = radius[:, None] * dual[None, :]
    return center - spread, center + spread


def ibp_margins(
    net: nn.Sequential | Layers,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    radius: float | np.ndarray,
    norm: Norm | str = Norm.L2,
    *,
    return_bounds: bool = False,
):
    """Lower bounds of ``z_y(x') - z_j(x')`` over each ball, by interval bound propagation.

    Args:
        net: the network; x: centers (N, d); y: labels (N,); radius: scalar or (N,) radii.
        norm: ``l2`` or ``linf``.
        return_bounds: also return the pre-activation bounds per hidden layer (for the MILP).

    Returns:
        (N, classes) float64 tensor of margin lower bounds; the label's own column is +inf.
        A ball is certified when every entry of its row is > 0. With ``return_bounds``, a pair
        ``(margins, [(lower, upper) per hidden layer, each (N, width)])``.
    """
    norm = Norm(norm)
    layers = [(torch.as_tensor(w), torch.as_tensor(b)) for w, b in layers_of(net)]
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    r = torch.broadcast_to(torch.as_tensor(radius, dtype=torch.float64), (xt.shape[0],))
    if (r < 0).any():
        raise RotelabError("a ball radius must be >= 0")
    hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
    w_last, b_last = layers[-1]
    if len(layers) == 1:  # no hidden layer: the margin is affine, bounded exactly
        rows = w_last[yt][:, None, :] - w_last[None, :, :]  # (N, C, d)
        dual = torch.linalg.vector_norm(rows, ord=2 if norm == Norm.L2 else 1, dim=2)
        margin = (rows @ xt[:, :, None]).squeeze(-1) + (b_last[yt][:, None] - b_last[None, :])
        low = margin - r[:, None] * dual
    else:
        lo, hi = _first_layer(*layers[0], xt, r, norm)
        hidden.append((lo, hi))
        for w, b in layers[1:-1]:
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            c, s = mid @ w.T + b, rad @ w.abs().T
            lo, hi = c - s, c + s
            hidden.append((lo, hi))
        lo, hi = lo.clamp(min=0), hi.clamp(min=0)
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        rows = w_last[yt][:, None, :] - w_last[None, :, :]  # (N, C, width): e_y - e_j folded in
        center = (rows @ mid[:, :, None]).squeeze(-1) + (b_last[yt][:, None] - b_last[None, :])
        low = center - (rows.abs() @ rad[:, :, None]).squeeze(-1)
    low = low.clone()
    low[torch.arange(len(yt)), yt] = torch.inf
    return (low, hidden) if return_bounds else low


def _backward(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    spec: torch.Tensor,
    const: torch.Tensor,
    upto: int,
    x: torch.Tensor,
    r: torch.Tensor,
    norm: Norm,
    alphas: Sequence[torch.Tensor] | None = None,
    splits: Sequence[torch.Tensor] | None = None,
    betas: Sequence[torch.Tensor] | None = None,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Lower bound of ``spec @ z_upto + const`` over each ball, CROWN's backward pass.

    ``spec`` (N, rows, width of layer ``upto``'s output), ``bounds[k]`` the pre-activation bounds
    of hidden layer ``k``; returns (N, rows). ``alphas[k]`` (N, rows, width of hidden layer
    ``k``), if given, are the lower lines' slopes of the unstable ReLUs, clamped to [0, 1]: any
    such slope gives a sound bound (alpha-CROWN optimizes them, :func:`crown_margins`).
    ``splits[k]`` (N, width) in {-1, 0, +1} marks ReLUs fixed inactive / free / active in a
    branch-and-bound subdomain (their ``bounds`` already clipped to that side); ``betas[k]``
    (N, rows, width), clamped to >= 0, are the Lagrange multipliers of those sign constraints
    (beta-CROWN, Wang et al. 2021): any value gives a sound bound over the subdomain.
    ``record``: filled with each hidden layer's coefficients on its ReLU outputs (deepest
    first), for choosing what to split, then the input's coefficients."""
    w, b = layers[upto]
    lam = spec @ w  # (N, rows, width of the layer's input)
    const = const + spec @ b
    for k in range(upto - 1, -1, -1):
        lo, hi = bounds[k]  # (N, width)
        active, dead = lo >= 0, hi <= 0
        unstable = ~(active | dead)
        span = (hi - lo).clamp_min(1e-30)
        up_slope = torch.where(unstable, hi / span, active.to(lo.dtype))
        up_shift = torch.where(unstable, -lo * hi / span, torch.zeros_like(lo))
        # the lower line a >= alpha z: alpha = 1 where it loses less area (u > -l), else 0
        if alphas is None:
            low_slope = torch.where(unstable, (hi > -lo).to(lo.dtype), active.to(lo.dtype))
            low_slope = low_slope[:, None, :]
        else:
            low_slope = torch.where(
                unstable[:, None, :], alphas[k].clamp(0.0, 1.0), active.to(lo.dtype)[:, None, :]
            )
        if record is not None:
            record.append(lam)
        pos = lam.clamp(min=0)
        neg = lam.clamp(max=0)
        const = const + (neg * up_shift[:, None, :]).sum(-1)
        lam = pos * low_slope + neg * up_slope[:, None, :]
        if splits is not None and betas is not None:  # min f - sum beta s z over the subdomain
            lam = lam - betas[k].clamp(min=0.0) * splits[k][:, None, :]
        w, b = layers[k]
        const = const + lam @ b
        lam = lam @ w
    if record is not None:
        record.append(lam)  # on the input: the minimizer over the ball is x - r lam / ||lam||
    dual = torch.linalg.vector_norm(lam, ord=2 if norm == Norm.L2 else 1, dim=-1)
    return (lam @ x[:, :, None]).squeeze(-1) + const - r[:, None] * dual


def _optimized(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    spec: torch.Tensor,
    const: torch.Tensor,
    upto: int,
    x: torch.Tensor,
    r: torch.Tensor,
    norm: Norm,
    steps: int,
    lr: float = 0.1,
) -> torch.Tensor:
    """:func:`_backward` with the lower slopes optimized for ``steps`` (alpha-CROWN); the best
    bound per entry over the CROWN slopes and every step's (each one sound). ``steps = 0`` or
    no hidden layer below ``upto``: plain CROWN."""
    with torch.no_grad():
        best = _backward(layers, bounds, spec, const, upto, x, r, norm)
    if steps <= 0 or upto == 0:
        return best
    n, rows = spec.shape[:2]
    alphas = []
    for lo, hi in bounds[:upto]:  # start from CROWN's choice, one slope set per output row
        start = (hi > -lo).to(lo.dtype)[:, None, :].expand(n, rows, lo.shape[1])
        alphas.append(start.clone().requires_grad_(True))
    opt = torch.optim.Adam(alphas, lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            value = _backward(layers, bounds, spec, const, upto, x, r, norm, alphas)
            opt.zero_grad()
            (-value.sum()).backward()  # entries are independent: each has its own slopes
        opt.step()
        with torch.no_grad():
            for a in alphas:
                a.clamp_(0.0, 1.0)
            best = torch.maximum(best, _backward(layers, bounds, spec, const, upto, x, r, norm,
                                                 alphas))  # fmt: skip
    return best.detach()


def crown_margins(
    net: nn.Sequential | Layers,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    radius: float | np.ndarray,
    norm: Norm | str = Norm.L2,
    *,
    return_bounds: bool = False,
    alpha_steps: int = 0,
):
    """Lower bounds of ``z_y(x') - z_j(x')`` over each ball by linear relaxation (CROWN).

    Same arguments and returns as :func:`ibp_margins`; the bounds of every hidden layer come
    from the same backward pass (each no looser than IBP's: the two are intersected).

    ``alpha_steps > 0``: alpha-CROWN (Xu et al. 2021). The lower line of every unstable ReLU
    may have any slope in [0, 1] and stay sound, so the slopes (one set per bound computed:
    per ball, per output row) are optimized by projected gradient ascent on the bound, for
    the bounds of every hidden layer after the first (the first is exact) and for the
    margins; each bound is the best over the plain CROWN slopes and every step's slopes, so it
    is never looser than plain CROWN.
    """
    norm = Norm(norm)
    layers = [(torch.as_tensor(w), torch.as_tensor(b)) for w, b in layers_of(net)]
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    r = torch.broadcast_to(torch.as_tensor(radius, dtype=torch.float64), (xt.shape[0],))
    if (r < 0).any():
        raise RotelabError("a ball radius must be >= 0")
    _, ibp_bounds = ibp_margins(layers_of(net), xt.numpy(), yt.numpy(), r.numpy(), norm,
                                return_bounds=True)  # fmt: skip
    n = xt.shape[0]
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    for k in range(len(layers) - 1):
        width = layers[k][0].shape[0]
        eye = torch.eye(width, dtype=torch.float64).expand(n, width, width)
        zero = torch.zeros(n, width, dtype=torch.float64)
        lo = _optimized(layers, bounds, eye, zero, k, xt, r, norm, alpha_steps)
        hi = -_optimized(layers, bounds, -eye, zero, k, xt, r, norm, alpha_steps)
        ilo, ihi = ibp_bounds[k]
        bounds.append((torch.maximum(lo, ilo), torch.minimum(hi, ihi)))
    w_last, _ = layers[-1]
    classes = w_last.shape[0]
    spec = torch.zeros(n, classes, classes, dtype=torch.float64)
    spec[torch.arange(n), :, yt] += 1.0  # row j: e_y - e_j
    spec -= torch.eye(classes, dtype=torch.float64)
    low = _optimized(layers, bounds, spec, torch.zeros(n, classes, dtype=torch.float64),
                     len(layers) - 1, xt, r, norm, alpha_steps)  # fmt: skip
    low = low.clone()
    low[torch.arange(n), yt] = torch.inf
    return (low, bounds) if return_bounds else low


def pgd(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    radius: float | torch.Tensor,
    norm: Norm | str = Norm.L2,
    *,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent of the cross-entropy inside each ball (Madry et al. 2018).

    A search only: a point it returns that is misclassified is a counterexample (check it with a
    forward pass); finding none proves nothing. Starts at a random point of each ball.

    Returns:
        (N, d) points inside the balls (float, same dtype as ``x``).
    """
    norm = Norm(norm)
    r = torch.broadcast_to(torch.as_tensor(radius, dtype=x.dtype), (x.shape[0],))[:, None]
    alpha = step_size if step_size is not None else 2.5 / max(steps, 1)  # in units of r
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if norm == Norm.L2:
        delta = noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-12) * r
        delta = delta * torch.rand(x.shape[0], 1, generator=generator, dtype=x.dtype)
    else:
        delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * r
    was = net.training
    net.eval()
    try:
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            with torch.enable_grad():  # callers may hold no_grad; the attack needs gradients
                loss = nn.functional.cross_entropy(net(x + delta), y)
                (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if norm == Norm.L2:
                    g = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    delta = delta + alpha * r * g
                    scale = (r / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
                    delta = delta * scale
                else:
                    delta = (delta + alpha * r * grad.sign()).clamp(-r, r)
    finally:
        net.train(was)
    return (x + delta).detach()


@dataclass
class MilpResult:
    """The exact check of one ball.

    ``status``: ``certified`` (margin proven > 0 on the whole ball), ``counterexample`` (a point
    inside the ball whose prediction, checked by a forward pass, is not the label) or
    ``unknown`` (the solver hit its time limit or the cutting-plane budget).
    """

    status: str
    margin_lower: float
    point: np.ndarray | None = None
    solves: int = 0
    cuts: int = 0
    worst_class: int | None = None
    notes: list[str] = field(default_factory=list)


def _forward(layers: Layers, x: np.ndarray) -> np.ndarray:
    a = x
    for w, b in layers[:-1]:
        a = np.maximum(a @ w.T + b, 0.0)
    w, b = layers[-1]
    return a @ w.T + b


def _margin_and_grad(layers: Layers, x: np.ndarray, y: int, j: int) -> tuple[float, np.ndarray]:
    """``z_y - z_j`` at ``x`` and its gradient (through the ReLUs active at ``x``)."""
    a, active = x, []
    for w, b in layers[:-1]:
        z = w @ a + b
        active.append(z > 0)
        a = np.maximum(z, 0.0)
    w, b = layers[-1]
    c = w[y] - w[j]
    grad = c
    for (w_k, _), act in zip(reversed(layers[:-1]), reversed(active), strict=True):
        grad = (grad * act) @ w_k
    return float(c @ a + b[y] - b[j]), grad


def _witness(
    layers: Layers,
    x0: np.ndarray,
    start: np.ndarray,
    radius: float,
    norm: Norm,
    y: int,
    j: int,
    tol: float,
    steps: int = 200,
) -> np.ndarray | None:
    """Search (never proof): projected gradient descent on the margin inside the ball from
    ``start``; a point whose margin a forward pass finds <= ``tol``, else ``None``."""
    p = start.copy()
    for t in range(steps):
        m, g = _margin_and_grad(layers, p, y, j)
        if m <= tol:
            return p
        size = radius * 0.1 * (1 - t / steps) + 1e-3 * radius
        if norm == Norm.L2:
            p = p - size * g / max(np.linalg.norm(g), 1e-30)
            dist = np.linalg.norm(p - x0)
            if dist > radius:
                p = x0 + (p - x0) * (radius / dist)
        else:
            p = np.clip(p - size * np.sign(g), x0 - radius, x0 + radius)
    return None


#: levels of each two-dimensional cone in :func:`_l2_ball_rows`: the polytope lies within a
#: factor ``1 / cos(pi / 2**(levels + 1))`` (1 + 1.2e-6 for 10) per tree level of the ball
BALL_LEVELS = 10

Row = tuple[dict[int, float], float, float]


def _l2_ball_rows(x0: np.ndarray, radius: float, start: int, levels: int = BALL_LEVELS):
    """A polytope containing the L2 ball ``||x - x0|| <= radius`` and contained in the ball of
    radius ``radius / cos(pi / 2**(levels + 1))**ceil(log2 d)``, in lifted form.

    Ben-Tal and Nemirovski's (2001) polyhedral approximation of the second-order cone: the
    coordinates are paired in a binary tree; each node bounds the norm of its two children
    ``(a, b)`` by rotating ``(|a|, |b|)`` ``levels`` times by halving angles, folding the
    angle into ``[0, pi / 2**(levels + 1)]`` (``2 levels + 2`` extra variables, ``3 levels + 5``
    rows per node). Every point of the ball extends to a feasible point (exact rotations), and
    every feasible point has ``||(a, b)|| <= xi_levels / cos(pi / 2**(levels + 1))``. The
    variables ``x`` are columns ``0 .. d-1``; the extra ones start at column ``start``.

    Returns:
        ``(rows, extra)``: rows ``(coefficients, low, high)`` and the number of extra columns
        (all nonnegative).
    """
    rows: list[Row] = []

    def geq(coef: dict[int, float], low: float) -> None:
        rows.append((coef, low, np.inf))

    # a node value is a linear expression: ({column: coefficient}, constant)
    level: list[tuple[dict[int, float], float]] = [
        ({i: 1.0}, -float(x0[i])) for i in range(x0.size)
    ]
    col = start
    while len(level) > 1:
        up = []
        for k in range(0, len(level) - 1, 2):
            xi = [col + 2 * t for t in range(levels + 1)]
            eta = [col + 2 * t + 1 for t in range(levels + 1)]
            col += 2 * (levels + 1)
            for var, (coef, const) in ((xi[0], level[k]), (eta[0], level[k + 1])):
                # var >= |expr|: var - expr >= 0 and var + expr >= 0
                geq({var: 1.0, **{c: -v for c, v in coef.items()}}, const)
                geq({var: 1.0, **coef}, -const)
            for t in range(1, levels + 1):
                ang = np.pi / 2 ** (t + 1)
                c, s = float(np.cos(ang)), float(np.sin(ang))
                rows.append(({xi[t]: 1.0, xi[t - 1]: -c, eta[t - 1]: -s}, 0.0, 0.0))
                geq({eta[t]: 1.0, xi[t - 1]: s, eta[t - 1]: -c}, 0.0)
                geq({eta[t]: 1.0, xi[t - 1]: -s, eta[t - 1]: c}, 0.0)
            tan = float(np.tan(np.pi / 2 ** (levels + 1)))
            rows.append(({eta[levels]: 1.0, xi[levels]: -tan}, -np.inf, 0.0))
            up.append(({xi[levels]: 1.0}, 0.0))
        if len(level) % 2:
            up.append(level[-1])
        level = up
    if x0.size > 1:  # the root bounds the whole norm (d = 1: the box is the ball)
        coef, const = level[0]
        rows.append((coef, -np.inf, radius - const))
    return rows, col - start


def _solve_margin(
    layers: Layers,
    bounds: Sequence[tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    radius: float,
    norm: Norm,
    y: int,
    j: int,
    cuts: list[np.ndarray],
    time_limit: float,
    relax: bool = False,
    target: float | None = None,
    presolve: bool = True,
):
    """min z_y - z_j over the polytope (box, L2: the lifted ball polytope and cuts) with big-M
    ReLUs (``relax``: its LP relaxation, a cheaper and looser lower bound); returns (dual,
    primal, x). With ``target``: a feasibility problem instead, a point of margin <= ``target``
    (the solver stops at the first one; dual ``-inf``) or none (dual ``+inf``: the margin
    exceeds ``target`` on the whole polytope)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    d = x0.size
    # variable layout: x (d) | per hidden layer: z (w), a (w), s (w, binary) | ball (L2)
    sizes = [w.shape[0] for w, _ in layers[:-1]]
    n_net = d + 3 * sum(sizes)
    ball_rows, extra = _l2_ball_rows(x0, radius, n_net) if norm == Norm.L2 else ([], 0)
    n_var = n_net + extra
    lb, ub = np.full(n_var, -np.inf), np.full(n_var, np.inf)
    lb[n_net:] = 0.0
    integ = np.zeros(n_var)
    lb[:d], ub[:d] = x0 - radius, x0 + radius
    rows: list[Row] = list(ball_rows)
    prev = np.arange(d)  # indices of the layer input
    off = d
    for (w, b), width, (lo, hi) in zip(layers[:-1], sizes, bounds, strict=True):
        z, a, s = (
            off + np.arange(width),
            off + width + np.arange(width),
            off + 2 * width + np.arange(width),
        )
        off += 3 * width
        lb[z], ub[z] = lo, hi
        lb[a], ub[a] = 0.0, np.maximum(hi, 0.0)
        lb[s], ub[s] = 0.0, 1.0
        integ[s] = 1
        for k in range(width):
            coef = {int(z[k]): 1.0}
            for i, p in enumerate(prev):
                if w[k, i] != 0.0:
                    coef[int(p)] = coef.get(int(p), 0.0) - w[k, i]
            rows.append((coef, b[k], b[k]))  # z = W a_prev + b
            if lo[k] >= 0:  # always active
                rows.append(({int(a[k]): 1.0, int(z[k]): -1.0}, 0.0, 0.0))
                ub[s[k]] = lb[s[k]] = 1.0
            elif hi[k] <= 0:  # always inactive
                ub[a[k]] = 0.0
                ub[s[k]] = lb[s[k]] = 0.0
            else:
                rows.append(({int(a[k]): 1.0, int(z[k]): -1.0}, 0.0, np.inf))  # a >= z
                rows.append(({int(a[k]): 1.0, int(s[k]): -hi[k]}, -np.inf, 0.0))  # a <= u s
                # a <= z - l (1 - s)  <=>  a - z - l s <= -l
                rows.append(({int(a[k]): 1.0, int(z[k]): -1.0, int(s[k]): -lo[k]}, -np.inf, -lo[k]))
        prev = a
    for c in cuts:  # tangent planes c . (x - x0) <= radius of the L2 ball
        rows.append(({i: float(c[i]) for i in range(d)}, -np.inf, radius + float(c @ x0)))
    w_last, b_last = layers[-1]
    cost = np.zeros(n_var)
    cost[prev] = w_last[y] - w_last[j]
    const = float(b_last[y] - b_last[j])
    if target is not None:  # margin = cost . v + const <= target
        rows.append(({int(i): float(cost[i]) for i in prev}, -np.inf, target - const))
    # triplets, summed into CSR in one call (element-wise sparse assignment is the slow part)
    r_idx = [r_i for r_i, (coef, _, _) in enumerate(rows) for _ in coef]
    c_idx = [col for coef, _, _ in rows for col in coef]
    vals = [v for coef, _, _ in rows for v in coef.values()]
    a_mat = coo_matrix((vals, (r_idx, c_idx)), shape=(len(rows), n_var))
    lo_c = np.array([row[1] for row in rows], dtype=np.float64)
    hi_c = np.array([row[2] for row in rows], dtype=np.float64)
    res = milp(
        np.zeros(n_var) if target is not None else cost,
        constraints=[LinearConstraint(a_mat.tocsr(), lo_c, hi_c)] if rows else None,
        integrality=np.zeros(n_var) if relax else integ,
        bounds=Bounds(lb, ub),
        options={
            "time_limit": time_limit,
            "mip_rel_gap": 1e-9,
            "disp": False,
            "presolve": presolve,
        },  # fmt: skip
    )
    dual = getattr(res, "mip_dual_bound", None)
    if target is not None:
        if res.status == 2:  # infeasible: no point of the polytope has margin <= target
            return np.inf, np.inf, None
        if res.x is None:
            return -np.inf, np.nan, None
        return -np.inf, float(cost @ res.x) + const, np.asarray(res.x[:d])
    if res.x is None:
        if res.status == 2:  # infeasible: the bounds already exclude every point (cannot happen
            return np.inf, np.inf, None  # for a non-empty ball; kept sound anyway)
        return -np.inf, np.nan, None
    primal = float(res.fun) + const
    dual_v = (
        (float(dual) + const)
        if dual is not None and np.isfinite(dual)
        else (primal if res.status == 0 else -np.inf)
    )
    return dual_v, primal, np.asarray(res.x[:d])


def milp_certify(
    net: nn.Sequential | Layers,
    x: np.ndarray,
    y: int,
    radius: float,
    norm: Norm | str = Norm.L2,
    *,
    max_cuts: int = 30,
    time_limit: float = 30.0,
    tol: float = 1e-7,
    skip_proven: bool = True,
    alpha_steps: int = 0,
) -> MilpResult:
    """Exactly decide whether the ball around ``x`` (d,) keeps label ``y`` (see module doc).

    Args:
        net: the network; x: the center (d,); y: its label; radius: the ball's radius.
        norm: ``l2`` (cutting planes) or ``linf`` (exact box).
        max_cuts: tangent planes added per class before giving up (``unknown``).
        time_limit: seconds per MILP solve.
        tol: the margin must be proven > ``tol`` to certify (solver tolerances).
        skip_proven: decide only: skip the classes :func:`crown_margins` proves, and try the
            MILP's LP relaxation before the MILP itself (``False``: solve every class's MILP to
            optimality, so ``margin_lower`` is the exact minimum margin on a box, and on an L2
            ball within the polytope's factor ``1 + 1e-5`` of the radius).
        alpha_steps: optimize CROWN's slopes (:func:`crown_margins`) for the big-M bounds and
            the classes skipped: tighter bounds leave fewer unstable ReLUs (binary variables).
    """
    norm = Norm(norm)
    layers = layers_of(net)
    x = np.asarray(x, np.float64)
    # CROWN's bounds: tighter big-M constants and fewer unstable ReLUs than IBP's
    margins, hidden = crown_margins(
        layers, x[None], np.array([y]), radius, norm, return_bounds=True, alpha_steps=alpha_steps
    )
    bounds = [(lo[0].numpy(), hi[0].numpy()) for lo, hi in hidden]
    result = MilpResult("certified", float(margins[0].min()))
    # per class: the CROWN bound, replaced by the MILP's dual bound where it cannot decide. The
    # first layer's tangent planes (along its rows) are already the bounds of its pre-activations
    proven = margins[0].numpy().copy()
    cuts: list[np.ndarray] = []
    for j in range(len(layers[-1][1])):
        if j == y or (skip_proven and margins[0, j] > tol):  # CROWN proves j never wins
            continue
        if skip_proven:  # the LP relaxation of the same encoding often proves it already
            dual, _, _ = _solve_margin(
                layers, bounds, x, radius, norm, y, j, cuts, time_limit, relax=True
            )
            result.solves += 1
            if dual > tol:
                proven[j] = max(proven[j], dual)
                continue
        # deciding needs no optimum: search for a point of margin <= tol (the solver stops at
        # the first); none proves the class. The exact mode optimizes (the minimum margin)
        search = skip_proven
        while True:
            dual, primal, point = _solve_margin(
                layers, bounds, x, radius, norm, y, j, cuts, time_limit,
                target=tol if search else None,
            )  # fmt: skip
            result.solves += 1
            if dual > tol:
                # the feasibility search proves margin > tol, no more (its dual is +inf)
                proven[j] = max(proven[j], tol if search else dual) if skip_proven else dual
                break
            if point is None or not np.isfinite(primal):
                result.status, result.margin_lower = "unknown", -np.inf
                result.notes.append(f"class {j}: solver gave no point (time limit?)")
                return result
            dist = np.linalg.norm(point - x) if norm == Norm.L2 else np.abs(point - x).max()
            inside = dist <= radius * (1 + 1e-9)
            if not inside:  # search a witness from the optimum's projection onto the ball
                proj = x + (point - x) * (radius / dist)
                found = _witness(layers, x, proj, radius, norm, y, j, tol)
                if found is not None:
                    point, inside = found, True
            if inside:
                logits = _forward(layers, point)
                if logits[y] - logits[j] <= tol:  # verified by a forward pass
                    result.status, result.point, result.worst_class = "counterexample", point, j
                    result.margin_lower = float(logits[y] - logits[j])
                    return result
                if search:  # a borderline point (solver tolerance): optimize instead
                    search = False
                    continue
                # inside the ball but the forward pass disagrees with the solver (tolerance):
                # neither a proof nor a counterexample
                result.status, result.margin_lower = "unknown", dual
                result.notes.append(f"class {j}: solver point not confirmed by forward pass")
                return result
            if result.cuts >= max_cuts * (len(layers[-1][1]) - 1):
                result.status, result.margin_lower = "unknown", dual
                result.notes.append(f"class {j}: cutting-plane budget spent")
                return result
            cuts.append((point - x) / dist)
            result.cuts += 1
    result.margin_lower = float(proven.min())
    return result

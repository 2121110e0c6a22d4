"""Branch and bound over ReLU signs with optimized linear relaxations (alpha/beta-CROWN).

For a ball that CROWN cannot prove and PGD cannot break, the unstable ReLUs are split: in each
subdomain some ReLUs are fixed active (``z >= 0``, the ReLU is the identity) or inactive
(``z <= 0``, zero), and the margin is bounded by CROWN's backward pass with the lower slopes
(alpha-CROWN, Xu et al. 2021) and the Lagrange multipliers of the sign constraints (beta-CROWN,
Wang et al. 2021) optimized by projected gradient ascent. Every value of the slopes in [0, 1]
and of the multipliers >= 0 gives a sound lower bound of the margin over its subdomain, so the
ball is certified once every leaf's bound is positive; the subdomains cover the ball, since
each split divides one into ``z >= 0`` and ``z <= 0``. Each bound's minimizer over the ball is
checked by a forward pass, which finds counterexamples (a point of the ball whose margin is not
positive). A subdomain with every ReLU's sign fixed is linear: it is solved exactly as the
MILP's encoding without binaries (an LP on the ball's polytope, :func:`_solve_margin`). What
none of this settles within the budget is ``unknown``: the MILP is the exact check.

The split chosen in a subdomain is the unstable ReLU whose relaxation loses the most, scored as
``|coefficient| * (-l u / (u - l))`` (the upper line's intercept; BaBSR-like, Bunel et al.
2020), and the subdomain with the lowest bound is split first.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from rotelab.theory.verify import (
    Layers,
    MilpResult,
    Norm,
    _backward,
    _solve_margin,
    crown_margins,
    layers_of,
)

__all__ = ["bab_certify"]


def _clip(bounds, splits):
    """Each hidden layer's bounds in each subdomain: fixed-active ReLUs have ``l >= 0``, fixed
    inactive ones ``u <= 0``."""
    out = []
    for (lo, hi), s in zip(bounds, splits, strict=True):
        out.append((torch.where(s > 0, lo.clamp(min=0.0), lo),
                    torch.where(s < 0, hi.clamp(max=0.0), hi)))  # fmt: skip
    return out


def _evaluate(layers, bounds, splits, spec, x, r, norm, steps, lr, beta_lr=1.0):
    """Bounds of ``spec @ logits`` over each subdomain (B of them; ``splits`` (B, width) per
    layer), optimized; returns (best bound (B,), that step's minimizer (B, d), coefficients on
    the ReLU outputs per hidden layer at the last step, shallowest first)."""
    b = splits[0].shape[0]
    clipped = _clip([(lo.expand(b, -1), hi.expand(b, -1)) for lo, hi in bounds], splits)
    xb, rb = x.expand(b, -1), r.expand(b)
    specb = spec.expand(b, -1, -1)
    const = torch.zeros(b, 1, dtype=torch.float64)
    upto = len(layers) - 1
    alphas = [((hi > -lo).to(lo.dtype))[:, None, :].clone().requires_grad_(True)
              for lo, hi in clipped]  # fmt: skip
    betas = [torch.zeros(b, 1, s.shape[1], dtype=torch.float64, requires_grad=True)
             for s in splits]  # fmt: skip
    # multipliers may need to grow far from 0 (an almost empty subdomain): larger steps
    opt = torch.optim.Adam([{"params": alphas, "lr": lr}, {"params": betas, "lr": beta_lr}])
    best = torch.full((b,), -torch.inf, dtype=torch.float64)
    point = xb.clone()
    record: list[torch.Tensor] = []
    for step in range(steps + 1):
        record = []
        with torch.enable_grad():
            value = _backward(layers, clipped, specb, const, upto, xb, rb, norm,
                              alphas, splits, betas, record)[:, 0]  # fmt: skip
            if step < steps:
                opt.zero_grad()
                (-value.sum()).backward()
        with torch.no_grad():
            lam = record[-1][:, 0, :]
            if norm == Norm.L2:
                arg = xb - rb[:, None] * lam / lam.norm(dim=1, keepdim=True).clamp_min(1e-30)
            else:
                arg = xb - rb[:, None] * torch.sign(lam)
            better = value.detach() > best
            best = torch.where(better, value.detach(), best)
            point = torch.where(better[:, None], arg, point)
        if step < steps:
            opt.step()
            with torch.no_grad():
                for a in alphas:
                    a.clamp_(0.0, 1.0)
                for be in betas:
                    be.clamp_(min=0.0)
    coefs = [c.detach()[:, 0, :] for c in reversed(record[:-1])]  # shallowest layer first
    return best, point, coefs, clipped


def bab_certify(
    net: nn.Sequential | Layers,
    x: np.ndarray,
    y: int,
    radius: float,
    norm: Norm | str = Norm.L2,
    *,
    time_limit: float = 30.0,
    max_domains: int = 200_000,
    batch: int = 256,
    steps: int = 20,
    lr: float = 0.1,
    tol: float = 1e-7,
) -> MilpResult:
    """Decide whether the ball around ``x`` (d,) keeps label ``y`` by branch and bound.

    Args:
        net: the network; x: the center; y: its label; radius: the ball's radius.
        norm: ``l2`` or ``linf``.
        time_limit: seconds before giving up (``unknown``); max_domains: subdomains bounded
            before giving up.
        batch: subdomains split per round (each gives two); steps: optimization steps per
            bound; lr: its step size.
        tol: every leaf's bound must exceed ``tol`` to certify; a point of margin ``<= tol``
            is a counterexample.

    Returns:
        :class:`MilpResult`: ``certified`` (``margin_lower`` the smallest leaf bound),
        ``counterexample`` (``point``, ``worst_class``; verified by a forward pass) or
        ``unknown``; ``solves`` counts the subdomains bounded, ``notes`` says why it stopped.
    """
    t0 = time.perf_counter()
    norm = Norm(norm)
    layers_np = layers_of(net)
    layers = [(torch.as_tensor(w), torch.as_tensor(b)) for w, b in layers_np]
    xt = torch.as_tensor(np.asarray(x, np.float64))[None]
    r = torch.as_tensor([float(radius)], dtype=torch.float64)
    margins, hidden = crown_margins(
        layers_np, xt.numpy(), np.array([y]), radius, norm, return_bounds=True, alpha_steps=steps
    )
    bounds = [(lo[0][None], hi[0][None]) for lo, hi in hidden]
    classes = layers[-1][0].shape[0]
    result = MilpResult("certified", float(margins[0].min()))
    widths = [lo.shape[1] for lo, _ in bounds]
    proven = margins[0].numpy().copy()  # per class: CROWN's bound, else the smallest leaf's
    for j in range(classes):
        if j == y or proven[j] > tol:
            continue
        spec = torch.zeros(1, 1, classes, dtype=torch.float64)
        spec[0, 0, y], spec[0, 0, j] = 1.0, -1.0
        # the queue: subdomains (their splits) with a bound <= tol, lowest bound first
        queue = [(-np.inf, [torch.zeros(1, w, dtype=torch.float64) for w in widths])]
        leaves: list[float] = []
        root = True
        while queue:
            if time.perf_counter() - t0 > time_limit or result.solves >= max_domains:
                result.status, result.margin_lower = "unknown", -np.inf
                result.notes.append(
                    f"class {j}: {len(queue)} subdomains open after {result.solves} bounded"
                )
                return result
            queue.sort(key=lambda item: item[0])
            todo, queue = queue[:batch], queue[batch:]
            splits = [torch.cat([s[k] for _, s in todo]) for k in range(len(widths))]
            if root:  # the root is bounded as it is; later rounds bound both children
                children, root = splits, False
            else:
                children, settled = _branch(layers, bounds, splits, spec, xt, r, norm, lr)
                # a subdomain with every ReLU's sign fixed is a linear program: solved exactly
                # on the ball's polytope (which contains the ball)
                for i in settled:
                    dual, point = _linear_piece(layers_np, bounds, splits, i, x, radius, norm,
                                                y, j, time_limit)  # fmt: skip
                    result.solves += 1
                    if dual > tol:
                        leaves.append(dual)
                        continue
                    inside = point is not None and _dist(point, x, norm) <= radius * (1 + 1e-9)
                    margin = _logits(layers, torch.as_tensor(point)[None])[0] if inside else None
                    if margin is not None and float(margin[y] - margin[j]) <= tol:
                        result.status, result.worst_class = "counterexample", j
                        result.point, result.margin_lower = point, float(margin[y] - margin[j])
                        return result
                    result.status, result.margin_lower = "unknown", -np.inf
                    result.notes.append(f"class {j}: a linear piece's optimum is not confirmed")
                    return result
                if children is None:
                    continue
            value, point, _, _ = _evaluate(layers, bounds, children, spec, xt, r, norm,
                                           steps, lr)  # fmt: skip
            result.solves += int(value.shape[0])
            margin = _logits(layers, point)
            margin = margin[:, y] - margin[:, j]
            bad = torch.nonzero(margin <= tol).flatten()
            if bad.numel():  # the bound's minimizer is in the ball: a verified counterexample
                i = int(bad[0])
                result.status, result.worst_class = "counterexample", j
                result.point, result.margin_lower = point[i].numpy(), float(margin[i])
                return result
            for i in range(value.shape[0]):
                if value[i] > tol:
                    leaves.append(float(value[i]))
                else:
                    queue.append((float(value[i]), [c[i : i + 1] for c in children]))
        proven[j] = min(leaves)
    proven[y] = np.inf
    result.margin_lower = float(proven.min())
    result.notes.append(f"{result.solves} subdomains bounded in {time.perf_counter() - t0:.1f} s")
    return result


def _logits(layers, points: torch.Tensor) -> torch.Tensor:
    z = points
    for k, (w, b) in enumerate(layers):
        z = z @ w.T + b
        if k < len(layers) - 1:
            z = z.clamp(min=0.0)
    return z


def _dist(point: np.ndarray, x: np.ndarray, norm: Norm) -> float:
    diff = np.asarray(point) - np.asarray(x)
    return float(np.linalg.norm(diff) if norm == Norm.L2 else np.abs(diff).max())


def _linear_piece(layers_np, bounds, splits, i, x, radius, norm, y, j, time_limit):
    """Subdomain ``i`` (every ReLU's sign fixed): min of the margin by the MILP's encoding, an
    LP here (no unstable ReLU is left); (dual bound, optimal point or None)."""
    clipped = _clip([(lo.expand(len(splits[0]), -1), hi.expand(len(splits[0]), -1))
                     for lo, hi in bounds], splits)  # fmt: skip
    own = [(lo[i].numpy(), hi[i].numpy()) for lo, hi in clipped]
    args = (layers_np, own, np.asarray(x, np.float64), float(radius), norm, y, j, [], time_limit)
    dual, _, point = _solve_margin(*args, relax=True)
    if point is None and not dual > 0:  # no optimum (HiGHS is unsure on near-empty pieces):
        # ask instead for a point of margin <= 0; none (infeasible) proves the piece
        dual, _, point = _solve_margin(*args, relax=True, target=0.0)
    if point is None and not dual > 0:  # still unsure: once more without presolve
        dual, _, point = _solve_margin(*args, relax=True, target=0.0, presolve=False)
    return dual, point


def _branch(layers, bounds, splits, spec, x, r, norm, lr):
    """Split each subdomain on its highest-scoring unstable ReLU: the children, stacked (the
    active side first, then the inactive side; ``None`` if there are none), and the indices of
    the subdomains with no unstable ReLU left (not split)."""
    _, _, coefs, clipped = _evaluate(layers, bounds, splits, spec, x, r, norm, 0, lr)
    scores = []
    for (lo, hi), c, s in zip(clipped, coefs, splits, strict=True):
        unstable = (lo < 0) & (hi > 0) & (s == 0)
        gap = -lo * hi / (hi - lo).clamp_min(1e-30)
        scores.append(torch.where(unstable, c.abs() * gap + 1e-12 * gap, torch.zeros_like(lo)))
    flat = torch.cat(scores, dim=1)
    open_ = flat.max(dim=1).values > 0
    settled = torch.nonzero(~open_).flatten().tolist()
    keep = torch.nonzero(open_).flatten()
    if keep.numel() == 0:
        return None, settled
    pick = flat[keep].argmax(dim=1)
    offsets = np.cumsum([0] + [s.shape[1] for s in splits])
    active = [s[keep].clone() for s in splits]
    inactive = [s[keep].clone() for s in splits]
    for i, p in enumerate(pick.tolist()):
        k = int(np.searchsorted(offsets, p, side="right") - 1)
        active[k][i, p - offsets[k]] = 1.0
        inactive[k][i, p - offsets[k]] = -1.0
    return [torch.cat([a, b]) for a, b in zip(active, inactive, strict=True)], settled

"""Verifiers on networks with known answers: IBP soundness and tightness, the exact MILP,
PGD as a search only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rotelab.theory import (
    bab_certify,
    crown_margins,
    ibp_margins,
    milp_certify,
    mlp,
    param_count,
    pgd,
)
from rotelab.theory.verify import layers_of


def _identity_net():
    """logits (-x1, x1) through relu(x1) - relu(-x1): label 1's margin is exactly 2 x1."""
    w1 = np.array([[1.0, 0.0], [-1.0, 0.0]])
    w2 = np.array([[-1.0, 1.0], [1.0, -1.0]])
    return [(w1, np.zeros(2)), (w2, np.zeros(2))]


def _diagonal_net(c: float):
    """Label 0 while x1 + x2 < c, with x1 and x2 through separate ReLU pairs (IBP loses the
    coupling): margin of label 0 = 2 (c - x1 - x2); over the L2 ball of radius r at 0 its
    minimum is 2 (c - r sqrt(2)), over the box 2 (c - 2 r)."""
    w1 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    s = np.array([1.0, -1.0, 1.0, -1.0])
    return [(w1, np.zeros(4)), (np.stack([-s, s]), np.array([c, -c]))]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_ibp_is_exact_on_the_identity_net(norm):
    net = _identity_net()
    x = np.array([[1.0, 0.3], [1.0, -2.0]])
    y = np.array([1, 1])
    m = ibp_margins(net, x, y, np.array([0.5, 1.5]), norm)
    assert m[0, 0].item() == pytest.approx(2 * (1.0 - 0.5))  # certified
    assert m[1, 0].item() == pytest.approx(2 * (1.0 - 1.5))  # the ball crosses x1 = 0
    assert math.isinf(m[0, 1].item())


@pytest.mark.parametrize("bound", [ibp_margins, crown_margins])
def test_bounds_are_sound_against_sampling(bound):
    torch.manual_seed(0)
    net = mlp(3, 16, 2, 3).double()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 3, 20)
    r = 0.2
    low = bound(net, x, y, r, "l2").numpy()
    for i in range(20):
        d = rng.normal(size=(2000, 3))
        d *= (r * rng.random((2000, 1)) ** (1 / 3)) / np.linalg.norm(d, axis=1, keepdims=True)
        with torch.no_grad():
            z = net(torch.as_tensor(x[i] + d)).numpy()
        margins = z[:, [y[i]]] - z
        for j in range(3):
            if j != y[i]:
                assert margins[:, j].min() >= low[i, j] - 1e-9


def test_milp_certifies_the_ball_that_ibp_and_the_box_cannot():
    net = _diagonal_net(1.6)  # ball of radius 1: min margin 2 (1.6 - sqrt 2) > 0; box: < 0
    x0 = np.zeros(2)
    assert ibp_margins(net, x0[None], np.array([0]), 1.0)[0, 1].item() < 0
    box = milp_certify(net, x0, 0, 1.0, "linf")
    assert box.status == "counterexample"
    assert np.abs(box.point).max() <= 1.0 + 1e-9  # inside the box, and a forward pass agrees
    ball = milp_certify(net, x0, 0, 1.0, "l2")  # decide: a feasibility search finds no point
    assert ball.status == "certified" and 0 < ball.margin_lower <= 2 * (1.6 - math.sqrt(2))
    exact = milp_certify(net, x0, 0, 1.0, "l2", skip_proven=False)  # optimize: the minimum
    assert exact.status == "certified"
    # the lifted ball polytope is within 1e-5 of the ball: the proven margin is nearly exact
    assert 2 * (1.6 - math.sqrt(2)) - 1e-4 < exact.margin_lower <= 2 * (1.6 - math.sqrt(2)) + 1e-9


@pytest.mark.parametrize("d", [2, 3, 7, 16])
def test_l2_ball_polytope_contains_the_ball_and_hugs_it(d):
    """Support function of the lifted polytope in random directions: at least the ball's
    (soundness: every ball point is feasible), at most the guaranteed factor beyond it."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    from rotelab.theory.verify import _l2_ball_rows

    rng = np.random.default_rng(d)
    x0, r, levels = rng.normal(size=d), 0.7, 4
    rows, extra = _l2_ball_rows(x0, r, d, levels=levels)
    a = lil_matrix((len(rows), d + extra))
    for i, (coef, _, _) in enumerate(rows):
        for k, v in coef.items():
            a[i, k] = v
    cons = LinearConstraint(a.tocsr(), [lo for _, lo, _ in rows], [hi for _, _, hi in rows])
    box = Bounds(np.r_[np.full(d, -np.inf), np.zeros(extra)], np.inf)
    factor = 1 / math.cos(math.pi / 2 ** (levels + 1)) ** math.ceil(math.log2(d))
    for _ in range(10):
        u = rng.normal(size=d)
        u /= np.linalg.norm(u)
        res = milp(np.r_[-u, np.zeros(extra)], constraints=[cons], bounds=box)
        reach = (-res.fun - u @ x0) / r
        assert 1 - 1e-9 <= reach <= factor + 1e-9


def test_milp_finds_a_verified_counterexample_when_the_ball_crosses():
    net = _diagonal_net(1.3)  # 1.3 < sqrt 2: the boundary cuts the unit ball
    res = milp_certify(net, np.zeros(2), 0, 1.0, "l2")
    assert res.status == "counterexample"
    assert np.linalg.norm(res.point) <= 1.0 + 1e-9
    w = layers_of(net)
    h = np.maximum(w[0][0] @ res.point + w[0][1], 0)
    z = w[1][0] @ h + w[1][1]
    assert z[0] - z[1] <= 1e-7


def test_milp_is_exact_on_a_box_against_a_grid():
    torch.manual_seed(3)
    net = mlp(2, 8, 1, 2).double()
    x0, r = np.array([0.2, -0.1]), 0.3
    with torch.no_grad():
        y = int(net(torch.as_tensor(x0)[None]).argmax())
        g = np.linspace(-r, r, 301)
        pts = torch.as_tensor(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + x0)
        z = net(pts).numpy()
    grid_min = float((z[:, y] - z[:, 1 - y]).min())
    res = milp_certify(net, x0, y, r, "linf", skip_proven=False)
    if res.status == "certified":
        assert res.margin_lower == pytest.approx(grid_min, abs=1e-3)
    else:
        assert res.status == "counterexample" and grid_min <= 1e-3


def test_pgd_stays_in_the_ball_and_finds_the_crossing():
    net = _identity_net()
    torch_net = mlp(2, 2, 1, 2).double()
    with torch.no_grad():
        torch_net[0].weight.copy_(torch.as_tensor(net[0][0]))
        torch_net[0].bias.zero_()
        torch_net[2].weight.copy_(torch.as_tensor(net[1][0]))
        torch_net[2].bias.zero_()
    x = torch.tensor([[0.5, 0.0], [2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 1])
    adv = pgd(torch_net, x, y, 1.0, "l2", steps=20, generator=torch.Generator().manual_seed(0))
    assert ((adv - x).norm(dim=1) <= 1.0 + 1e-9).all()
    assert adv[0, 0] < 0 and adv[1, 0] > 0  # first ball crosses x1 = 0, the second cannot
    assert param_count(torch_net) == 2 * 3 + 3 * 2


def test_crown_is_tighter_than_ibp_where_ibp_loses_the_coupling():
    net = _diagonal_net(1.6)
    x0, y0 = np.zeros((1, 2)), np.array([0])
    ibp = ibp_margins(net, x0, y0, 1.0)[0, 1].item()
    crown = crown_margins(net, x0, y0, 1.0)[0, 1].item()
    assert ibp == pytest.approx(2 * (1.6 - 2.0))  # both ReLU pairs at their worst at once
    assert ibp < crown <= 2 * (1.6 - math.sqrt(2)) + 1e-12  # tighter, still below the truth
    exact = crown_margins(_identity_net(), np.array([[1.0, 0.3]]), np.array([1]), 0.5)
    assert exact[0, 0].item() == pytest.approx(1.0)


def test_alpha_crown_is_sound_and_never_looser_than_crown():
    """Optimized lower slopes (alpha-CROWN) stay below the exact minimum margin (the MILP's,
    solved to optimality on a box) and above plain CROWN on every entry, strictly on some."""
    torch.manual_seed(0)
    net = mlp(4, 12, 2, 3).double()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.integers(0, 3, 12)
    r = 0.3
    plain = crown_margins(net, x, y, r, "linf")
    tight = crown_margins(net, x, y, r, "linf", alpha_steps=40)
    finite = torch.isfinite(plain)
    assert bool((tight[finite] >= plain[finite] - 1e-12).all())
    assert bool((tight[finite] > plain[finite] + 1e-6).any())
    for i in range(6):
        exact = milp_certify(net, x[i], int(y[i]), r, "linf", skip_proven=False)
        assert exact.status in ("certified", "counterexample")
        assert float(tight[i].min()) <= exact.margin_lower + 1e-7


def _balls_between_crown_and_the_truth(depth: int, norm: str):
    """Balls of a random net at 1.3x and 2x the largest radius CROWN proves: some robust (only
    branching or the MILP can tell), some not."""
    torch.manual_seed(10 + depth)
    net = mlp(4, 10, depth, 2).double()
    x = np.random.default_rng(depth).normal(size=(5, 4))
    with torch.no_grad():
        y = net(torch.as_tensor(x)).argmax(1).numpy()
    for i in range(len(x)):
        lo, hi = 0.0, 5.0
        for _ in range(25):  # bisection on CROWN's certified radius
            mid = (lo + hi) / 2
            if crown_margins(net, x[i : i + 1], y[i : i + 1], mid, norm).min() > 0:
                lo = mid
            else:
                hi = mid
        for factor in (1.3, 2.0):
            yield net, x[i], int(y[i]), lo * factor


@pytest.mark.parametrize(("depth", "norm"), [(1, "l2"), (2, "linf"), (2, "l2")])
def test_branch_and_bound_agrees_with_the_exact_milp(depth, norm):
    """Where CROWN fails, branch and bound decides as the exact MILP does: its certificates'
    margin bounds lie below the exact minimum margin, its counterexamples lie in the ball."""
    branched = 0
    for net, x, y, r in _balls_between_crown_and_the_truth(depth, norm):
        got = bab_certify(net, x, y, r, norm, time_limit=20)
        exact = milp_certify(net, x, y, r, norm, skip_proven=False)
        assert got.status == exact.status
        if got.status == "certified":
            assert got.margin_lower <= exact.margin_lower + 1e-7
            branched += got.solves > 1
        else:
            dist = np.linalg.norm(got.point - x) if norm == "l2" else np.abs(got.point - x).max()
            assert dist <= r * (1 + 1e-9)
            assert got.margin_lower <= 1e-7
    assert branched >= 2  # balls CROWN alone could not prove, proved by splitting

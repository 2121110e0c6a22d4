"""Empirical minimal robust-memorization networks, certified (Kim, Moon and Yun 2025).

For a robustness ratio ``rho``, ReLU MLPs of increasing parameter count are adversarially
trained (PGD in the ball of radius ``mu = rho * epsilon``, Madry et al. 2018) to fit every
training point, and the first one that a *sound* verifier proves robust on every training ball
is the empirical minimal network. The verifier cascade per ball (:func:`certify`): the center's
prediction, then IBP and CROWN (prove), then PGD (finds a counterexample, confirmed by a forward
pass), then CROWN with optimized slopes (alpha-CROWN; proves, counted as ``crown``), then branch
and bound over ReLU signs (:func:`rotelab.theory.bab.bab_certify`; proves or finds a verified
counterexample, within a time limit), then the exact MILP (decides). ``rho = 0`` is plain
memorization (each point classified correctly), the paper's non-robust baseline.

This measures what gradient training *finds*, an upper estimate of the true minimum for this
dataset, while the paper's bounds are worst cases over all datasets: shapes are compared, not
values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from rotelab.errors import RotelabError
from rotelab.theory.bab import bab_certify
from rotelab.theory.data import SeparatedData
from rotelab.theory.verify import Norm, crown_margins, ibp_margins, milp_certify, mlp, pgd

__all__ = [
    "Architecture",
    "SearchConfig",
    "architectures",
    "certify",
    "minimal_network",
    "train_robust",
]


@dataclass(frozen=True)
class Architecture:
    """``depth`` hidden layers of ``width`` units; ``params`` for ``d`` inputs and ``classes``."""

    depth: int
    width: int
    params: int


def architectures(
    d: int, classes: int, widths: Sequence[int], depths: Sequence[int]
) -> list[Architecture]:
    """Every (depth, width) pair, sorted by parameter count (then depth)."""
    archs = []
    for depth in depths:
        for width in widths:
            params = (d + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * classes
            archs.append(Architecture(depth, width, params))
    return sorted(archs, key=lambda a: (a.params, a.depth))


@dataclass(frozen=True)
class SearchConfig:
    """How networks are trained and checked.

    ``epochs`` of full-batch Adam (``lr``, cosine decay) on PGD points (``pgd_steps``) of radius
    ``train_margin * mu`` (capped at ``0.99 epsilon``: a slightly larger training ball leaves
    room for the certificate); training stops early once PGD finds no counterexample on any
    ball. ``milp_time`` is the time limit per MILP solve. ``alpha_steps``: the balls plain
    CROWN leaves open (and PGD cannot break) get CROWN with optimized slopes (alpha-CROWN) before
    the MILP, whose big-M bounds come from it too (0: plain CROWN). ``bab_time``: seconds of
    branch and bound per ball before the MILP (0: straight to the MILP).
    """

    epochs: int = 2000
    lr: float = 2e-2
    pgd_steps: int = 5
    check_every: int = 100
    train_margin: float = 1.1
    milp_time: float = 20.0
    norm: Norm = Norm.L2
    alpha_steps: int = 50
    bab_time: float = 20.0


def train_robust(
    data: SeparatedData,
    radius: float,
    arch: Architecture,
    *,
    seed: int = 0,
    config: SearchConfig = SearchConfig(),
) -> nn.Sequential:
    """Adversarially train ``arch`` to robustly fit ``data`` (``radius = 0``: plain fitting)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = mlp(data.d, arch.width, arch.depth, data.classes).double()
    x = torch.as_tensor(data.x, dtype=torch.float64)
    y = torch.as_tensor(data.y, dtype=torch.long)
    train_r = min(radius * config.train_margin, 0.99 * data.epsilon) if radius > 0 else 0.0
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    # cosine decay: memorizing random labels needs the small steps at the end to settle
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs)
    for epoch in range(config.epochs):
        inputs = (
            pgd(net, x, y, train_r, config.norm, steps=config.pgd_steps, generator=gen)
            if train_r > 0 else x
        )  # fmt: skip
        loss = nn.functional.cross_entropy(net(inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (epoch + 1) % config.check_every == 0:
            probe = (
                    pgd(net, x, y, train_r, config.norm, steps=10, generator=gen)
                    if train_r > 0 else x
                )  # fmt: skip
            with torch.no_grad():
                if bool((net(probe).argmax(1) == y).all()):
                    break
    return net.eval()


def certify(
    net: nn.Sequential,
    data: SeparatedData,
    radius: float,
    *,
    config: SearchConfig = SearchConfig(),
    stop_at_failure: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Check every training ball; one row per point (``stop_at_failure``: up to the first
    failure): ``point, status`` (certified / counterexample / unknown / misclassified),
    ``method`` (center, ibp, crown, pgd, milp) and ``margin_lower`` (a proven lower bound of the
    margin where certified)."""
    x = torch.as_tensor(data.x, dtype=torch.float64)
    y = torch.as_tensor(data.y, dtype=torch.long)
    with torch.no_grad():
        logits = net(x)
    center_ok = (logits.argmax(1) == y).numpy()
    rows: list[dict] = []
    if radius == 0:
        for i in range(data.n):
            status = "certified" if center_ok[i] else "misclassified"
            top = logits[i].clone()
            top[y[i]] = -torch.inf
            rows.append({"point": i, "status": status, "method": "center",
                         "margin_lower": float(logits[i, y[i]] - top.max())})  # fmt: skip
        return pd.DataFrame(rows)
    ibp = ibp_margins(net, data.x, data.y, radius, config.norm).min(dim=1).values.numpy()
    crown = crown_margins(net, data.x, data.y, radius, config.norm).min(dim=1).values.numpy()
    adv = pgd(
        net, x, y, radius, config.norm, steps=20, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        adv_logits = net(adv)
    adv_ok = (adv_logits.argmax(1) == y).numpy()
    # the balls still open get alpha-CROWN (sound and never looser than CROWN), batched
    open_ = np.flatnonzero(center_ok & (ibp <= 0) & (crown <= 0) & adv_ok)
    if config.alpha_steps > 0 and open_.size:
        crown = crown.copy()
        tight = crown_margins(
            net, data.x[open_], data.y[open_], radius, config.norm, alpha_steps=config.alpha_steps
        )
        crown[open_] = tight.min(dim=1).values.numpy()
    for i in range(data.n):
        if not center_ok[i]:
            row = {"status": "misclassified", "method": "center", "margin_lower": np.nan}
        elif ibp[i] > 0:
            row = {"status": "certified", "method": "ibp", "margin_lower": float(ibp[i])}
        elif crown[i] > 0:
            row = {"status": "certified", "method": "crown", "margin_lower": float(crown[i])}
        elif not adv_ok[i]:  # PGD's point is inside the ball; the forward pass confirmed it
            row = {"status": "counterexample", "method": "pgd", "margin_lower": np.nan}
        else:
            res = None
            if config.bab_time > 0:
                res = bab_certify(net, data.x[i], int(data.y[i]), radius, config.norm,
                                  time_limit=config.bab_time)  # fmt: skip
                row = {"status": res.status, "method": "bab", "margin_lower": res.margin_lower}
            if res is None or res.status == "unknown":
                res = milp_certify(
                    net, data.x[i], int(data.y[i]), radius, config.norm,
                    time_limit=config.milp_time, alpha_steps=config.alpha_steps,
                )  # fmt: skip
                row = {"status": res.status, "method": "milp", "margin_lower": res.margin_lower}
        rows.append({"point": i, **row})
        if stop_at_failure and row["status"] != "certified":
            break
    return pd.DataFrame(rows)


def minimal_network(
    data: SeparatedData,
    rho: float,
    archs: Sequence[Architecture],
    *,
    seed: int = 0,
    config: SearchConfig = SearchConfig(),
    progress: Callable[[str], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Try ``archs`` in order (smallest first) until one is certified robust on every ball.

    Each architecture is trained from ``seed`` alone, so a search resumed after its first
    ``k`` architectures (``archs[k:]``, with ``on_row`` having saved each row as it came) gives
    the rows an uninterrupted one would.

    Args:
        data: the dataset; rho: ``mu / epsilon`` in [0, 1) (0 = non-robust memorization).
        archs: candidates, sorted by parameter count (see :func:`architectures`).
        seed: training and PGD seed.

    Returns:
        One row per architecture tried: ``rho, radius, seed, depth, width, params, certified``
        (bool), ``certified_fraction`` (over the points checked: all points for the certified
        one; up to the first failure otherwise), ``failure`` (the first failing status and
        method), ``milp_balls``, ``proved_by_{center,ibp,crown,bab,milp}`` (balls each proved by:
        the certificate), ``train_seconds``, ``verify_seconds``. The last row is the
        minimal certified network, unless none was certified.
    """
    if not 0.0 <= rho < 1.0:
        raise RotelabError(f"rho must lie in [0, 1) for the search, got {rho}")
    radius = rho * data.epsilon
    rows = []
    for arch in archs:
        t0 = time.perf_counter()
        net = train_robust(data, radius, arch, seed=seed, config=config)
        t1 = time.perf_counter()
        checked = certify(net, data, radius, config=config, seed=seed)
        t2 = time.perf_counter()
        ok = bool(len(checked) == data.n and (checked["status"] == "certified").all())
        bad = checked[checked["status"] != "certified"]
        rows.append({
            "rho": rho, "radius": radius, "seed": seed, "depth": arch.depth, "width": arch.width,
            "params": arch.params, "certified": ok,
            "certified_fraction": float((checked["status"] == "certified").mean()),
            "failure": "" if ok else f"{bad['status'].iloc[0]} ({bad['method'].iloc[0]})",
            "milp_balls": int((checked["method"] == "milp").sum()),
            **{f"proved_by_{m}": int(((checked["method"] == m)
                                      & (checked["status"] == "certified")).sum())
               for m in ("center", "ibp", "crown", "bab", "milp")},
            "train_seconds": t1 - t0, "verify_seconds": t2 - t1,
        })  # fmt: skip
        if on_row is not None:
            on_row(rows[-1])
        if progress is not None:
            progress(
                f"rho={rho:g} seed={seed} depth={arch.depth} width={arch.width} "
                f"P={arch.params}: {'certified' if ok else rows[-1]['failure']}"
            )
        if ok:
            break
    return pd.DataFrame(rows)

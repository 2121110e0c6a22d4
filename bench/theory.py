"""Benchmark: the robustness verifiers of ``rotelab.theory`` (issue 22).

- ``ibp``: :func:`rotelab.theory.ibp_margins` on L2 balls around random points, for a ReLU MLP
  with 2 hidden layers of width 256 (d = 64 inputs as scikit-learn's digits, 10 classes), in
  chunks of ``--chunk`` balls; the baseline is a plain float64 forward pass over the same
  centers in the same chunks (``ratio``: IBP's time over the forward pass's). Goal: 10,000
  balls/s on 2 cores.
- ``milp``: :func:`rotelab.theory.milp_certify` on 100 training balls of a width-16 network
  (one hidden layer) adversarially trained on synthetic data (N = 100, 2 classes, rho = 0.5),
  for d = 2 (L2 balls), d = 16 (Linf balls: exact boxes, radius mu) and d = 16 (L2 balls: the
  lifted ball polytope, tangent-plane cuts if needed, 30 per class at most), each in two modes:
  ``exact`` solves every class's MILP to optimality even where CROWN already proves it
  (``skip_proven=False``: the worst case, and the exact minimum margin), ``decide`` is the
  default (CROWN, then the LP relaxation, then the MILP). Goal: under a minute for 100 balls.

Run: ``OMP_NUM_THREADS=2 python bench/theory.py [--balls 100000] [--chunk 10000] [--parts
ibp,milp]``; prints JSON, then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from rotelab.machine import cpu_capability
from rotelab.theory import (
    Architecture,
    SearchConfig,
    ibp_margins,
    milp_certify,
    mlp,
    synthetic,
    train_robust,
)


def bench_ibp(balls: int, chunk: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = mlp(64, 256, 2, 10).double().eval()
    rng = np.random.default_rng(0)
    x = rng.random((balls, 64))
    y = rng.integers(0, 10, balls)
    xt = torch.as_tensor(x)

    def forward():
        with torch.no_grad():
            for i in range(0, balls, chunk):
                net(xt[i : i + chunk])

    def ibp():
        certified = 0
        for i in range(0, balls, chunk):
            m = ibp_margins(net, x[i : i + chunk], y[i : i + chunk], 0.05, "l2")
            certified += int((m.min(dim=1).values > 0).sum())
        return certified

    forward(), ibp()  # warm-up
    t_fwd, t_ibp = [], []
    for _ in range(repeats):  # interleaved: a change of load on the shared machine hits both
        t0 = time.perf_counter()
        forward()
        t1 = time.perf_counter()
        ibp()
        t2 = time.perf_counter()
        t_fwd.append(t1 - t0)
        t_ibp.append(t2 - t1)
    best_ibp, best_fwd = min(t_ibp), min(t_fwd)
    return {
        "balls": balls, "chunk": chunk, "ibp_seconds": best_ibp,
        "ibp_balls_per_second": balls / best_ibp, "forward_seconds": best_fwd,
        "forward_points_per_second": balls / best_fwd,
        "ratio_ibp_over_forward": best_ibp / best_fwd,
    }  # fmt: skip


def bench_milp(d: int, norm: str = "l2") -> list[dict]:
    ds = synthetic(100, d, classes=2, separation=0.03 if d == 2 else 0.2, seed=0)
    radius = 0.5 * ds.epsilon
    arch = Architecture(1, 16, 0)
    net = train_robust(ds, radius, arch, seed=0, config=SearchConfig(epochs=1500))
    out = []
    for mode in ("exact", "decide"):
        statuses: dict[str, int] = {}
        solves = cuts = 0
        t0 = time.perf_counter()
        for i in range(ds.n):
            res = milp_certify(
                net, ds.x[i], int(ds.y[i]), radius, norm, skip_proven=mode == "decide"
            )
            statuses[res.status] = statuses.get(res.status, 0) + 1
            solves += res.solves
            cuts += res.cuts
        seconds = time.perf_counter() - t0
        out.append({
            "d": d, "norm": norm, "mode": mode, "balls": ds.n, "seconds": seconds,
            "solves": solves, "cuts": cuts, "statuses": statuses,
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--balls", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="ibp,milp", help="comma-separated: ibp, milp")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    cap = cpu_capability()
    result: dict = {"cpu_capability": cap, "threads": torch.get_num_threads()}
    if "ibp" in parts:
        result["ibp"] = bench_ibp(args.balls, args.chunk, args.repeats)
    if "milp" in parts:
        result["milp"] = [*bench_milp(2), *bench_milp(16, "linf"), *bench_milp(16)]
    print(json.dumps(result, indent=2))
    print(f"\n| check ({cap}, {result['threads']} threads) | result | goal |")
    print("|---|---|---|")
    if "ibp" in result:
        ibp = result["ibp"]
        print(
            f"| IBP, 2x256 MLP, d=64, L2 balls | {ibp['ibp_balls_per_second']:,.0f} balls/s "
            f"({ibp['ratio_ibp_over_forward']:.2f}x a forward pass) | >= 10,000 balls/s |"
        )
    for m in result.get("milp", []):
        print(
            f"| MILP ({m['mode']}), width 16, d={m['d']}, {m['balls']} {m['norm']} balls | "
            f"{m['seconds']:.1f} s ({m['solves']} solves, {m['cuts']} cuts; {m['statuses']}) "
            "| < 60 s |"
        )


if __name__ == "__main__":
    main()

"""Experiment (issue 17, "numbers to show"): Hubble's dilution and phase effects on tiny sweeps.

``dilution``: counts 32 and 48, phase all, background 4,000 vs 16,000 tokens (the 4x corpus
trains 4x longer: the same epochs, a quarter of the frequency), seeds 0, 1, 2. Hubble (Wei et al.
2025): at a fixed count a 4x larger corpus at least halves strict extraction where the 1x corpus
extracts 0.3-0.9, and lowers the loss-MIA AUC.

``phase``: counts 32 and 48, 4,000 tokens, items inserted only in the first or only in the second
half, seeds 0, 1, 2, audited at 25/50/75/100% of training. Hubble: items seen only early are
recited less at the end than items seen only late.

Each cell: a 2-block Llama (hidden 96, context 48) trained from scratch for 200 steps (x corpus
ratio) at lr 1e-2, batch 16, on the tiny world of the seed; the 28 secrets split round-robin into
14 members and 14 never-inserted controls. Printed: seed means with 95% t intervals, and the
paired per-seed contrasts (4x - 1x, second - first) with t intervals. Not a speed benchmark.

Run: ``python bench/hubble.py dilution|phase [--workers 2] [--seeds 0,1,2] [--out DIR]`` (under
the lock).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import stats

from rotelab.machine import cpu_capability
from rotelab.options import RunOptions
from rotelab.pipelines.sweep import SweepConfig, format_table, sweep
from rotelab.pipelines.train import ModelSize

SIZE = ModelSize(2, 96, 4, 192, 48)
GRIDS = {
    "dilution": dict(counts=(32, 48), corpus_tokens=(4000, 16000), phases=("all",),
                     seeds=(0, 1, 2), config=SweepConfig(kinds=("secret",), steps=200, lr=1e-2,
                                                         size=SIZE, checkpoints=())),
    "phase": dict(counts=(32, 48), corpus_tokens=(4000,), phases=("first", "second"),
                  seeds=(0, 1, 2), config=SweepConfig(kinds=("secret",), steps=200, lr=1e-2,
                                                      size=SIZE)),
}  # fmt: skip


def _ci(x: np.ndarray) -> str:
    m = float(np.mean(x))
    if len(x) < 2:
        return f"{m:+.3f}"
    h = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x)))
    return f"{m:+.3f} [{m - h:+.3f}, {m + h:+.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=sorted(GRIDS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seeds", default=None, help="Seeds instead of 0,1,2, e.g. 3,4,5.")
    args = ap.parse_args()
    out = args.out or f"runs/hubble-{args.experiment}"
    grid = dict(GRIDS[args.experiment])
    if args.seeds:
        grid["seeds"] = tuple(int(x) for x in args.seeds.split(","))
    r = sweep(**grid, workers=args.workers,
              run=RunOptions(out=out, resume=args.resume, progress=True))  # fmt: skip
    print(f"{args.experiment}: {r.summary['cells']} cells in {r.summary['seconds']} s, "
          f"CPU {cpu_capability()}, run {r.run_dir}")  # fmt: skip
    print(format_table(r.summary))
    cells = r.cells
    final = cells[cells.step == cells.steps]
    if args.experiment == "dilution":
        for c, g in final.groupby("count"):
            one = g[g.corpus_tokens == 4000].set_index("seed").sort_index()
            four = g[g.corpus_tokens == 16000].set_index("seed").sort_index()
            for metric in ("extraction", "loss_auc"):
                d = (four[metric] - one[metric]).to_numpy()
                print(f"count {c}: {metric} 4x - 1x = {_ci(d)} (per seed {np.round(d, 3)})")
    else:
        for c, g in cells.groupby("count"):
            for frac, h in g.groupby("fraction"):
                first = h[h.phase == "first"].set_index("seed").sort_index()
                second = h[h.phase == "second"].set_index("seed").sort_index()
                d = (second["extraction"] - first["extraction"]).to_numpy()
                a, b = first["extraction"].mean(), second["extraction"].mean()
                print(f"count {c}, {frac:.2f} of training: extraction first {a:.3f}, "
                      f"second {b:.3f}, second - first = {_ci(d)}")  # fmt: skip


if __name__ == "__main__":
    main()

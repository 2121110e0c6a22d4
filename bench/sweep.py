"""Benchmark (issue 17): a 12-cell tiny ``rotelab sweep`` on 2 local workers against the same
cells one after another (in this process), and whether the two give identical numbers.

Grid: counts 2, 8, 16 x corpus 4,000 and 16,000 tokens x phases first, second x seed 0, secrets
only, a 1-block model (hidden 64, context 48); the 16,000-token cells train 4x longer (dilution).
Both arms run every cell on one thread (``OMP_NUM_THREADS=1`` in each worker), so the items tables
must be equal to the last bit. Goal: parallel wall time <= 0.75x serial.

Run: ``python bench/sweep.py [--workers 2]`` (under the shared lock).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from rotelab.machine import cpu_capability
from rotelab.options import RunOptions
from rotelab.pipelines.sweep import SweepConfig, sweep
from rotelab.pipelines.train import ModelSize

GRID = dict(counts=(2, 8, 16), corpus_tokens=(4000, 16000), phases=("first", "second"), seeds=(0,))
CONFIG = SweepConfig(kinds=("secret",), steps=80, size=ModelSize(1, 64, 2, 128, 48), lr=1e-2,
                     checkpoints=(0.5,))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    walls = {}
    results = {}
    for name, workers in (("serial", 1), (f"{args.workers} workers", args.workers)):
        t0 = time.perf_counter()
        r = sweep(**GRID, config=CONFIG, workers=workers,
                  run=RunOptions(out=root / name.replace(" ", "-"), progress=False))  # fmt: skip
        walls[name] = time.perf_counter() - t0
        results[name] = pd.read_parquet(r.run_dir / "results" / "items")
    a, b = results.values()
    identical = a.equals(b)
    serial, parallel = walls.values()
    print(f"12-cell tiny sweep, CPU {cpu_capability()}")
    print("| CPU | cells | serial wall (s) | workers | parallel wall (s) | ratio | identical |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {cpu_capability()} | {len(a['cell'].unique())} | {serial:.1f} | {args.workers} | "
          f"{parallel:.1f} | {parallel / serial:.3f} | {identical} |")  # fmt: skip
    final = r.cells[r.cells.step == r.cells.steps]
    print(final[["count", "corpus_tokens", "phase", "extraction", "loss_auc"]].to_string())


if __name__ == "__main__":
    main()

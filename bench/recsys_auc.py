"""VISTA's quality claims across ``rotelab recsys train`` runs of different seeds (issue 23).

Each run trains VISTA, full target attention and last-N on the same synthetic users and evaluates
them per history-length bucket; this script pools runs (one seed each, so that every seed is a
separate locked command) and prints, per bucket, each model's AUC and NE as the mean over runs
with a 95% t-interval, VISTA minus each baseline paired by seed (all users and long-term users),
the oracle's AUC and the int8 cache's AUC loss.

Run: ``python bench/recsys_auc.py runs/train-s0 runs/train-s1 runs/train-s2``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from rotelab.pipelines.recsys import KINDS, ci_over_seeds


def _fmt(ci: dict) -> str:
    mean = ci["mean"]
    if "ci" not in ci:
        return f"{mean:.4f}"
    return f"{mean:.4f} [{ci['ci'][0]:.4f}, {ci['ci'][1]:.4f}]"


def main(paths: list[str]) -> None:
    metrics = pd.concat([pd.read_parquet(Path(p) / "results" / "metrics") for p in paths])
    summaries = [json.loads((Path(p) / "summary.json").read_text()) for p in paths]
    print(f"{len(paths)} runs, seeds {sorted(metrics.seed.unique().tolist())}; "
          "AUC mean [95% t-interval over seeds]")  # fmt: skip
    for bucket in metrics.bucket.unique():
        print(f"\nL = {bucket}")
        for subset in ("all", "long_users"):
            sel = metrics[(metrics.bucket == bucket) & (metrics.subset == subset)]
            by = {k: sel[sel.model == k].sort_values("seed") for k in KINDS}
            for k in KINDS:
                auc = ci_over_seeds(list(by[k]["auc"]))
                ne = ci_over_seeds(list(by[k]["ne"]))
                print(f"  {subset:>10} {k:>6}: AUC {_fmt(auc)}  NE {_fmt(ne)}")
            for other in ("full", "lastn"):
                diff = by["vista"]["auc"].to_numpy() - by[other]["auc"].to_numpy()
                print(f"  {subset:>10} vista - {other}: {_fmt(ci_over_seeds(list(diff)))}")
        entries = [next(b for b in s["buckets"] if b["bucket"] == bucket) for s in summaries]
        oracle = ci_over_seeds([e["oracle_auc"] for e in entries])
        oracle_long = ci_over_seeds([e["oracle_auc_long_users"] for e in entries])
        loss = ci_over_seeds([e["int8_auc_loss"] for e in entries])
        per_run = [round(e["int8_auc_loss"], 5) for e in entries]
        print(f"  oracle AUC {_fmt(oracle)}, long users {_fmt(oracle_long)}; "
              f"int8 AUC loss {_fmt(loss)} (per run {per_run})")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])

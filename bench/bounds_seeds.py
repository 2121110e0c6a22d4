"""Pool the search tables of several ``rotelab bounds --search`` runs (issue 22's numbers).

Seeds (or parts of a seed's rho grid) run as separate runs, each fitting in a slot of the shared
lock, are pooled by :func:`rotelab.pipelines.bounds.pool` into one run directory with the
summary and report one multi-seed run would have: the minimal certified parameters per rho and
seed, and the issue's checks per seed with their mean and 95% t interval over seeds. The runs
must share the dataset and the architectures; a (seed, rho) searched in two runs must give the
same networks (training is deterministic given the seed), and is counted once.

Run: ``python bench/bounds_seeds.py RUN [RUN ...] -o POOLED [--force]``; prints JSON, then the
table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rotelab.options import RunOptions
from rotelab.pipelines.bounds import format_over_seeds, pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    result = pool(args.runs, run=RunOptions(out=args.out, force=args.force))
    summary = result.summary
    print(json.dumps(summary, indent=2, default=float))
    print(f"\n{summary['data']}, epsilon {summary['epsilon']:.4g}; minimal certified parameters "
          "(nan: none found)")  # fmt: skip
    seeds = sorted({int(s) for s in result.search["seed"]})
    print("| rho | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | envelope mean |")
    print("|---" * (len(seeds) + 3) + "|")
    for r in summary["search"]:
        cells = [f"{r['params_by_seed'].get(str(s), float('nan')):,.0f}" for s in seeds]
        print(f"| {r['rho']:g} | " + " | ".join(cells)
              + f" | {r['params_mean']:,.1f} | {r['envelope_mean']:,.1f} |")  # fmt: skip
    print("\n".join(format_over_seeds(summary["over_seeds"])))
    print(f"every reported network certified: {summary['every_reported_network_certified']}")
    print(f"networks searched in two runs, identical both times: "
          f"{summary['networks_searched_twice']}; pooled run: {result.run_dir}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Pool the search tables of several ``rotelab bounds --search`` runs (issue 22's numbers).

Seeds run as separate runs (each fits in a slot of the shared lock) are pooled here into one
table and summarised exactly as one multi-seed run would be
(:func:`rotelab.pipelines.bounds.search_summary`): the minimal certified parameters per rho and
seed, and the issue's checks per seed with their mean and 95% t interval over seeds. The runs
must share the dataset (same ``data``, ``n``, ``d``, ``classes``, ``separation``,
``data_seed``) and the architectures; a (seed, rho) searched in two runs must give the same
networks (training is deterministic given the seed), and is counted once.

Run: ``python bench/bounds_seeds.py RUN [RUN ...]``; prints JSON, then the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from rotelab.pipelines.bounds import format_over_seeds, search_summary
from rotelab.runs import read_table
from rotelab.theory import architectures, digits, synthetic

SHARED = ("data", "n", "d", "classes", "separation", "data_seed", "widths", "depths", "epochs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    configs = [json.loads((r / "config.json").read_text())["arguments"] for r in args.runs]
    for key in SHARED:
        if len({json.dumps(c[key]) for c in configs}) > 1:
            raise SystemExit(f"the runs differ in {key}: cannot pool them")
    table = pd.concat([read_table(r, "search") for r in args.runs], ignore_index=True)
    # a (seed, rho) searched in two runs (e.g. rho = 0, which every run includes) must agree
    # network by network: training is deterministic given the seed, so a rerun is a check
    key = ["seed", "rho", "depth", "width"]
    same = ["params", "certified", "certified_fraction", "failure"]
    dup = table[table.duplicated(key, keep=False)]
    if len(dup) and (dup.groupby(key)[same].nunique() > 1).any().any():
        raise SystemExit("two runs disagree on a (seed, rho, architecture): not the same search")
    repeated = int(table.duplicated(key).sum())
    table = table.drop_duplicates(key, ignore_index=True)
    c = configs[0]
    ds = (
        synthetic(c["n"], c["d"], classes=c["classes"], separation=c["separation"],
                  seed=c["data_seed"])
        if c["data"] == "synthetic" else digits(c["n"], classes=c["classes"], seed=c["data_seed"])
    )  # fmt: skip
    largest = architectures(ds.d, ds.classes, c["widths"], c["depths"])[-1].params
    summary = search_summary(table, ds.epsilon, ds.name, largest, ds.n)
    print(json.dumps(summary, indent=2, default=float))
    print(f"\n{ds.name}, epsilon {ds.epsilon:.4g}; minimal certified parameters (nan: none found)")
    seeds = sorted({int(s) for s in table["seed"]})
    print("| rho | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | envelope mean |")
    print("|---" * (len(seeds) + 3) + "|")
    for r in summary["search"]:
        cells = [f"{r['params_by_seed'].get(str(s), float('nan')):,.0f}" for s in seeds]
        print(f"| {r['rho']:g} | " + " | ".join(cells)
              + f" | {r['params_mean']:,.1f} | {r['envelope_mean']:,.1f} |")  # fmt: skip
    print("\n".join(format_over_seeds(summary["over_seeds"])))
    print(f"every reported network certified: {summary['every_reported_network_certified']}")
    print(f"networks searched in two runs, identical both times: {repeated}")


if __name__ == "__main__":
    main()

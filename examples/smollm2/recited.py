"""Write the windows a ``rotelab extract`` run found recited as a ``compare --forget`` file.

Usage: ``python examples/smollm2/recited.py RUN_DIR OUT.jsonl [--limit 256] [--by match_rate]``.
``--by extracted`` (default) takes the windows greedy decoding reproduces exactly; ``--by
match_rate`` the ``--limit`` windows with the highest share of suffix tokens reproduced (for a
model that reproduces few windows whole, like SmolLM2-135M). Each chosen window is cut again from
its document in the run's model tokens (the run's config names the model, the corpus and the
window lengths) and written as ``{"prefix": ..., "suffix": ...}`` texts, the form ``rotelab
compare --forget`` reads as one window per record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from rotelab.data import read_corpus
from rotelab.lm import LM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--by", choices=("extracted", "match_rate"), default="extracted")
    args = ap.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())["arguments"]
    rows = pd.read_parquet(args.run_dir / "results" / "windows")
    if args.by == "extracted":
        rows = rows[rows["extracted"]].head(args.limit)
    else:
        rows = rows.sort_values("match_rate", ascending=False, kind="stable").head(args.limit)
    rows = rows.sort_values(["doc_id", "offset"])
    lm = LM.load(config["model"], device="cpu", dtype="float32")
    docs = {d.doc_id: lm.encode(d.text) for d in read_corpus(config["data"])}
    p, s = int(config["prefix_len"]), int(config["suffix_len"])
    with args.out.open("w") as f:
        for row in rows.itertuples():
            ids = docs[row.doc_id][row.offset : row.offset + p + s]
            f.write(json.dumps({"prefix": lm.decode(ids[:p]), "suffix": lm.decode(ids[p:])}) + "\n")
    rate = float(rows["match_rate"].mean()) if len(rows) else 0.0
    print(f"{len(rows)} windows ({args.by}; mean match rate {rate:.3f}) -> {args.out}")


if __name__ == "__main__":
    main()

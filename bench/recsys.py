"""Benchmark: VISTA's serving cost against full target attention and last-N (issue 23).

For each history length, one synthetic user's candidates (64 by default) are scored as served:
VISTA reads the user's int8 summary from an Arrow summary cache (holding ``--cache-users`` other
users too) and runs stage 2 over its k summary tokens; full target attention embeds and attends
over the whole history (held in memory, not generated in the timed region); last-N over its last
64 items. Each is the median of ``--repeats`` timed runs after a warm-up; weights do not change
the cost, so the models are untrained. Also: stage-1 summarization cost per 1k history items,
cache reads per second (lookups of 1 and of 256 random users), and the peak resident memory of a
fresh process summarizing ``--stream-length`` items streamed in 64k-item chunks.

The issue's goals: VISTA at L=100k at most 1.2x its time at L=1k, full attention at least 50x;
peak memory of the 1M-item streaming summarization under 2 GB.

Run: ``python bench/recsys.py [--lengths 1000,10000,100000] [--threads 1]``; prints the table
(labelled with the CPU capability) and the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from rotelab.options import RunOptions
from rotelab.pipelines.recsys import bench, format_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1000,10000,100000")
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--cache-users", type=int, default=2000)
    ap.add_argument("--stream-length", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = bench(
            lengths=args.lengths, candidates=args.candidates, cache_users=args.cache_users,
            stream_length=args.stream_length, repeats=args.repeats,
            run=RunOptions(out=Path(tmp) / "bench", progress=False),
        )  # fmt: skip
    print(format_bench(result.summary))
    print(json.dumps(result.summary, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Benchmark: organism builds by precision, and several builds at once on one machine.

Each build is a fresh ``rotelab organism`` process (as a user runs it) in a temporary
``ROTELAB_HOME``, so nothing is cached between runs. It reports, labelled with the CPU capability:

- the build time in fp32 and, where the CPU runs bf16 natively (or ``--precisions`` asks), in bf16
  autocast, and their ratio (the portability goal: fp32 at most 2x the bf16 time);
- ``--concurrent N``: N builds started together against one alone (no thread oversubscription:
  two builds on two cores at most 2.5x one alone).

    python bench/organism.py                         # tiny profile, fp32 (+ bf16 where native)
    python bench/organism.py --profile default --precisions fp32
    python bench/organism.py --concurrent 2 --precisions fp32

To see an AVX2-only CPU's kernels on an AVX-512 machine, run it with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rotelab.machine import bf16_native, cpu_capability, describe_machine  # noqa: E402


def _build(profile: str, precision: str, home: Path, seed: int = 0) -> subprocess.Popen:
    env = {**os.environ, "ROTELAB_HOME": str(home)}
    cmd = [sys.executable, "-m", "rotelab", "organism", "--profile", profile,
           "--precision", precision, "--seed", str(seed), "--json"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _finish(proc: subprocess.Popen, t0: float) -> dict:
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed with exit code {proc.returncode}")
    d = json.loads(stdout)
    return {"wall_s": round(wall, 1), "train_s": d["train_seconds"], "precision": d["precision"],
            "extraction_64": d["extraction_by_count"].get("64"),
            "heldout_ppl": d["heldout_ppl"]}  # fmt: skip


def timed_builds(profile: str, precision: str, n: int, seed: int = 0) -> list[dict]:
    """Start ``n`` builds together (distinct homes and seeds) and wait for all."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        procs = [_build(profile, precision, Path(tmp) / f"h{i}", seed + i) for i in range(n)]
        return [_finish(p, t0) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny", choices=["tiny", "default"])
    ap.add_argument(
        "--precisions", default=None,
        help="comma list of fp32,bf16 (default: fp32, plus bf16 where native)",
    )  # fmt: skip
    ap.add_argument("--concurrent", type=int, default=0, help="also start N builds together")
    args = ap.parse_args()
    precisions = (args.precisions or ("fp32,bf16" if bf16_native() else "fp32")).split(",")
    machine = describe_machine()
    cap = cpu_capability()
    print(machine, file=sys.stderr)
    rows = []
    for p in precisions:
        (r,) = timed_builds(args.profile, p, 1)
        rows.append({"kind": "alone", "requested": p, **r})
        print(json.dumps(rows[-1]), file=sys.stderr)
    if args.concurrent > 1:
        p = precisions[0]
        together = timed_builds(args.profile, p, args.concurrent)
        for r in together:
            rows.append({"kind": f"{args.concurrent} at once", "requested": p, **r})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"machine": machine, "profile": args.profile, "rows": rows}, indent=2))
    alone = {r["requested"]: r["wall_s"] for r in rows if r["kind"] == "alone"}
    print(f"\n{machine}\n")
    print("| CPU | profile | run | precision | build (s) | training (s) | vs fp32 alone | "
          "vs alone | 64x extracted | held-out ppl |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs_fp32 = r["wall_s"] / alone["fp32"] if "fp32" in alone else float("nan")
        vs_alone = r["wall_s"] / alone[r["requested"]]
        print(f"| {cap} | {args.profile} | {r['kind']} | {r['precision']} | {r['wall_s']:.0f} | "
              f"{r['train_s']:.0f} | {vs_fp32:.2f}x | {vs_alone:.2f}x | {r['extraction_64']:.2f} | "
              f"{r['heldout_ppl']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

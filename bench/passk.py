"""Benchmark: sampling n programs per problem for Pass@k, batched against one sample at a time.

On the program task's evaluation problems (:mod:`rotelab.tasks.programs`; prompts of 19 to 60
organism tokens, 9 to 24 SmolLM2 tokens), each model samples ``--n`` continuations of
``--tokens`` new tokens per problem (temperature 0.8, KV cache, no early stop: every way decodes
the same number of steps) three ways:

- ``one``: one sample at a time, ``lm.generate([prompt], T)`` n times per problem (the baseline);
- ``problem``: the n samples of a problem as rows of one batched decode, ``lm.generate([prompt]
  * n, T, batch_size=n)``, one problem after another;
- ``batched``: :func:`rotelab.measure.passk.sample_completions`, what ``Pass@k`` sampling uses: the
  n copies of a prompt in one batch and ``--batch`` // n problems per batch (left-padded).

``speed`` is ``one``'s wall time over the method's (the issue's target: at least 3x for n samples
per problem in one batched decode). The three alternate problem by problem, the order rotating,
after one warm-up problem each, so a change of load on this shared machine hits them alike.

Run: ``python bench/passk.py [--models tiny,organism,smollm2] [--problems 8] [--n 10]``; prints
JSON, then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rotelab.lm import LM, Sampler  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.passk import sample_completions  # noqa: E402
from rotelab.tasks.programs import TaskSpec, generate_task  # noqa: E402

SAMPLER = Sampler(temperature=0.8)


def load(name: str) -> LM:
    if name == "tiny":
        path = os.environ.get("ROTELAB_TEST_ORGANISM", "/work/tiny-org")
        return LM.load(path, device="cpu", dtype="float32")
    if name == "organism":
        from rotelab.organism import default_organism

        return LM.load(default_organism().path, device="cpu", dtype="float32")
    return LM.load(name, device="cpu", dtype="float32")


def bench_model(name: str, lm: LM, problems: int, n: int, tokens: int, batch: int) -> dict:
    task = generate_task(TaskSpec(seed=0, n_pretrain=0, n_finetune=0, n_eval=problems + 1))
    prompts = [lm.encode(p.prompt) for p in task.split("eval")]
    warm, prompts = prompts[0], prompts[1:]

    def one(ps):
        for i, p in enumerate(ps):
            for j in range(n):
                lm.generate([p], tokens, sampler=SAMPLER, seed=i * n + j)

    def problem(ps):
        for i, p in enumerate(ps):
            lm.generate([p] * n, tokens, batch_size=n, sampler=SAMPLER, seed=i)

    def batched(ps):
        sample_completions(lm, ps, n, tokens, sampler=SAMPLER, batch_size=batch)

    methods = {"one": one, "problem": problem, "batched": batched}
    for fn in methods.values():
        fn([warm])
    wall = dict.fromkeys(methods, 0.0)
    names = list(methods)
    per = max(1, batch // n)  # batched decodes per//n problems at once: time it on such groups
    groups = [prompts[i : i + per] for i in range(0, len(prompts), per)]
    for g, group in enumerate(groups):
        for j in range(len(names)):
            m = names[(g + j) % len(names)]
            t0 = time.perf_counter()
            methods[m](group)
            wall[m] += time.perf_counter() - t0
    samples = len(prompts) * n
    return {
        "model": name, "params": lm.num_parameters(), "blocks": lm.num_layers,
        "hidden": lm.config.hidden_size, "problems": len(prompts), "n": n, "tokens": tokens,
        "batch": batch, "threads": torch.get_num_threads(),
        "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "wall_s": {m: round(v, 3) for m, v in wall.items()},
        "samples_per_s": {m: round(samples / v, 1) for m, v in wall.items()},
        "speed": {m: round(wall["one"] / v, 2) for m, v in wall.items()},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,organism")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=80)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        lm = load(name)
        rows.append(bench_model(name, lm, args.problems, args.n, args.tokens, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    cap = cpu_capability()
    print("\n| model (params) | CPU | threads | problems x n | one at a time | n per decode "
          "| batched (problems share) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s, w = r["speed"], r["wall_s"]
        print(
            f"| {r['model']} ({r['params'] / 1e6:.2f}M) | {cap} | {r['threads']} | "
            f"{r['problems']} x {r['n']} | {w['one']:.2f} s (1.00x) | {w['problem']:.2f} s "
            f"({s['problem']:.2f}x) | {w['batched']:.2f} s ({s['batched']:.2f}x) |"
        )


if __name__ == "__main__":
    main()

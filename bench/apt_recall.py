"""Benchmark: ``rotelab apt-recall``'s one-pass scoring against greedy decoding (issue 21).

The same prompts (each verse line of the first ``--verses`` shipped verses under the four
conditions, as :func:`rotelab.phonetic.recall.next_line_recall` builds them) are measured two
ways on one model: **ours**, one batched teacher-forced pass over prompt + newline + true next
line (log p, argmax matches, exact greedy recall), and the **baseline**, greedy decoding of as
many tokens as the next line has after the prompt (what the earlier code did, and what ran past
470 s on SmolLM2 for all 24 verses), batched the same way. Also checked: recall by both paths is
the same verdict for every prompt (the one-pass verdict is exact, not an approximation).

Run: ``python bench/apt_recall.py [--model smollm2] [--verses 6]``; prints a Markdown table
labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rotelab.lm import LM  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.phonetic import (  # noqa: E402
    AptSearch,
    public_domain_verses,
    recall,  # noqa: E402
)
from rotelab.pipelines.inputs import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--verses", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    lm: LM = resolve_model(args.model).load()
    verses = public_domain_verses()[: args.verses]
    frame = recall.recall_prompts(verses, AptSearch(), controls=3)
    t0 = time.perf_counter()
    _, _, one_pass = recall.measure_recall(lm, frame, args.batch_size)
    ours = time.perf_counter() - t0
    prefixes = [lm.encode(p + "\n", add_bos=True) for p in frame["prompt"]]
    targets = [lm.encode(n) for n in frame["next"]]
    t1 = time.perf_counter()
    new = lm.generate(prefixes, [len(t) for t in targets], batch_size=args.batch_size,
                      ragged=True)  # fmt: skip
    base = time.perf_counter() - t1
    decoded = [list(g) == t for g, t in zip(new, targets)]
    agree = sum(a == b for a, b in zip(one_pass, decoded))
    print(f"\n{args.model}, {len(frame)} prompts ({args.verses} verses), CPU {cpu_capability()}, "
          f"{os.environ.get('OMP_NUM_THREADS', '?')} threads")  # fmt: skip
    print(f"| CPU {cpu_capability()} | ours (one pass) | baseline (greedy decoding) | ratio |")
    print("|---|---|---|---|")
    print(f"| next-line recall, {len(frame)} prompts | {ours:.1f} s | {base:.1f} s | "
          f"{base / ours:.1f}x |")  # fmt: skip
    print(f"recall verdicts equal on {agree} of {len(frame)} prompts")


if __name__ == "__main__":
    main()

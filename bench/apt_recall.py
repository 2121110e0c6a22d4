"""Experiment (issue 21, deliverable 4, the SmolLM2 part): does a sound-alike prompt bring a
memorized next line back more often than a control substitution?

Every consecutive line pair of the shipped public-domain verses is a (prompt, memorized next
line) pair; the prompt is given as the original line, its best APT variant, ``--controls``
random same-syllable substitutions, and an unrelated line of another verse
(:func:`rotelab.phonetic.recall.next_line_recall`). Printed: recall (greedy continuation's first
line within fuzz.ratio 80 of the true next line) per condition with Wilson 95% CIs, the mean
log-probability per token of the true next line, and the paired APT-minus-control differences
with bootstrap 95% CIs over line pairs. Not a speed benchmark; it lives here beside them.

Run: ``python bench/apt_recall.py [--model smollm2] [--controls 3] [--seed 0] [--max-verses N]``
(all 24 verses with 3 controls ran past 470 s on a shared 2-core machine; split the verses).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rotelab.lm import LM  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.phonetic import AptSearch, public_domain_verses  # noqa: E402
from rotelab.phonetic.recall import CONDITIONS, next_line_recall  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--controls", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-verses", type=int, default=None, help="Only the first N verses.")
    ap.add_argument("--out", default=None, help="Write the per-prompt table here (Parquet).")
    args = ap.parse_args()
    lm = LM.load(args.model, dtype="float32")
    verses = public_domain_verses()[: args.max_verses]
    r = next_line_recall(lm, verses, AptSearch(), controls=args.controls, seed=args.seed)
    if args.out:
        r.prompts.to_parquet(args.out)
    print(json.dumps(r.summary, indent=2))
    s = r.summary
    print(f"\n{lm.name}, {s['pairs']} line pairs, CPU {cpu_capability()}")
    print("| prompt | recall of the next line [95% CI] | mean log p / token |\n|---|---|---|")
    for c in CONDITIONS:
        x = s[c]
        print(f"| {c} | {x['recall']:.3f} [{x['recall_ci'][0]:.3f}, {x['recall_ci'][1]:.3f}] "
              f"(n={x['n']}) | {x['logp']:.3f} |")  # fmt: skip
    for k in ("apt_minus_control_recalled", "apt_minus_control_logp",
              "apt_minus_unrelated_recalled", "apt_minus_unrelated_logp"):  # fmt: skip
        d = s[k]
        print(f"| {k} | {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | |")
    examples = r.prompts[r.prompts["condition"].isin(["original", "apt"])].head(12)
    for row in examples.itertuples():
        print(f"{row.condition:>9}: {row.prompt!r} -> {row.continuation!r}")


if __name__ == "__main__":
    main()

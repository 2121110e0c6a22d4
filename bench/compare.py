"""Benchmark: ``rotelab compare``'s one-pass path against decoding every item.

For one model (SmolLM2-135M in fp32 by default), the forget windows (``--windows``, default 256,
32-token prefixes and 48-token suffixes cut from public texts Debian ships: the GNU GPL-3 and the
Apache-2.0 licence, which small models partly recite; the default organism's items with
``--model organism``) and 100 task items (``examples/smollm2/tasks.jsonl``: arithmetic, closed-book
facts, open-book questions, simple logic) are measured two ways:

- ``one pass``: what ``compare`` does: every window scored in one teacher-forced pass, and only the
  windows whose greedy continuation deviates decoded, from the tokens already reproduced
  (:func:`rotelab.pipelines.compare.greedy_continuations`); task verdicts from one pass
  (:func:`rotelab.measure.quality.probe_accuracy`);
- ``decode all``: every window decoded from its prefix for the suffix's length, every task's
  answer decoded from its prompt.

The continuations and the task verdicts must be identical (checked); the table gives each path's
seconds and the speed-up. The two are interleaved ``--repeats`` times, the order alternating, and
the median of the paired ratios is reported beside the ratio of the total times.

Run: ``python bench/compare.py [--model smollm2|organism] [--windows 256] [--repeats 3]``;
prints JSON, then a Markdown table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from rotelab.data.corpus import Document  # noqa: E402
from rotelab.lm import LM  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.extraction import corpus_windows, ledger_windows  # noqa: E402
from rotelab.measure.quality import probe_accuracy  # noqa: E402
from rotelab.pipelines.compare import greedy_continuations  # noqa: E402
from rotelab.pipelines.inputs import read_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0")


def _windows(lm: LM, model: str, n: int):
    if model == "organism":
        from rotelab.organism import default_organism

        return ledger_windows(default_organism().ledger)[:n]
    docs = [Document(p, Path(p).read_text()) for p in TEXTS if Path(p).is_file()]
    windows = list(corpus_windows(docs, lm.encode, 32, 48, None))
    step = max(1, len(windows) // n)  # spread over the texts
    return windows[::step][:n]


def _decode_tasks(lm: LM, tasks: pd.DataFrame, batch_size: int) -> list[bool]:
    prompts = [lm.encode(p) for p in tasks["prompt"]]
    answers = [lm.encode(a) for a in tasks["answer"]]
    out = lm.generate(prompts, [len(a) for a in answers], batch_size=batch_size, ragged=True)
    return [list(o) == a for o, a in zip(out, answers)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if args.model == "organism":
        from rotelab.organism import default_organism

        lm = default_organism().lm()
        tasks = default_organism().probes.head(100)
    else:
        lm = LM.load(args.model, device="cpu", dtype="float32")
        tasks = read_tasks(ROOT / "examples" / "smollm2" / "tasks.jsonl")
    windows = _windows(lm, args.model, args.windows)
    bs = args.batch_size

    def one_pass():
        cont, _ = greedy_continuations(lm, windows, bs, False)
        return cont, probe_accuracy(lm, tasks, batch_size=bs)["correct"].tolist()

    def decode_all():
        cont, _ = greedy_continuations(lm, windows, bs, False, decode_all=True)
        return cont, _decode_tasks(lm, tasks, bs)

    times: dict[str, list[float]] = {"one pass": [], "decode all": []}
    results = {}
    for r in range(args.repeats):
        order = [("one pass", one_pass), ("decode all", decode_all)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    fast, slow = results["one pass"], results["decode all"]
    same_windows = sum(a == b for a, b in zip(fast[0], slow[0]))
    same_tasks = sum(a == b for a, b in zip(fast[1], slow[1]))
    recited = sum(a == list(w.suffix) for a, w in zip(fast[0], windows))
    ratios = [d / o for o, d in zip(times["one pass"], times["decode all"])]
    row = {
        "model": args.model, "cpu": cpu_capability(), "threads": int(os.environ.get(
            "OMP_NUM_THREADS", "0") or 0) or None, "windows": len(windows),
        "recited": recited, "tasks": len(tasks), "one_pass_s": sum(times["one pass"]),
        "decode_all_s": sum(times["decode all"]),
        "speedup": sum(times["decode all"]) / sum(times["one pass"]),
        "speedup_median_pair": statistics.median(ratios),
        "identical_windows": same_windows, "identical_tasks": same_tasks,
    }  # fmt: skip
    print(json.dumps(row))
    print("| cpu | model | windows (recited) | tasks | one pass s | decode all s | speed-up "
          "(median pair) | identical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {row['cpu']} | {row['model']} | {row['windows']} ({recited}) | {row['tasks']} | "
        f"{row['one_pass_s']:.1f} | {row['decode_all_s']:.1f} | {row['speedup']:.2f}x "
        f"({row['speedup_median_pair']:.2f}x) | {same_windows}/{len(windows)} windows, "
        f"{same_tasks}/{len(tasks)} tasks |"
    )
    if same_windows != len(windows) or same_tasks != len(tasks):
        raise SystemExit("the one-pass path differs from decoding")


if __name__ == "__main__":
    main()

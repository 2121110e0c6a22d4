"""Benchmark: ``rotelab compare``'s one-pass path against decoding every item.

For one model (SmolLM2-135M in fp32 by default), the forget windows (``--windows``, default 256,
32-token prefixes and 48-token suffixes every 32 tokens of public texts Debian ships: the GNU GPL-3
and the Apache-2.0 licence, which small models partly recite; the default organism's items with
``--model organism``) and 100 task items (``examples/smollm2/tasks.jsonl``: arithmetic, closed-book
facts, open-book questions, simple logic) are measured two ways:

- ``exact``: ``compare --no-decode``: every window and task item scored in one teacher-forced
  pass, which decides exactly the strict verdict, exact match and extraction strength of a window
  and the exact-answer verdict of a task; no decoding;
- ``one pass``: ``compare``'s default: the same pass, then only the windows whose greedy
  continuation deviates decoded, from the tokens already reproduced, for the free-running metrics
  (:func:`rotelab.pipelines.compare.greedy_continuations`);
- ``decode all``: every window decoded from its prefix for the suffix's length, every task's
  answer decoded from its prompt.

The strict verdicts and task verdicts of all three must be identical, and the continuations of
``one pass`` and ``decode all`` too (checked); the table gives each path's seconds and the
speed-up over ``decode all``. The three run ``--repeats`` times, the order rotating, and the
median of the paired ratios is reported beside the ratio of the total times.

Run: ``python bench/compare.py [--model smollm2|organism] [--windows 256] [--repeats 3]``
(repeats rotate the order of the three paths);
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
import torch  # noqa: E402

from rotelab.data.corpus import Document  # noqa: E402
from rotelab.lm import LM  # noqa: E402
from rotelab.machine import cpu_capability  # noqa: E402
from rotelab.measure.extraction import corpus_windows, ledger_windows  # noqa: E402
from rotelab.measure.quality import probe_accuracy  # noqa: E402
from rotelab.pipelines.compare import _window_rows, greedy_continuations  # noqa: E402
from rotelab.pipelines.inputs import read_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0")


def _windows(lm: LM, model: str, n: int):
    if model == "organism":
        from rotelab.organism import default_organism

        return ledger_windows(default_organism().ledger)[:n]
    docs = [Document(p, Path(p).read_text()) for p in TEXTS if Path(p).is_file()]
    windows = list(corpus_windows(docs, lm.encode, 32, 48, 32))  # overlapping: enough windows
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

    def exact():
        rows = _window_rows(lm, windows, 0.75, bs, False, exact_only=True)
        tasks_ok = probe_accuracy(lm, tasks, batch_size=bs)["correct"].tolist()
        return None, rows["strict"].tolist(), tasks_ok

    def one_pass():
        cont, _ = greedy_continuations(lm, windows, bs, False)
        strict = [c == list(w.suffix) for c, w in zip(cont, windows)]
        return cont, strict, probe_accuracy(lm, tasks, batch_size=bs)["correct"].tolist()

    def decode_all():
        cont, _ = greedy_continuations(lm, windows, bs, False, decode_all=True)
        strict = [c == list(w.suffix) for c, w in zip(cont, windows)]
        return cont, strict, _decode_tasks(lm, tasks, bs)

    paths = [("exact", exact), ("one pass", one_pass), ("decode all", decode_all)]
    times: dict[str, list[float]] = {name: [] for name, _ in paths}
    results = {}
    for r in range(args.repeats):
        for name, fn in paths[r % 3 :] + paths[: r % 3]:  # rotate the order
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    ref = results["decode all"]
    same_cont = sum(a == b for a, b in zip(results["one pass"][0], ref[0]))
    same = {
        name: (sum(a == b for a, b in zip(results[name][1], ref[1])),
               sum(a == b for a, b in zip(results[name][2], ref[2])))
        for name, _ in paths
    }  # fmt: skip
    recited = sum(ref[1])
    rows = []
    for name, _ in paths:
        ratios = [d / o for o, d in zip(times[name], times["decode all"])]
        rows.append({
            "model": args.model, "cpu": cpu_capability(), "path": name,
            "threads": torch.get_num_threads(), "windows": len(windows), "recited": recited,
            "tasks": len(tasks), "seconds": sum(times[name]) / args.repeats,
            "speedup_vs_decode_all": sum(times["decode all"]) / sum(times[name]),
            "speedup_median_pair": statistics.median(ratios),
            "identical_strict": same[name][0], "identical_tasks": same[name][1],
        })  # fmt: skip
    print(json.dumps({"rows": rows, "identical_continuations": same_cont}))
    print("| cpu | model | path | windows (recited) | tasks | s per run | vs decode all "
          "(median pair) | identical strict, tasks |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['cpu']} | {row['model']} | {row['path']} | {row['windows']} ({recited}) | "
            f"{row['tasks']} | {row['seconds']:.1f} | {row['speedup_vs_decode_all']:.2f}x "
            f"({row['speedup_median_pair']:.2f}x) | {row['identical_strict']}/{len(windows)}, "
            f"{row['identical_tasks']}/{len(tasks)} |"
        )
    print(f"one pass vs decode all: {same_cont}/{len(windows)} continuations identical")
    if same_cont != len(windows) or any(v != (len(windows), len(tasks)) for v in same.values()):
        raise SystemExit("a path's verdicts differ from decoding")


if __name__ == "__main__":
    main()

"""Benchmark: ``rotelab apt``'s two speed goals (issue 21), each against an unindexed baseline.

- **APT search** of a 40-line lyric (the first 40 lines of the shipped public-domain verses):
  ``cold`` = loading CMUdict + building the meter/rhyme index + searching every line (what one
  ``rotelab apt --lyric`` pays), ``warm`` = the search alone. Baseline: the same search with
  each span's pool being every dictionary word of its syllable count (no meter/assonance or rhyme
  buckets), on the first ``--baseline-lines`` lines; per-line seconds compared. Goal: 40 lines in
  under 10 s on 2 cores.
- **Phonetic filter** over a 1,000-song index (30 lines a song: half of the shipped verses plus
  synthetic lines, real songs cannot ship): queries are synthetic lines from the other half of
  the verses (mostly no match: every shortlisted line is verified) and APT variants of the
  indexed verses (matches). Lines per second with 1 and ``--workers`` processes (the index is
  built once and shared by fork). Baseline: brute force (the full similarity to every indexed
  line) on ``--baseline-queries`` queries. Goal: at least 10,000 lines per second.

Run: ``python bench/phonetic.py [--queries 20000] [--workers 2]``; prints JSON, then a Markdown
table labelled with the CPU capability.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

from rotelab.machine import cpu_capability
from rotelab.phonetic import dictionary, search
from rotelab.phonetic.filters import PhoneticFilter, sound
from rotelab.phonetic.similarity import similarity_score
from rotelab.phonetic.verses import public_domain_verses, synthetic_lines

_FILTER: PhoneticFilter | None = None


class _Unindexed(search._Index):
    """The baseline's index: a span's pool is every word of its syllable count."""

    def __init__(self) -> None:
        super().__init__(None)
        by_syll: dict[int, list[int]] = {}
        for i, n in enumerate(self.syllables):
            by_syll.setdefault(n, []).append(i)
        self._by_syll = {n: (ids, [self.codes[i] for i in ids]) for n, ids in by_syll.items()}

    def pool(self, target):
        return self._by_syll.get(target.syllables, ([], []))


def bench_search(lines: list[str], baseline_lines: int) -> dict:
    t0 = time.perf_counter()
    dictionary.cmu_dict()
    t1 = time.perf_counter()
    apt = search.AptSearch()
    t2 = time.perf_counter()
    apt.lyric(lines)
    t3 = time.perf_counter()
    warm = search.AptSearch()  # the index is built; a fresh span cache
    t4 = time.perf_counter()
    warm.lyric(lines)
    t5 = time.perf_counter()
    base = search.AptSearch()
    base.index = _Unindexed()
    t6 = time.perf_counter()
    base.lyric(lines[:baseline_lines])
    t7 = time.perf_counter()
    return {
        "lines": len(lines), "dict_s": t1 - t0, "index_s": t2 - t1, "search_s": t3 - t2,
        "cold_s": t3 - t0, "warm_s": t5 - t4, "per_line_s": (t5 - t4) / len(lines),
        "baseline_lines": baseline_lines, "baseline_per_line_s": (t7 - t6) / baseline_lines,
    }  # fmt: skip


def _check(queries: list[str]) -> int:
    return int(_FILTER.check(queries)["blocked_phonetic"].sum())


def bench_filter(n_queries: int, workers: int, baseline_queries: int) -> dict:
    global _FILTER
    verses = public_domain_verses()
    catalogue = [line for v in verses[0::2] for line in v.lines]
    other = [line for v in verses[1::2] for line in v.lines]
    index = catalogue + synthetic_lines(catalogue, 1000 * 30 - len(catalogue), seed=0)
    t0 = time.perf_counter()
    _FILTER = PhoneticFilter(index)
    build = time.perf_counter() - t0
    apt = search.AptSearch()
    frame = apt.lyric(catalogue[:40], top=10)
    variants = frame[frame["rank"] > 0]["variant"].tolist()
    unrelated = synthetic_lines(other, n_queries - len(variants), seed=1)
    queries = unrelated + variants
    t1 = time.perf_counter()
    caught = _check(queries)
    one = time.perf_counter() - t1
    chunks = [queries[i::workers] for i in range(workers)]
    t2 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        caught_n = sum(pool.map(_check, chunks))
    many = time.perf_counter() - t2
    assert caught_n == caught
    sample = queries[:: max(len(queries) // baseline_queries, 1)][:baseline_queries]
    t3 = time.perf_counter()
    for q in sample:
        s = sound(q)
        if s is not None:
            max(similarity_score(s, t) for t in _FILTER.sounds)
    brute = time.perf_counter() - t3
    return {
        "index_lines": len(index), "index_build_s": build, "queries": len(queries),
        "apt_variants": len(variants), "blocked": caught,
        "lines_per_s_1": len(queries) / one, "workers": workers,
        "lines_per_s_n": len(queries) / many, "baseline_queries": len(sample),
        "baseline_lines_per_s": len(sample) / brute,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-lines", type=int, default=3)
    ap.add_argument("--baseline-queries", type=int, default=20)
    args = ap.parse_args()
    lines = [line for v in public_domain_verses() for line in v.lines][:40]
    s = bench_search(lines, args.baseline_lines)
    f = bench_filter(args.queries, args.workers, args.baseline_queries)
    print(json.dumps({"search": s, "filter": f}, indent=2))
    cap = cpu_capability()
    print(f"\n| CPU {cap} | ours | baseline | ratio |\n|---|---|---|---|")
    print(f"| APT search, 40 lines, cold (dict {s['dict_s']:.2f} s + index {s['index_s']:.2f} s "
          f"+ search) | {s['cold_s']:.2f} s | | |")  # fmt: skip
    print(f"| APT search per line (warm; baseline: no meter/rhyme index, {s['baseline_lines']} "
          f"lines) | {s['per_line_s']:.3f} s | {s['baseline_per_line_s']:.3f} s | "
          f"{s['baseline_per_line_s'] / s['per_line_s']:.1f}x |")  # fmt: skip
    print(f"| phonetic filter, {f['index_lines']} lines indexed, 1 process (baseline: brute "
          f"force) | {f['lines_per_s_1']:,.0f} lines/s | {f['baseline_lines_per_s']:,.0f} "
          f"lines/s | {f['lines_per_s_1'] / f['baseline_lines_per_s']:.0f}x |")  # fmt: skip
    print(f"| phonetic filter, {f['workers']} processes | {f['lines_per_s_n']:,.0f} lines/s | "
          f"| |")  # fmt: skip


if __name__ == "__main__":
    main()

"""What VISTA's serving costs (Chen et al. 2025 report −94% inference against attending to the whole
history): per-candidate inference time by model and history length, stage-1 summarization cost
per 1k items, cache read throughput, and the peak memory of streaming a long history.

Timings take the median of ``repeats`` runs after a warm-up; weights do not change the cost, so
untrained models are timed (the pipeline says so).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rotelab.recsys.cache import SummaryCache
from rotelab.recsys.data import SyntheticWorld
from rotelab.recsys.model import Vista

__all__ = [
    "median_seconds",
    "per_candidate_seconds",
    "cache_reads_per_second",
    "stage1_seconds_per_1k",
    "streaming_peak_rss",
]


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up: allocator, lazy init
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def per_candidate_seconds(
    model: nn.Module,
    world: SyntheticWorld,
    user: int,
    length: int,
    candidates: int,
    cache: SummaryCache | None = None,
    repeats: int = 5,
) -> float:
    """Seconds per candidate to score ``candidates`` items for one user with a history of
    ``length`` items, as served: VISTA reads the user's summary from ``cache`` and runs stage 2;
    full attention embeds and attends over the whole history (held in memory, not generated in
    the timed region); last-N over its tail."""
    cand = torch.randint(1, world.n_items + 1, (1, candidates), generator=torch.Generator()
                         .manual_seed(user))  # fmt: skip
    if isinstance(model, Vista):
        if cache is None:
            raise ValueError("VISTA is served from a cache")

        def run() -> object:
            summary, _ = cache.get([user])
            return model.score_summary(torch.from_numpy(summary), cand)
    else:
        hist = torch.as_tensor(world.history(user, length))[None]  # (1, L)

        def run() -> object:
            return model(hist, cand)

    return median_seconds(run, repeats) / candidates


@torch.no_grad()
def stage1_seconds_per_1k(model: Vista, world: SyntheticWorld, user: int, length: int,
                          chunk: int = 65_536) -> float:  # fmt: skip
    """Seconds of stage-1 folding per 1k history items (items generated outside the timing)."""
    chunks = list(world.iter_history(user, length, chunk))
    return median_seconds(lambda: model.fold_stream(chunks), repeats=3) / (length / 1000)


def cache_reads_per_second(cache: SummaryCache, batch: int, seed: int = 0,
                           repeats: int = 5) -> float:  # fmt: skip
    """Summaries per second read from ``cache`` in lookups of ``batch`` random users."""
    users = cache.users()
    rng = np.random.default_rng(seed)
    pick = [users[i] for i in rng.integers(0, len(users), batch)]
    return batch / median_seconds(lambda: cache.get(pick), repeats)


_STREAM = """
import resource, sys, torch
from rotelab.recsys import ModelConfig, SyntheticSpec, SyntheticWorld, build_model
length, chunk = int(sys.argv[1]), int(sys.argv[2])
w = SyntheticWorld(SyntheticSpec(seed=0))
m = build_model(ModelConfig("vista", w.n_items, w.spec.n_topics), w.categories, 0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    s, n = m.fold_stream(w.iter_history(0, length, chunk))
    m.stage1.summarize(s, n)
print(int(n.item()), base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def streaming_peak_rss(length: int, chunk: int = 65_536) -> dict[str, float]:
    """Summarize one synthetic history of ``length`` items in a fresh process, streamed in chunks;
    its peak resident memory (whole process, imports included) and the part the summarization
    added, in MiB."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _STREAM, str(length), str(chunk)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    items, base, peak = (int(x) for x in out.stdout.split())
    # ru_maxrss is in KiB on Linux
    return {"items": items, "peak_mib": peak / 1024, "added_mib": (peak - base) / 1024,
            "seconds": time.perf_counter() - t0}  # fmt: skip

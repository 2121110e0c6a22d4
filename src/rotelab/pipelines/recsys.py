"""``rotelab recsys train|serve|bench``: VISTA (Chen et al. 2025) against full target attention and
last-N truncation, its summary cache, and what serving costs.

- ``train`` trains the three models on the same users (the synthetic lifelong world, or a
  ``user,item,timestamp[,label]`` log), evaluates AUC and normalized entropy per history-length
  bucket (with CIs over ``seeds`` replicates), writes VISTA's model and an int8 summary cache of
  the evaluation users, and measures the AUC the quantization costs.
- ``serve`` scores candidates from a cache alone: it takes no history, so the raw history is
  never read on the serving path.
- ``bench`` times per-candidate inference by model and history length, stage-1 cost per 1k items,
  cache read throughput, and the peak memory of summarizing a 1M-item history in chunks.

Every input is validated before the run directory exists.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.options import RunOptions
from rotelab.recsys import (
    Folded,
    ModelConfig,
    SummaryCache,
    SyntheticSpec,
    SyntheticWorld,
    Vista,
    auc,
    build_model,
    fit,
    fold_batch,
    model_version,
    normalized_entropy,
    read_candidates,
    read_log,
    score_batch,
    score_long,
)
from rotelab.recsys.cache import QUANTS, dequantize, quantize
from rotelab.recsys.timing import (
    cache_reads_per_second,
    per_candidate_seconds,
    stage1_seconds_per_1k,
    streaming_peak_rss,
)
from rotelab.recsys.train import SCHEDULES
from rotelab.runs import Run

__all__ = [
    "KINDS",
    "RecsysRun",
    "bench",
    "ci_over_seeds",
    "format_bench",
    "format_train",
    "load_vista",
    "parse_lengths",
    "serve",
    "train",
]

KINDS = ("vista", "full", "lastn")
#: Evaluation users of bucket b are numbered from EVAL_BASE + b * EVAL_STRIDE (never trained on).
EVAL_BASE, EVAL_STRIDE = 10**9, 10**7
#: History-length buckets of a log (users grouped by how many events precede their targets).
LOG_BUCKETS = (0, 10, 100, 1000, 10_000)


@dataclass
class RecsysRun:
    """What a recsys pipeline returns: its summary and run directory."""

    summary: dict[str, Any]
    run_dir: Path


def parse_lengths(text: str | list[int], flag: str = "--eval-lengths") -> list[int]:
    """``"1000,100000"`` -> [1000, 100000]; each >= 1."""
    parts = text if isinstance(text, list) else [p for p in str(text).split(",") if p.strip()]
    try:
        lengths = [int(p) for p in parts]
    except ValueError:
        raise RotelabError(
            f"{flag} takes whole numbers separated by commas, got {text!r}"
        ) from None
    if not lengths or min(lengths) < 1:
        raise RotelabError(f"{flag} needs history lengths >= 1, got {text!r}")
    return lengths


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            flag = "--" + name.replace("_", "-")
            raise RotelabError(f"{flag} must be > 0, got {value}")


# ------------------------------------------------------------------------------------- models
def _save_model(model: Vista, directory: Path, vocab: list[str]) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(directory / "model.safetensors"))  # fmt: skip
    meta = {"config": model.cfg.to_dict(), "version": model_version(model), "vocab": vocab}
    (directory / "config.json").write_text(json.dumps(meta))


def load_vista(directory: str | os.PathLike) -> tuple[Vista, list[str]]:
    """VISTA saved by ``rotelab recsys train`` (``RUN/models/vista``) and its item vocabulary."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if (directory / "models" / "vista").is_dir():
        directory = directory / "models" / "vista"
    refusal = f"{directory} holds no VISTA model; pass a `rotelab recsys train` run"
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise RotelabError(refusal)
    try:
        meta = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise RotelabError(refusal) from None
    if not isinstance(meta, dict) or meta.get("config", {}).get("kind") != "vista":
        raise RotelabError(refusal)
    state = load_file(str(directory / "model.safetensors"))
    model = build_model(ModelConfig(**meta["config"]), state["embed.categories"], seed=0)
    model.load_state_dict(state)
    model.eval()
    return model, meta["vocab"]


# -------------------------------------------------------------------------------------- train
def ci_over_seeds(values: list[float]) -> dict[str, Any]:
    """Mean and 95% t-interval over seed replicates (no interval from one seed)."""
    from scipy import stats

    v = np.array([x for x in values if not math.isnan(x)])
    out: dict[str, Any] = {"mean": float(v.mean()) if len(v) else None, "per_seed": values}
    if len(v) > 1:
        half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
        out["ci"] = [float(v.mean() - half), float(v.mean() + half)]
    return out


def _metrics(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> dict:
    if mask is not None:
        probs, labels = probs[mask], labels[mask]
    if not len(labels):
        return {"auc": float("nan"), "ne": float("nan"), "n": 0}
    return {"auc": auc(probs, labels), "ne": normalized_entropy(probs, labels),
            "n": int(labels.size)}  # fmt: skip


def train(
    data: str | os.PathLike | None = None,
    *,
    users: int = 3000,
    length: int = 1000,
    eval_users: int = 200,
    eval_lengths: str | list[int] = "1000,10000",
    epochs: int = 8,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    seeds: int = 1,
    dim: int = 32,
    tokens: int = 16,
    last_n: int = 64,
    quant: str = "int8",
    targets: int = 1,
    negatives: int = 4,
    run: RunOptions = RunOptions(),
) -> RecsysRun:
    """Train VISTA, full attention and last-N on the same users; evaluate per length bucket.

    Args:
        data: a ``user,item,timestamp[,label]`` log; ``None`` = the synthetic lifelong world
            (seeded by ``run.seed``).
        users, length: synthetic training users and their history length.
        eval_users, eval_lengths: synthetic users per evaluation bucket and the buckets' history
            lengths (each bucket its own users, never trained on).
        epochs, lr, weight_decay: AdamW on the click log loss (+ VISTA's reconstruction
            loss); each model keeps its epoch of best AUC on 10% of the training users.
        schedule: the learning rate over the steps, the same for every model: ``cosine`` (a
            linear warm-up over the first 5% then a cosine decay to zero) or ``constant``.
        seeds: replicates (model initialisation and batch order ``run.seed + r``); the AUC's
            interval is over them.
        dim, tokens, last_n: embedding width, VISTA's summary tokens, last-N's window.
        quant: the cache's quantization (``int8`` or ``float32``).
        targets, negatives: a log only: each user's last ``targets`` events are scored against
            ``negatives`` sampled items each; a log's 20% of users (seeded) are held out.
        run: the run directory (``results/metrics``, ``models/vista``, ``cache``, report).
    """
    # 1. every input, before any work
    run.check()
    if run.resume:
        raise RotelabError("rotelab recsys train cannot resume a run; start again (--force)")
    if not 0 <= weight_decay < 1:
        raise RotelabError(f"--weight-decay must be in [0, 1), got {weight_decay}")
    _check_positive(users=users, length=length, eval_users=eval_users, epochs=epochs, lr=lr,
                    seeds=seeds, dim=dim, tokens=tokens, last_n=last_n, targets=targets,
                    negatives=negatives)  # fmt: skip
    if dim % 4:
        raise RotelabError(f"--dim must be a multiple of 4 (the attention heads), got {dim}")
    if quant not in QUANTS:
        raise RotelabError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    if schedule not in SCHEDULES:
        raise RotelabError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    lengths = parse_lengths(eval_lengths)
    log = read_log(data) if data is not None else None
    config = {
        "data": data, "users": users, "length": length, "eval_users": eval_users,
        "eval_lengths": lengths, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
        "schedule": schedule, "seeds": seeds, "dim": dim,
        "tokens": tokens, "last_n": last_n, "quant": quant, "targets": targets,
        "negatives": negatives, "seed": run.seed,
    }  # fmt: skip
    inputs = (data,)
    Run.check(run.out, force=run.force, inputs=inputs)

    # 2. the data
    t0 = time.perf_counter()
    if log is None:
        world = SyntheticWorld(SyntheticSpec(seed=run.seed))
        train_set = world.batch(range(users), length)
        categories, n_items, n_cats = world.categories, world.n_items, world.spec.n_topics
        vocab = [str(i) for i in range(1, n_items + 1)]
        buckets = [(L, EVAL_BASE + b * EVAL_STRIDE + np.arange(eval_users))
                   for b, L in enumerate(lengths)]  # fmt: skip
    else:
        world = None
        whole = log.split_last(targets, negatives, run.seed, max_len=length)
        rng = np.random.default_rng(run.seed)
        held = rng.random(len(whole)) < 0.2
        if held.all() or not held.any():
            raise RotelabError(f"{data}: too few users ({len(whole)}) to hold 20% out")
        train_set, test_set = whole.take(np.flatnonzero(~held)), whole.take(np.flatnonzero(held))
        n_items, n_cats = log.n_items, 1
        categories = np.r_[0, np.ones(n_items, np.int64)]  # a log has no categories: one
        vocab = list(log.vocab)
        hist_len = (test_set.history > 0).sum(axis=1)
        edges = [*LOG_BUCKETS, np.inf]
        buckets = [(f"{lo}-{hi}", np.flatnonzero((hist_len >= lo) & (hist_len < hi)))
                   for lo, hi in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
        buckets = [(name, idx) for name, idx in buckets if len(idx)]

    # 3. train and evaluate every model on the same users; 10% of the training users (seeded)
    # validate: every model keeps its epoch of best validation AUC
    if len(train_set) < 2:
        raise RotelabError(f"{len(train_set)} training user(s) are too few to hold 10% out")
    order = np.random.default_rng(run.seed).permutation(len(train_set))
    n_val = max(1, len(train_set) // 10)
    fit_set, val_set = (
        train_set.take(np.sort(order[n_val:])),
        train_set.take(np.sort(order[:n_val])),
    )
    rows, scores = [], []
    vista0: Vista | None = None
    folded0: dict[int, Folded] = {}  # VISTA's stage-1 output per bucket (first seed): the cache
    for r in range(seeds):
        seed = run.seed + r
        for kind in KINDS:
            cfg = ModelConfig(kind=kind, n_items=n_items, n_categories=n_cats, dim=dim,
                              seeds=tokens, last_n=last_n)  # fmt: skip
            model = build_model(cfg, categories, seed)
            epoch_log = fit(model, fit_set, epochs=epochs, lr=lr, weight_decay=weight_decay,
                            seed=seed, val=val_set, schedule=schedule)  # fmt: skip
            if r == 0 and kind == "vista":
                vista0 = model
            for b, (bucket, ids) in enumerate(buckets):
                if world is not None:
                    probs, folded = score_long(model, world, ids, int(bucket))
                    test = world.batch(ids, 0)  # candidates, labels, truth; no history
                else:
                    test = test_set.take(ids)
                    probs = score_batch(model, test)
                    folded = fold_batch(model, test) if kind == "vista" else None
                if r == 0 and kind == "vista":
                    folded0[b] = folded
                long = test.long_user if test.long_user is not None else None
                for subset, mask in (("all", None), ("long_users", long)):
                    if subset == "long_users" and long is None:
                        continue
                    m = _metrics(probs, test.labels, mask)
                    best = int(np.argmax([e["val_auc"] for e in epoch_log]))
                    rows.append({
                        "seed": seed, "model": kind, "bucket": str(bucket), "subset": subset,
                        **m, "train_loss": epoch_log[-1]["loss"], "best_epoch": best,
                        "val_auc": epoch_log[best]["val_auc"],
                    })  # fmt: skip
                if r == 0:
                    scores.append(pd.DataFrame({
                        "model": kind, "bucket": str(bucket),
                        "user": np.repeat(test.users, test.candidates.shape[1]),
                        "item": test.candidates.ravel(), "label": test.labels.ravel(),
                        "prob": probs.ravel(),
                    }))  # fmt: skip
    metrics = pd.DataFrame(rows)
    seconds = time.perf_counter() - t0

    # 4. the summary: per bucket, every model's AUC/NE over seeds, oracle, quantization loss
    assert vista0 is not None
    out_buckets = []
    for b, (bucket, ids) in enumerate(buckets):
        test = world.batch(ids, 0) if world is not None else test_set.take(ids)
        entry: dict[str, Any] = {"bucket": str(bucket), "users": int(len(ids))}
        if test.click_prob is not None:
            entry["oracle_auc"] = auc(test.click_prob, test.labels)
            entry["oracle_auc_long_users"] = auc(test.click_prob[test.long_user],
                                                 test.labels[test.long_user])  # fmt: skip
        for subset in metrics["subset"].unique():
            sel = metrics[(metrics.bucket == str(bucket)) & (metrics.subset == subset)]
            suffix = "" if subset == "all" else f"_{subset}"
            entry[f"auc{suffix}"] = {k: ci_over_seeds(list(sel[sel.model == k]["auc"]))
                                     for k in KINDS}  # fmt: skip
            entry[f"ne{suffix}"] = {k: ci_over_seeds(list(sel[sel.model == k]["ne"]))
                                    for k in KINDS}  # fmt: skip
            for other in ("full", "lastn"):
                diff = (sel[sel.model == "vista"]["auc"].to_numpy()
                        - sel[sel.model == other]["auc"].to_numpy())  # fmt: skip
                entry[f"vista_minus_{other}_auc{suffix}"] = ci_over_seeds(list(diff))
        # the quantized cache's cost, paired on the same users and labels (first seed)
        with torch.no_grad():
            exact = torch.as_tensor(folded0[b].summaries)
            q, s = quantize(folded0[b].summaries)
            cand = torch.as_tensor(test.candidates)
            p_exact = torch.sigmoid(vista0.score_summary(exact, cand)).numpy()
            p_int8 = torch.sigmoid(vista0.score_summary(torch.as_tensor(dequantize(q, s)),
                                                        cand)).numpy()  # fmt: skip
        entry["int8_auc_loss"] = auc(p_exact, test.labels) - auc(p_int8, test.labels)
        entry["int8_max_abs_prob_change"] = float(np.abs(p_exact - p_int8).max())
        out_buckets.append(entry)
    summary = {
        "data": str(data) if data is not None else "synthetic", "models": list(KINDS),
        "seeds": seeds, "train_users": len(train_set),
        "train_length": int(train_set.history.shape[1]),
        "model_version": model_version(vista0), "summary_tokens": tokens, "dim": dim,
        "last_n": last_n, "quant": quant, "buckets": out_buckets,
        "seconds": round(seconds, 1),
    }  # fmt: skip

    # 5. the run directory: metrics, scores, the model, the cache of the evaluation users
    with Run.create(run.out, "recsys-train", config, force=run.force, inputs=inputs) as out:
        out.write_table("metrics", metrics)
        out.write_table("scores", pd.concat(scores, ignore_index=True))
        _save_model(vista0, out.path / "models" / "vista", vocab)
        cache = SummaryCache.create(out.path / "cache", vista0, quant=quant)
        for b, (_, ids) in enumerate(buckets):
            f = folded0[b]
            if world is not None:  # a synthetic history has no clock: positions are its times
                users_b, last_ts = ids, f.counts - 1
            else:
                users_b, last_ts = test_set.take(ids).users, test_set.take(ids).last_ts
            cache.put(list(users_b), f.summaries, f.states, f.counts, last_ts)
        out.write_summary(summary)
        from rotelab.report import write_report

        write_report(out.path)
    return RecsysRun(summary, out.path)


def format_train(summary: dict[str, Any]) -> str:
    """Per bucket: AUC (mean over seeds) of each model, the oracle's, VISTA's int8 cost."""
    lines = [f"{'bucket':>10}  {'users':>5}  {'vista':>7}  {'full':>7}  {'lastn':>7}  "
             f"{'oracle':>7}  {'long: vista':>11}  {'lastn':>7}  {'int8 loss':>9}"]  # fmt: skip
    for b in summary["buckets"]:
        a, al = b["auc"], b.get("auc_long_users")

        def f(x: Any) -> str:
            return (
                "    n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:7.4f}"
            )

        lines.append(
            f"{b['bucket']:>10}  {b['users']:>5}  {f(a['vista']['mean'])}  {f(a['full']['mean'])}  "
            f"{f(a['lastn']['mean'])}  {f(b.get('oracle_auc'))}  "
            f"{f(al['vista']['mean']) if al else '    n/a':>11}  "
            f"{f(al['lastn']['mean']) if al else '    n/a'}  {b['int8_auc_loss']:9.4f}"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- serve
def serve(
    model_dir: str | os.PathLike,
    candidates: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    run: RunOptions = RunOptions(),
) -> RecsysRun:
    """Score ``user,item[,label]`` candidates from the summary cache alone.

    A user without a cached summary is scored from the empty-history summary (the seed tokens:
    what VISTA's stage 1 gives for no history), and counted in ``users_without_summary``.

    Args:
        model_dir: a ``rotelab recsys train`` run (or its ``models/vista``).
        candidates: CSV/Parquet with ``user,item`` (and ``label`` for AUC/NE).
        cache: the summary cache; default ``<model_dir>/cache``.
    """
    run.check()
    if run.resume:
        raise RotelabError("rotelab recsys serve cannot resume a run; start again (--force)")
    model, vocab = load_vista(model_dir)
    cache_dir = Path(cache) if cache is not None else Path(model_dir) / "cache"
    store = SummaryCache.open(cache_dir, model_version(model))
    frame = read_candidates(candidates, {v: i + 1 for i, v in enumerate(vocab)})
    inputs = (model_dir, candidates, cache_dir)
    Run.check(run.out, force=run.force, inputs=inputs)

    t0 = time.perf_counter()
    users = frame["user"].astype(str).to_numpy()
    uniq, inverse = np.unique(users, return_inverse=True)
    summaries, found = store.get(list(uniq))
    with torch.no_grad():
        empty = model.stage1.summarize(torch.zeros(1, model.cfg.heads, model.stage1.dh,
                                                   model.stage1.dh), torch.zeros(1))  # fmt: skip
        summ = torch.as_tensor(summaries)
        summ[torch.as_tensor(~found)] = empty[0]
        items = torch.as_tensor(frame["item_id"].to_numpy(dtype=np.int64, copy=True))
        # one candidate per row: (N, 1) candidates against their user's (N, k, D) summary
        probs = torch.sigmoid(model.score_summary(summ[inverse], items[:, None]))[:, 0].numpy()
    seconds = time.perf_counter() - t0
    frame = frame.assign(prob=probs)
    summary: dict[str, Any] = {
        "candidates": len(frame), "users": len(uniq), "users_without_summary": int((~found).sum()),
        "model_version": model_version(model), "cache": str(cache_dir),
        "seconds": round(seconds, 4),
        "candidates_per_second": round(len(frame) / max(seconds, 1e-9), 1),
    }  # fmt: skip
    if "label" in frame:
        summary.update(_metrics(probs, frame["label"].to_numpy()))
    config = {"model": model_dir, "candidates": candidates, "cache": cache_dir, "seed": run.seed}
    with Run.create(run.out, "recsys-serve", config, force=run.force, inputs=inputs) as out:
        out.write_table("scores", frame.drop(columns=["item_id"]))
        out.write_summary(summary)
    return RecsysRun(summary, out.path)


# ---------------------------------------------------------------------------- refresh, compact
def refresh(
    model_dir: str | os.PathLike,
    log: str | os.PathLike,
    *,
    cache: str | os.PathLike | None = None,
    compact: bool = False,
) -> dict[str, Any]:
    """Fold a log of new events into the summary cache, user by user (``rotelab recsys refresh``).

    Each user's new items continue the stage-1 state the cache holds (a sum over the history),
    so the cost is the new events only and the old history is never read; users the cache does
    not know start from an empty history. The cache is a store, updated where it is: each write
    is a new segment and a new index, made current by an atomic rename of the manifest, so a
    kill leaves the previous cache whole.

    Args:
        model_dir: a ``rotelab recsys train`` run (or its ``models/vista``): the model the cache
            was built by.
        log: the new events, ``user,item,timestamp`` CSV/Parquet sorted by user and time; every
            user's events must start no earlier than the history the cache holds for them.
        cache: the summary cache; default ``<model_dir>/cache``.
        compact: afterwards rewrite the live rows into one segment (:meth:`SummaryCache.compact`).

    Returns:
        Users refreshed (and how many were new to the cache), events folded, segments on disk.
    """
    model, vocab = load_vista(model_dir)
    cache_dir = Path(cache) if cache is not None else Path(model_dir) / "cache"
    store = SummaryCache.open(cache_dir, model_version(model))
    events = read_log(log, vocab={v: i + 1 for i, v in enumerate(vocab)}).frame
    t0 = time.perf_counter()
    new: dict[object, tuple[list[np.ndarray], tuple[int, int]]] = {}
    for user, rows in events.groupby("user", sort=False):
        ts = rows["timestamp"].to_numpy()
        new[str(user)] = (
            [rows["item_id"].to_numpy(dtype=np.int64, copy=True)],
            (int(ts[0]), int(ts[-1])),
        )
    known = sum(u in store for u in new)
    store.refresh(model, new)
    if compact:
        store.compact()
    return {
        "cache": str(cache_dir), "users": len(new), "new_users": len(new) - known,
        "events": len(events), "cached_users": len(store),
        "segments": sum(n is not None for n in store.manifest["segments"]),
        "compacted": compact, "seconds": round(time.perf_counter() - t0, 4),
    }  # fmt: skip


def compact(model_dir: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> dict:
    """Rewrite a summary cache's live rows into one segment (``rotelab recsys compact``): each
    refresh appends a segment, and the rows it replaced stay on disk until this."""
    model, _ = load_vista(model_dir)
    cache_dir = Path(cache) if cache is not None else Path(model_dir) / "cache"
    store = SummaryCache.open(cache_dir, model_version(model))
    before = sum(n is not None for n in store.manifest["segments"])
    store.compact()
    after = sum(n is not None for n in store.manifest["segments"])
    return {"cache": str(cache_dir), "cached_users": len(store), "segments_before": before,
            "segments": after}  # fmt: skip


# -------------------------------------------------------------------------------------- bench
def bench(
    *,
    lengths: str | list[int] = "1000,10000,100000",
    candidates: int = 64,
    cache_users: int = 2000,
    stream_length: int = 1_000_000,
    repeats: int = 5,
    run: RunOptions = RunOptions(),
) -> RecsysRun:
    """Serving costs of untrained models (weights do not change them), one table per run.

    Per history length: seconds per candidate of VISTA (cache read + stage 2), full attention
    and last-N, stage-1 seconds per 1k items; cache reads per second at batch 1 and 256 from a
    cache of ``cache_users``; the peak memory of summarizing ``stream_length`` items in chunks
    (``0`` skips it).
    """
    run.check()
    if run.resume:
        raise RotelabError("rotelab recsys bench cannot resume a run; start again (--force)")
    ls = parse_lengths(lengths, "--lengths")
    _check_positive(candidates=candidates, cache_users=cache_users, repeats=repeats)
    if stream_length < 0:
        raise RotelabError(f"--stream-length must be >= 0, got {stream_length}")
    config = {"lengths": ls, "candidates": candidates, "cache_users": cache_users,
              "stream_length": stream_length, "repeats": repeats, "seed": run.seed}  # fmt: skip
    Run.check(run.out, force=run.force)

    import tempfile

    world = SyntheticWorld(SyntheticSpec(seed=run.seed))
    models = {k: build_model(ModelConfig(k, world.n_items, world.spec.n_topics), world.categories,
                             run.seed) for k in KINDS}  # fmt: skip
    vista: Vista = models["vista"]  # type: ignore[assignment]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = SummaryCache.create(Path(tmp) / "cache", vista)
        # the users timed below, with their real summaries; filler users make the store's size
        with torch.no_grad():
            for i, L in enumerate(ls):
                s, n = vista.fold_stream(world.iter_history(i, L))
                cache.put([i], vista.stage1.summarize(s, n).numpy(), s.reshape(1, -1).numpy(),
                          n.numpy().astype(np.int64), np.zeros(1, np.int64))  # fmt: skip
        filler = np.random.default_rng(run.seed).normal(size=(cache_users, vista.cfg.seeds,
                                                               vista.cfg.dim))  # fmt: skip
        cache.put(list(range(len(ls), len(ls) + cache_users)), filler,
                  np.zeros((cache_users, cache.state_width)), np.zeros(cache_users, np.int64),
                  np.zeros(cache_users, np.int64))  # fmt: skip
        cache = SummaryCache.open(cache.path, model_version(vista))
        for i, L in enumerate(ls):
            row: dict[str, Any] = {"length": L}
            for kind, model in models.items():
                row[f"{kind}_us_per_candidate"] = 1e6 * per_candidate_seconds(
                    model, world, i, L, candidates, cache=cache, repeats=repeats
                )
            row["stage1_ms_per_1k_items"] = 1e3 * stage1_seconds_per_1k(vista, world, i, L)
            rows.append(row)
        reads = {f"cache_reads_per_s_batch_{b}": cache_reads_per_second(cache, b, run.seed)
                 for b in (1, 256)}  # fmt: skip
    table = pd.DataFrame(rows)
    first, last = table.iloc[0], table.iloc[-1]
    growth = {f"{k}_growth": float(last[f"{k}_us_per_candidate"] / first[f"{k}_us_per_candidate"])
              for k in KINDS}  # fmt: skip
    summary: dict[str, Any] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "lengths": ls, "candidates": candidates,
        "growth_from": int(first["length"]), "growth_to": int(last["length"]), **growth,
        "cache_users": cache_users + len(ls), **reads,
        "table": table.to_dict(orient="records"),
    }  # fmt: skip
    if stream_length:
        summary["streaming"] = streaming_peak_rss(stream_length)
    with Run.create(run.out, "recsys-bench", config, force=run.force) as out:
        out.write_table("timings", table)
        out.write_summary(summary)
    return RecsysRun(summary, out.path)


def format_bench(summary: dict[str, Any]) -> str:
    """The timing table ``rotelab recsys bench`` and bench/recsys.py print."""
    lines = [
        f"CPU capability {summary['cpu_capability']}, {summary['threads']} thread(s), "
        f"{summary['candidates']} candidates per request; times in µs per candidate",
        f"{'length':>8}  {'vista':>9}  {'full':>10}  {'lastn':>9}  {'stage-1 ms/1k items':>20}",
    ]
    for r in summary["table"]:
        lines.append(
            f"{r['length']:>8}  {r['vista_us_per_candidate']:9.1f}  "
            f"{r['full_us_per_candidate']:10.1f}  {r['lastn_us_per_candidate']:9.1f}  "
            f"{r['stage1_ms_per_1k_items']:20.3f}"
        )
    lines.append(
        f"growth {summary['growth_from']} -> {summary['growth_to']}: vista "
        f"{summary['vista_growth']:.2f}x, full {summary['full_growth']:.1f}x, lastn "
        f"{summary['lastn_growth']:.2f}x"
    )
    lines.append(
        f"cache reads/s ({summary['cache_users']} users): batch 1 "
        f"{summary['cache_reads_per_s_batch_1']:.0f}, batch 256 "
        f"{summary['cache_reads_per_s_batch_256']:.0f}"
    )
    if "streaming" in summary:
        s = summary["streaming"]
        lines.append(
            f"streaming summarization of {s['items']} items: peak RSS {s['peak_mib']:.0f} MiB "
            f"(+{s['added_mib']:.0f} MiB over imports), {s['seconds']:.1f} s"
        )
    return "\n".join(lines)

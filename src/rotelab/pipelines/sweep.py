"""``rotelab sweep``: Hubble-style grids (Wei et al. 2025), each cell trained then audited.

A cell is one (count, corpus size, phase, seed): a model trained from scratch with
:func:`rotelab.pipelines.train.train_model` on the organism world of that seed and background size,
in which the world's items (of the chosen kinds) are split round-robin into members inserted
``count`` times in ``phase`` and never-inserted controls. A larger corpus trains proportionally
longer (the same number of epochs over the background), so a fixed count is a smaller share of
the training tokens: Hubble's dilution, frequency = count / corpus tokens. Each cell is audited
at its checkpoints and at the end with the one-pass audit: strict greedy extraction of each item's
sensitive span (every token the argmax) and the loss attack's membership AUC (members against the
controls, lower loss = member).

The run directory gets ``results/items`` (one row per cell, checkpoint and item),
``results/cells`` (one row per cell and checkpoint: extraction with its Wilson CI, loss-MIA AUC,
frequency), ``summary.json`` (the grid, per-cell rows and the seed means with t intervals) and
``report.html`` (extraction and AUC against count per corpus size and against frequency, and
early- vs late-inserted items along the checkpoints). Every cell is written as a part when done,
so ``--resume`` continues with the cells not yet done. Cells run in ``workers`` local processes
(each on one thread, ``OMP_NUM_THREADS=1``); one worker runs them in this process, on one thread
too, so both give the same numbers. With ``executor="ray"`` each cell is a Ray task asking for one
CPU, on a local Ray instance of ``workers`` CPUs or on the cluster at ``address``; a cell trains
in a temporary directory of the node it runs on and returns its rows, so the numbers are the same
as the local executor's (every cell is seeded and runs on one thread wherever it runs).

Example:
    >>> result = sweep(counts=(1, 4, 16), corpus_tokens=(20_000, 80_000), seeds=(0, 1, 2),
    ...                run=RunOptions(out="runs/sweep"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.machine import cpu_capability
from rotelab.options import RunOptions
from rotelab.organism import Kind, Profile
from rotelab.pipelines.train import ModelSize, TrainSettings, train_model
from rotelab.runs import Run
from rotelab.stats import auc_score, wilson_interval
from rotelab.train import phase_steps

__all__ = ["EXECUTORS", "SweepConfig", "SweepResult", "cell_key", "format_table", "sweep"]

#: Where cells run: ``local`` (this process or local worker processes) or ``ray``.
EXECUTORS = ("local", "ray")
#: Seconds to wait for a Ray address to answer before the sweep is refused.
RAY_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SweepConfig:
    """What every cell shares: the world profile, the item kinds, the model and the run length.

    ``steps`` is the run length at the smallest corpus size; larger corpora train
    ``steps * size / smallest`` steps. ``checkpoints``: audits at these fractions of each run
    (besides the end).
    """

    profile: str = "tiny"
    kinds: tuple[str, ...] = ("secret", "bio")
    steps: int = 250
    batch_size: int = 16
    lr: float = 3e-3
    precision: str = "fp32"
    size: ModelSize = ModelSize(layers=2, hidden=96, heads=4, intermediate=256, context=64)
    checkpoints: tuple[float, ...] = (0.25, 0.5, 0.75)


@dataclass
class SweepResult:
    """The cell table, the summary and the run directory."""

    cells: pd.DataFrame
    summary: dict[str, Any]
    run_dir: Path


def cell_key(count: int, tokens: int, phase: str, seed: int) -> str:
    """The cell's part key (sorts by count, then corpus size, phase and seed)."""
    return f"c{count:04d}-t{tokens:09d}-p{phase.replace(':', '_')}-s{seed:05d}"


def _check(cfg, counts, corpus_tokens, phases, seeds, workers) -> list[tuple]:
    if cfg.profile not in (p.value for p in Profile):
        raise RotelabError(f"unknown profile {cfg.profile!r}; use tiny or default")
    kinds = {k.value for k in Kind}
    bad = [k for k in cfg.kinds if k not in kinds]
    if bad or not cfg.kinds:
        raise RotelabError(f"--kinds {bad or ''}: use some of {sorted(kinds)}")
    for name, values in (("--counts", counts), ("--corpus-tokens", corpus_tokens),
                         ("--phases", phases), ("--seeds", seeds)):  # fmt: skip
        if not values:
            raise RotelabError(f"{name} is empty")
        if len(set(values)) != len(values):
            raise RotelabError(f"{name} repeats a value; give distinct values")
    if any(c < 1 for c in counts):
        raise RotelabError("--counts must be >= 1 (every cell has its count-0 controls)")
    if any(t < 1000 for t in corpus_tokens):
        raise RotelabError("--corpus-tokens must be at least 1000")
    if any(not 0 <= s < 2**32 for s in seeds):
        raise RotelabError("--seeds must be in 0 .. 2^32 - 1")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise RotelabError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.steps < 4 or workers < 1:
        raise RotelabError("--steps must be >= 4 and --workers >= 1")
    for ph in phases:
        try:
            phase_steps(ph, cfg.steps)
        except ValueError as exc:
            raise RotelabError(f"--phases: {exc}") from None
    # Every cell must fit before the first is trained: the world's items per kind do not depend
    # on its seed or size, and half of them (round-robin) are members.
    from rotelab.organism import COUNTS
    from rotelab.organism.world import PROFILES

    prof = PROFILES[Profile(cfg.profile)]
    per_kind = prof.items_per_cell * len(COUNTS) + prof.phase_items_per_cell * 2 * (len(COUNTS) - 1)
    members = (per_kind // 2) * len(cfg.kinds)
    cap = cfg.batch_size // 2
    for c in counts:
        for t in corpus_tokens:
            steps = _cell_steps(cfg, t, min(corpus_tokens))
            for ph in phases:
                lo, hi = phase_steps(_scale_phase(ph, steps, cfg.steps), steps)
                if members * c > cap * (hi - lo):
                    raise RotelabError(
                        f"cell count {c}, corpus {t}, phase {ph}: {members} members x {c} = "
                        f"{members * c} insertion rows do not fit {hi - lo} steps x {cap} rows; "
                        "use more --steps, fewer --kinds or lower --counts"
                    )
    return [(c, t, p, s) for c in counts for t in corpus_tokens for p in phases for s in seeds]


def _cell_steps(cfg: SweepConfig, tokens: int, smallest: int) -> int:
    return max(4, round(cfg.steps * tokens / smallest))


def _scale_phase(phase: str, steps: int, base: int) -> str:
    """A step window given for the smallest corpus, stretched with the run (same fraction)."""
    if ":" not in phase:
        return phase
    lo, hi = (int(x) for x in phase.split(":"))
    a = round(lo * steps / base)
    return f"{a}:{max(a + 1, round(hi * steps / base))}"


def _items_file(profile: str, seed: int, tokens: int, kinds: Sequence[str], path: Path) -> None:
    """The world's items of ``kinds`` as an insertions file (their ids, kinds, secrets)."""
    import json

    from rotelab.organism import OrganismSpec, generate_world

    world = generate_world(OrganismSpec(Profile(profile), seed, tokens))
    with open(path, "w", encoding="utf-8") as f:
        for it in world.items:
            if it["kind"] in kinds:
                row = {"text": it["text"], "id": it["item_id"], "kind": it["kind"]}
                if it["span_chars"] is not None:
                    row["secret"] = it["text"][it["span_chars"][0] : it["span_chars"][1]]
                f.write(json.dumps(row) + "\n")


def run_cell(cfg: SweepConfig, count: int, tokens: int, phase: str, seed: int, smallest: int,
             workdir: str | None) -> pd.DataFrame:  # fmt: skip
    """Train and audit one cell on one thread; one row per checkpoint and item.

    ``workdir``: where the cell's model is trained (and removed); ``None``: the system's temporary
    directory (a Ray node's own, which need not see the run directory).
    """
    import torch

    from rotelab.lm import LM

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in a worker and in this process
    try:
        steps = _cell_steps(cfg, tokens, smallest)
        ckpts = tuple(sorted({max(1, min(steps - 1, round(f * steps))) for f in cfg.checkpoints}))
        root = Path(tempfile.mkdtemp(prefix="cell-", dir=workdir))
        try:
            items = root / "items.jsonl"
            _items_file(cfg.profile, seed, tokens, cfg.kinds, items)
            # The world of this seed and size; its own items (of other kinds) are not inserted.
            res = train_model(
                root / "model", world=cfg.profile, world_seed=seed, corpus_tokens=tokens,
                insertions=items, counts=(0, count),
                phases=(_scale_phase(phase, steps, cfg.steps),), size=cfg.size,
                settings=TrainSettings(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                       precision=cfg.precision, seed=seed, checkpoints=ckpts),
                progress=False,
            )  # fmt: skip
            led = pd.read_parquet(res.path / "ledger.parquet")
            rows = []
            points = [(c, res.path / "checkpoints" / f"step-{c:06d}") for c in ckpts]
            for done, path in points + [(steps, res.path)]:
                lm = LM.load(path, device="cpu", dtype="float32")
                seqs = [list(p) + list(s) for p, s in zip(led.prefix_tokens, led.suffix_tokens)]
                scores = lm.score(seqs, targets_from=[len(p) for p in led.prefix_tokens])
                for r, sc in zip(led.itertuples(index=False), scores):
                    rows.append({
                        "cell": cell_key(count, tokens, phase, seed), "count": count,
                        "corpus_tokens": tokens, "phase": phase, "seed": seed, "steps": steps,
                        "step": done, "fraction": done / steps, "item_id": r.item_id,
                        "kind": r.kind, "member": bool(r.count > 0),
                        "extracted": bool(sc.argmax_match.all()),
                        "token_match": float(sc.argmax_match.mean()),
                        "loss": float(-sc.logprobs.mean()),
                        "train_tokens": int(res.summary["train_tokens"]),
                    })  # fmt: skip
            return pd.DataFrame(rows)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    finally:
        torch.set_num_threads(before)


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def cell_table(items: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and checkpoint: members' extraction (Wilson CI), controls' extraction,
    loss-MIA AUC, frequency (count / corpus tokens)."""
    rows = []
    keys = ["cell", "count", "corpus_tokens", "phase", "seed", "step", "fraction", "steps"]
    for key, g in items.groupby(keys, sort=True):
        m, c = g[g.member], g[~g.member]
        k, n = int(m.extracted.sum()), len(m)
        lo, hi = wilson_interval(k, n)
        rows.append({
            **dict(zip(keys, key)), "members": n, "controls": len(c), "extraction": k / n,
            "extraction_lo": lo, "extraction_hi": hi,
            "control_extraction": float(c.extracted.mean()) if len(c) else float("nan"),
            "loss_auc": auc_score(-g["loss"].to_numpy(), g["member"].to_numpy()),
            "member_loss": float(m.loss.mean()), "control_loss": float(c.loss.mean()),
            "frequency": key[1] / key[2], "train_tokens": int(g.train_tokens.iloc[0]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _t_interval(values: np.ndarray) -> tuple[float, float, float]:
    from scipy import stats

    values = values[np.isfinite(values)]
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def seed_means(cells: pd.DataFrame) -> pd.DataFrame:
    """Final-checkpoint cells averaged over seeds: mean and 95% t interval of extraction and AUC."""
    final = cells[cells.step == cells.steps]
    rows = []
    for (count, tokens, phase), g in final.groupby(["count", "corpus_tokens", "phase"]):
        e, elo, ehi = _t_interval(g.extraction.to_numpy(float))
        a, alo, ahi = _t_interval(g.loss_auc.to_numpy(float))
        rows.append({"count": count, "corpus_tokens": tokens, "phase": phase, "seeds": len(g),
                     "frequency": count / tokens, "extraction": e, "extraction_lo": elo,
                     "extraction_hi": ehi, "loss_auc": a, "loss_auc_lo": alo,
                     "loss_auc_hi": ahi})  # fmt: skip
    return pd.DataFrame(rows)


def sweep(
    counts: Sequence[int] = (1, 4, 16, 64),
    corpus_tokens: Sequence[int] = (45_000,),
    phases: Sequence[str] = ("all",),
    seeds: Sequence[int] = (0,),
    *,
    config: SweepConfig = SweepConfig(),
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    run: RunOptions = RunOptions(),
) -> SweepResult:
    """Train and audit every cell of the grid; write a run directory (see the module docstring).

    Args:
        counts: insertion counts (each cell also has never-inserted controls).
        corpus_tokens: background corpus sizes (dilution).
        phases: ``all``, ``first``, ``second`` or step windows ``LO:HI`` (of the smallest
            corpus's run; stretched with longer runs).
        seeds: world and training seeds.
        config: profile, item kinds, model size, steps, checkpoints.
        workers: local worker processes (each ``OMP_NUM_THREADS=1``); 1 runs in this process.
            With ``executor="ray"`` and no ``address``: the local Ray instance's CPUs.
        executor: ``local`` or ``ray`` (needs the ``ray`` extra); the same numbers either way.
        address: a Ray cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``) for the ``ray``
            executor; ``None`` starts a local Ray instance (or uses one this process started).
        run: output directory, ``resume`` (cells already written are skipped), ``force``.
    """
    run.check()
    Run.check(run.out, resume=run.resume, force=run.force)
    grid = _check(config, list(counts), list(corpus_tokens), list(phases), list(seeds), workers)
    _check_executor(executor, address)
    # Connected before the run directory exists: an address that does not answer leaves nothing.
    session = _RaySession.connect(address, workers) if executor == "ray" else None
    try:
        return _sweep(counts, corpus_tokens, phases, seeds, grid, config, workers, session, run)
    finally:
        if session is not None:
            session.close()


def _sweep(counts, corpus_tokens, phases, seeds, grid, config, workers, session, run):
    smallest = min(corpus_tokens)
    arguments = {"counts": list(counts), "corpus_tokens": list(corpus_tokens),
                 "phases": list(phases), "seeds": list(seeds), **asdict(config)}  # fmt: skip
    t0 = time.perf_counter()
    with Run.create(run.out, "sweep", arguments, resume=run.resume, force=run.force) as out:
        todo = [g for g in grid if not out.has_part("items", cell_key(*g))]
        work = out.path / "work"
        work.mkdir(exist_ok=True)
        done = 0
        if session is not None:
            for g, frame in session.run(config, todo, smallest):
                out.write_part("items", cell_key(*g), frame)
                done += 1
                _progress(run, done, len(todo), g)
        elif workers == 1:
            for g in todo:
                out.write_part("items", cell_key(*g), run_cell(config, *g, smallest, str(work)))
                done += 1
                _progress(run, done, len(todo), g)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                     mp_context=_spawn()) as pool:  # fmt: skip
                futures = {pool.submit(run_cell, config, *g, smallest, str(work)): g for g in todo}
                for fut in as_completed(futures):
                    g = futures[fut]
                    out.write_part("items", cell_key(*g), fut.result())
                    done += 1
                    _progress(run, done, len(todo), g)
        shutil.rmtree(work, ignore_errors=True)
        items = out.read_table("items")
        cells = cell_table(items)
        out.write_table("cells", cells)
        means = seed_means(cells)
        summary = {
            "cells": len(grid), "cells_run_now": len(todo), "workers": workers,
            "executor": "local" if session is None else "ray",
            "seconds": round(time.perf_counter() - t0, 1), "cpu_capability": cpu_capability(),
            "grid": {"counts": list(counts), "corpus_tokens": list(corpus_tokens),
                     "phases": list(phases), "seeds": list(seeds)},
            "audit": "one-pass: strict greedy extraction of the sensitive span; loss-MIA AUC "
                     "members vs never-inserted controls",
            "final": _records(cells[cells.step == cells.steps]),
            "seed_means": _records(means),
        }  # fmt: skip
        out.write_summary(summary)
    try:
        from rotelab.report import write_report

        write_report(out.path)
    except Exception as exc:  # noqa: BLE001 - the numbers are written; a report failure is not
        summary["report_error"] = str(exc)
    return SweepResult(cells, summary, out.path)


def _check_executor(executor: str, address: str | None) -> None:
    if executor not in EXECUTORS:
        raise RotelabError(f"--executor {executor!r}: use local or ray")
    if address is not None and executor != "ray":
        raise RotelabError("--address is a Ray cluster's; it applies with --executor ray only")
    if address is not None and not address.strip():
        raise RotelabError("--address is empty; give HOST:PORT of a Ray cluster, or leave it out")


def _ray_cell(cfg: SweepConfig, g: tuple, smallest: int) -> pd.DataFrame:
    """One cell as a Ray task: trained in the node's own temporary directory."""
    _worker_init()
    return run_cell(cfg, *g, smallest, None)


class _RaySession:
    """A connection to Ray for one sweep: a local instance it started (shut down after), a
    cluster at an address (disconnected after), or a Ray this process had already started (left
    as it was)."""

    def __init__(self, ray, owned: bool) -> None:
        self.ray, self.owned = ray, owned

    @classmethod
    def connect(cls, address: str | None, workers: int) -> _RaySession:
        try:
            import ray
        except ImportError:
            raise RotelabError(
                "--executor ray needs Ray: install the ray extra (pip install 'rotelab[ray]')"
            ) from None
        if ray.is_initialized():
            if address is not None:
                raise RotelabError(
                    "Ray is already running in this process; leave --address out to use it"
                )
            return cls(ray, owned=False)
        import logging

        # Each cell runs on one thread wherever it runs (the same arithmetic as the local
        # executor); the numbers do not depend on the node.
        common = dict(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, log_to_driver=False,
                      logging_level=logging.ERROR)  # fmt: skip
        if address is None:
            try:
                ray.init(num_cpus=workers, include_dashboard=False,
                         object_store_memory=256 * 2**20, **common)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - Ray's own failures become one line
                raise RotelabError(f"could not start a local Ray instance: {_first(exc)}") from None
            return cls(ray, owned=True)
        if address != "auto":
            _check_answers(address)
        # Something listens there: Ray's own connection loop (about a second a try) gets as long
        # as the probe had, and its C++ retry messages are kept off the terminal (one line).
        wait = os.environ.get("RAY_gcs_server_port_wait_time_s")
        os.environ["RAY_gcs_server_port_wait_time_s"] = str(max(1, round(RAY_CONNECT_TIMEOUT_S)))
        try:
            with _quiet_stderr():
                ray.init(address=address, **common)
        except Exception as exc:  # noqa: BLE001
            raise RotelabError(
                f"the Ray address {address} does not answer as a Ray cluster: {_first(exc)}"
            ) from None
        finally:
            if wait is None:
                os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
            else:
                os.environ["RAY_gcs_server_port_wait_time_s"] = wait
        return cls(ray, owned=True)

    def run(self, cfg: SweepConfig, todo: list[tuple], smallest: int):
        """Yield ``(cell, rows)`` as the cells finish (each written at once: resumable)."""
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
        pending = {task.remote(cfg, g, smallest): g for g in todo}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                g = pending.pop(ready[0])
                yield g, ray.get(ready[0])
        finally:
            for ref in pending:  # a failed cell stops the sweep; the others are not left running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()


def _check_answers(address: str) -> None:
    """Refuse at once (one line) an address where nothing listens, before Ray's long retries."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RotelabError(f"--address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RotelabError(
            f"the Ray address {address} does not answer ({why} within "
            f"{RAY_CONNECT_TIMEOUT_S:g} s); start the cluster (ray start --head) or fix --address"
        ) from None


class _quiet_stderr:  # noqa: N801 - used like a function
    """Send file descriptor 2 (where Ray's C++ core logs) to a discarded file for a while."""

    def __enter__(self) -> None:
        import sys

        sys.stderr.flush()
        self._saved = os.dup(2)
        self._sink = tempfile.TemporaryFile()
        os.dup2(self._sink.fileno(), 2)

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._sink.close()


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _progress(run: RunOptions, done: int, total: int, g: tuple) -> None:
    if run.progress:
        import sys

        print(f"  cell {done}/{total}: count {g[0]}, corpus {g[1]}, phase {g[2]}, seed {g[3]}",
              file=sys.stderr)  # fmt: skip


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]


def format_table(summary: dict[str, Any]) -> str:
    """Seed means per (count, corpus size, phase): what ``rotelab sweep`` prints."""
    lines = [f"{'count':>6} {'corpus':>9} {'phase':>8} {'seeds':>5} {'extraction [95% CI]':>26} "
             f"{'loss AUC [95% CI]':>24}"]  # fmt: skip

    def ci(r, k):
        lo, hi = r[f"{k}_lo"], r[f"{k}_hi"]
        band = "" if lo is None else f" [{lo:.2f}, {hi:.2f}]"
        return f"{r[k]:.3f}{band}"

    for r in summary["seed_means"]:
        lines.append(f"{r['count']:>6} {r['corpus_tokens']:>9} {r['phase']:>8} {r['seeds']:>5} "
                     f"{ci(r, 'extraction'):>26} {ci(r, 'loss_auc'):>24}")  # fmt: skip
    return "\n".join(lines)

"""``rotelab bounds``: robust-memorization parameter bounds, and the certified empirical search.

Kim, Moon and Yun 2025 (NeurIPS, arXiv:2510.24643) bound the parameters a ReLU net needs to
memorize ``N`` epsilon-separated points in ``R^d`` robustly within L2 balls of radius
``rho * epsilon``. Without ``search`` this writes the bound curves (:mod:`rotelab.theory.robust`)
against ``rho`` for the given ``N, d``; with ``search`` it also builds a dataset (synthetic or
scikit-learn digits), and for ``rho = 0`` (plain memorization) and every ``rho`` of the grid,
for each seed, finds the smallest network whose robustness every training ball has a sound
certificate for (:func:`rotelab.theory.minimal_network`).

Every input is checked before the dataset is drawn or the run directory exists.

Example:
    >>> r = bounds(100, 2, [0.1, 0.5, 0.9], search=True, run=RunOptions("runs/b"))  # doctest: +SKIP
    >>> r.summary["spearman"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError
from rotelab.options import RunOptions
from rotelab.runs import Run, read_json, read_table
from rotelab.theory import (
    UPPER_CONSTANT,
    SearchConfig,
    architectures,
    check_digit_labels,
    check_problem,
    check_rho,
    digits,
    load_points,
    lower_bound,
    minimal_network,
    non_robust_order,
    synthetic,
    upper_bound,
    upper_regime,
)

__all__ = [
    "BoundsRun",
    "bound_curves",
    "bounds",
    "format_table",
    "parse_floats",
    "parse_ints",
    "pool",
]

DATA_KINDS = ("synthetic", "digits")
#: the search table's columns counting the balls each verifier proved
PROOFS = [f"proved_by_{m}" for m in ("center", "ibp", "crown", "bab", "milp")]
#: rho values of the drawn curves (log-spaced: the regimes' boundaries are small numbers)
CURVE_POINTS = 200


@dataclass
class BoundsRun:
    """What :func:`bounds` returns: the summary, the tables and the run directory."""

    summary: dict[str, Any]
    curves: pd.DataFrame
    search: pd.DataFrame | None
    run_dir: Path


def parse_floats(text: str | Sequence[float], flag: str) -> list[float]:
    """``"0.1,0.5"`` (or a list) -> floats; one line for anything else."""
    if not isinstance(text, str):
        return [float(v) for v in text]
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise RotelabError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise RotelabError(f"{flag} is empty; give at least one value")
    return values


def parse_ints(text: str | Sequence[int], flag: str) -> list[int]:
    """``"4,8,16"`` (or a list) -> positive ints; one line for anything else."""
    values = text if not isinstance(text, str) else [p for p in text.split(",") if p.strip()]
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise RotelabError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not out or min(out) < 1:
        raise RotelabError(f"{flag} needs whole numbers >= 1, got {text!r}")
    return out


def bound_curves(n: int, d: int, classes: int = 2, rhos: Sequence[float] | None = None):
    """Lower bound (constant 1), upper bound (constant :data:`UPPER_CONSTANT`, so that it is
    never below the lower one) and regime at each ``rho`` (default: a log grid)."""
    grid = np.geomspace(1e-4, 0.999, CURVE_POINTS) if rhos is None else np.asarray(rhos, float)
    rows = []
    for rho in grid:
        reg = upper_regime(n, d, float(rho))
        rows.append({
            "rho": float(rho), "lower": lower_bound(n, d, float(rho), classes=classes),
            "upper": upper_bound(n, d, float(rho), classes=classes, constant=UPPER_CONSTANT),
            "regime": reg.name,
            "upper_theorem": reg.theorem,
        })  # fmt: skip
    return pd.DataFrame(rows)


def bounds(
    n: int | None,
    d: int | None,
    rhos: str | Sequence[float],
    *,
    classes: int = 2,
    search: bool = False,
    data: str = "synthetic",
    separation: float = 0.03,
    widths: str | Sequence[int] = "2,3,4,6,8,12,16,24,32,48,64",
    depths: str | Sequence[int] = "1,2",
    seeds: int = 1,
    epochs: int = 2000,
    data_seed: int = 0,
    digit_labels: str | Sequence[int] | None = None,
    run: RunOptions = RunOptions(),
    progress=None,
) -> BoundsRun:
    """Bound curves for ``N, d`` and, with ``search``, the certified minimal networks.

    Args:
        n: points ``N`` (default 100); d: dimension (default 2; digits: 64); a file of points
            brings its own; rhos: the ``rho`` grid.
        classes: labels (synthetic: drawn at random; digits: digits ``0 .. classes-1``).
        search: run the empirical search (minutes; see the README for sizes).
        data: ``synthetic``, ``digits`` or a ``.csv``/``.npz`` file of labelled points (see
            :func:`rotelab.theory.load_points`); separation: the synthetic minimum epsilon.
        widths, depths: the architectures tried, smallest parameter count first.
        seeds: training seeds ``run.seed .. run.seed + seeds - 1``.
        data_seed: the seed of the dataset (synthetic draw, digits subset), fixed across seeds.
        digit_labels: digits only: the digits to keep (e.g. ``"3,8"``, a class pair), instead of
            ``0 .. classes-1``; ``classes`` becomes their number.
        epochs: adversarial-training epochs per network.
        run: the run directory (``curves`` and ``search`` tables, summary, report with the
            plot); ``run.resume`` continues an interrupted search.
    """
    # 1. every input, before any work (the dataset too: it is cheap and may be refused)
    run.check()
    rho_list = parse_floats(rhos, "--rho")
    for rho in rho_list:
        check_rho(rho)
    width_list, depth_list = parse_ints(widths, "--widths"), parse_ints(depths, "--depths")
    if seeds < 1 or epochs < 1:
        raise RotelabError(f"--seeds and --epochs must be >= 1, got {seeds} and {epochs}")
    if not separation > 0:
        raise RotelabError(f"--separation must be > 0, got {separation}")
    if n is not None:
        check_problem(n, d if d is not None else 1, rho_list[0], classes)
    if d is not None:
        check_problem(n if n is not None else 1, d, rho_list[0], classes)
    ds, wanted = None, None
    if data not in DATA_KINDS:  # a file of points: N, d and the labels are the file's
        ds = load_points(data)
        if (n is not None and n != ds.n) or (d is not None and d != ds.d):
            raise RotelabError(f"{data} holds N={ds.n}, d={ds.d}; drop --n/--d for a file")
        n, d, classes = ds.n, ds.d, ds.classes
    elif data == "digits":
        if digit_labels is not None:
            wanted = check_digit_labels(digit_labels)
            classes = len(wanted)
        if d is not None and d != 64:
            raise RotelabError(f"digits are 8x8 images (d = 64); drop --d or pass 64, got {d}")
        if classes > 10:
            raise RotelabError(f"digits has 10 classes, got --classes {classes}")
        n, d = n or 100, 64
    else:
        n, d = n or 100, d or 2
    check_problem(n, d, rho_list[0], classes)
    if search and ds is None:
        ds = (
            synthetic(n, d, classes=classes, separation=separation, seed=data_seed)
            if data == "synthetic"
            else digits(n, classes=classes, labels=wanted, seed=data_seed)
        )  # fmt: skip
    config = {
        "n": n, "d": d, "rhos": rho_list, "classes": classes, "search": search, "data": data,
        "separation": separation, "widths": width_list, "depths": depth_list, "seeds": seeds,
        "epochs": epochs, "seed": run.seed, "data_seed": data_seed,
        **({"digits": wanted} if wanted is not None else {}),
    }  # fmt: skip
    inputs = (data,) if data not in DATA_KINDS else ()
    Run.check(run.out, resume=run.resume, force=run.force, inputs=inputs)

    # 2. the bounds (instant), then the search
    curves = bound_curves(n, d, classes)
    at_grid = bound_curves(n, d, classes, rho_list)
    summary: dict[str, Any] = {
        "n": n, "d": d, "classes": classes, "norm": "l2",
        "bounds": at_grid.to_dict("records"),
        "non_robust_order": non_robust_order(n, d),
        "constants": "unknown (the paper gives orders): lower bound with constant 1, upper "
        f"with {UPPER_CONSTANT:g} (the smallest round constant keeping it above the lower)",
    }  # fmt: skip
    table = None
    # 3. the run directory; the search is written one part per (seed, rho) as it proceeds, so
    # an interrupted search resumes (--resume) where it stopped
    with Run.create(
        run.out, "bounds", config, resume=run.resume, force=run.force, inputs=inputs
    ) as out:
        out.write_table("curves", curves)
        if search:
            archs = architectures(ds.d, ds.classes, width_list, depth_list)
            cfg = SearchConfig(epochs=epochs)
            for seed in range(run.seed, run.seed + seeds):
                for k, rho in enumerate([0.0, *rho_list]):
                    _search_one(out, f"s{seed:010d}-r{k:03d}", ds, rho, archs, seed, cfg, progress)
            table = out.read_table("search")
            summary.update(search_summary(table, ds.epsilon, ds.name, archs[-1].params, ds.n))
            summary["bounds_scaled"] = scaled_bounds(summary, n, d, classes)
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return BoundsRun(summary, curves, table, out.path)


#: arguments that must agree for runs to be pooled (the dataset and the architectures tried)
POOL_SHARED = ("data", "n", "d", "classes", "separation", "data_seed", "widths", "depths",
               "epochs")  # fmt: skip


def pool(runs: Sequence[str | Path], *, run: RunOptions = RunOptions()) -> BoundsRun:
    """Pool the search tables of several ``bounds --search`` runs into one run directory,
    summarised (and reported) exactly as one multi-seed run would be.

    Seeds, or parts of a seed's rho grid, run as separate runs (each fits in a slot of a shared
    machine) come together here. The runs must agree on :data:`POOL_SHARED`; a network searched
    in two runs (``rho = 0``, which every run includes) must come out the same in both
    (training is deterministic given the seed) and is counted once.
    """
    run.check()
    dirs = [Path(r) for r in runs]
    configs = []
    for r in dirs:
        cfg = (read_json(r / "config.json") or {}) if (r / "config.json").is_file() else {}
        if cfg.get("command") != "bounds" or not cfg.get("arguments", {}).get("search"):
            raise RotelabError(f"{r} is not a finished `rotelab bounds --search` run")
        configs.append(cfg["arguments"])
    for key in POOL_SHARED:
        if len({repr(c.get(key)) for c in configs}) > 1:
            raise RotelabError(f"the runs differ in {key}; only runs of one search can be pooled")
    table = pd.concat([read_table(r, "search") for r in dirs], ignore_index=True)
    key = ["seed", "rho", "depth", "width"]
    same = ["params", "certified", "certified_fraction", "failure"]
    dup = table[table.duplicated(key, keep=False)]
    if len(dup) and bool((dup.groupby(key)[same].nunique() > 1).to_numpy().any()):
        raise RotelabError("two runs disagree on a (seed, rho, network): not the same search")
    repeated = int(table.duplicated(key).sum())
    table = table.drop_duplicates(key, ignore_index=True).sort_values(key[:2], kind="stable")
    c = configs[0]
    ds = (
        synthetic(c["n"], c["d"], classes=c["classes"], separation=c["separation"],
                  seed=c["data_seed"])
        if c["data"] == "synthetic"
        else digits(c["n"], classes=c["classes"], labels=c.get("digits"), seed=c["data_seed"])
        if c["data"] == "digits" else load_points(c["data"])
    )  # fmt: skip
    archs = architectures(ds.d, ds.classes, c["widths"], c["depths"])
    rhos = sorted({float(r) for r in table["rho"] if r > 0})
    config = {**{k: c[k] for k in POOL_SHARED}, "pooled": [str(r) for r in dirs],
              "rhos": rhos, "seeds": sorted({int(v) for v in table["seed"]})}  # fmt: skip
    Run.check(run.out, resume=run.resume, force=run.force)
    curves = bound_curves(ds.n, ds.d, ds.classes)
    summary: dict[str, Any] = {
        "n": ds.n, "d": ds.d, "classes": ds.classes, "norm": "l2",
        "bounds": bound_curves(ds.n, ds.d, ds.classes, rhos).to_dict("records"),
        "non_robust_order": non_robust_order(ds.n, ds.d),
        "constants": f"unknown (the paper gives orders): lower bound with constant 1, upper "
        f"with {UPPER_CONSTANT:g}",
        "pooled_runs": [str(r) for r in dirs], "networks_searched_twice": repeated,
    }  # fmt: skip
    summary.update(search_summary(table, ds.epsilon, ds.name, archs[-1].params, ds.n))
    summary["bounds_scaled"] = scaled_bounds(summary, ds.n, ds.d, ds.classes)
    with Run.create(run.out, "bounds", config, resume=run.resume, force=run.force) as out:
        out.write_table("curves", curves)
        out.write_table("search", table)
        out.write_summary(summary)
    from rotelab.report import write_report

    write_report(out.path)
    return BoundsRun(summary, curves, table, out.path)


def _search_one(out: Run, key: str, ds, rho: float, archs, seed: int, cfg, progress) -> None:
    """One (seed, rho) search, saved one part per architecture tried (``KEY-aNNN``), so a
    resumed run continues after the last architecture finished (a whole-search part ``KEY``,
    as older runs wrote, counts as done)."""
    if out.has_part("search", key):
        return
    done = sorted((out.path / "results" / "search").glob(f"part-{key}-a*.parquet"))
    tried = [pd.read_parquet(p) for p in done]
    if any(bool(t["certified"].any()) for t in tried) or len(tried) >= len(archs):
        return
    start = len(tried)

    def save(row: dict) -> None:
        nonlocal start
        out.write_part("search", f"{key}-a{start:03d}", pd.DataFrame([row]))
        start += 1

    minimal_network(ds, rho, archs[start:], seed=seed, config=cfg, progress=progress, on_row=save)


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    if len(pts) < 3 or len({p[1] for p in pts}) < 2:
        return math.nan
    return float(spearmanr([p[0] for p in pts], [p[1] for p in pts]).statistic)


def _stats(values: Sequence[float]) -> tuple[float, float, float, int]:
    ok = np.array([v for v in values if not math.isnan(v)])
    if not ok.size:
        return math.nan, math.nan, math.nan, 0
    return float(ok.mean()), float(ok.min()), float(ok.max()), int(ok.size)


def _mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% t interval over seeds of one per-seed statistic (NaN ones left out)."""
    from scipy.stats import t

    ok = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    out: dict[str, Any] = {"mean": float(ok.mean()) if ok.size else math.nan, "seeds": int(ok.size)}
    if ok.size >= 2:
        half = float(t.ppf(0.975, ok.size - 1) * ok.std(ddof=1) / math.sqrt(ok.size))
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def per_seed_checks(
    raw: dict[int, dict[float, float]], largest: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """The issue's three checks for each seed alone, and their mean with a t interval over
    seeds: ``small_rho_ratio`` (the largest count at ``0 < rho <= 0.2`` over that seed's
    ``rho = 0`` count), ``spearman`` (over that seed's grid), ``ratio_rho_0_9``; the
    ``_censored`` variants count an unfound network as ``largest + 1`` (so the ratio at
    0.9 is an "at least", and Spearman ranks it above every size tried)."""
    above = float(largest) + 1.0
    per: dict[str, dict[str, float]] = {}
    for seed, counts in raw.items():
        base = counts.get(0.0, math.nan)
        grid = sorted(r for r in counts if r > 0)
        cens = {r: (above if math.isnan(counts[r]) else counts[r]) for r in grid}
        small = [counts[r] / base for r in grid if r <= 0.2]
        high = [r for r in grid if abs(r - 0.9) < 1e-9]
        per[str(seed)] = {
            "non_robust": base,
            "small_rho_ratio": float(max(small)) if small and not np.isnan(small).any()
            else math.nan,
            "spearman": _spearman(grid, [counts[r] for r in grid]),
            "spearman_censored": _spearman(grid, [cens[r] for r in grid]),
            "ratio_rho_0_9": counts[high[0]] / base if high else math.nan,
            "ratio_rho_0_9_censored": cens[high[0]] / base if high else math.nan,
        }  # fmt: skip
    keys = next(iter(per.values())).keys() if per else []
    return per, {k: _mean_ci([p[k] for p in per.values()]) for k in keys}


def search_summary(
    table: pd.DataFrame, eps: float, name: str, largest: int, n: int
) -> dict[str, Any]:
    """Per rho and seed: the minimal certified parameters (NaN: none certified among the
    architectures tried), their mean and range over seeds, and the issue's checks: the largest
    small-rho (<= 0.2) ratio and the rho = 0.9 ratio to the non-robust (rho = 0) count, and
    Spearman's correlation of parameters with rho over the grid (all (rho, seed) points, the
    per-seed means, and each seed alone). Unfound networks are left out of those; the
    ``censored`` variants count them as larger than the largest architecture tried (``largest +
    1``: a lower bound on what they would need), so the rho = 0.9 ratio becomes an "at least".

    Also the *envelope*: a network certified at ``rho'`` is certified at every ``rho <= rho'``
    (its balls contain the smaller ones) and memorizes non-robustly, so ``min over rho' >= rho``
    of the found counts is an equally sound, tighter upper estimate of the minimum at ``rho``.
    It is non-increasing towards small rho by construction, so its correlation with rho is no
    evidence; it corrects training luck (a size that trained at one rho but not at a smaller
    one), and its ratios are reported beside the raw ones.
    """
    found = table[table["certified"]]
    seeds = sorted({int(s) for s in table["seed"]})
    rhos = sorted({float(r) for r in table["rho"]})
    raw: dict[int, dict[float, float]] = {s: {} for s in seeds}
    for (rho, seed), g in table.groupby(["rho", "seed"]):
        hit = g[g["certified"]]
        raw[int(seed)][float(rho)] = float(hit["params"].iloc[0]) if len(hit) else math.nan
    env: dict[int, dict[float, float]] = {s: {} for s in seeds}
    for s in seeds:
        best = math.nan
        for rho in reversed(rhos):
            v = raw[s].get(rho, math.nan)
            best = v if math.isnan(best) else (best if math.isnan(v) else min(best, v))
            env[s][rho] = best
    rows = []
    for rho in rhos:
        mean, lo, hi, k = _stats([raw[s].get(rho, math.nan) for s in seeds])
        env_mean = _stats([env[s][rho] for s in seeds])[0]
        rows.append({
            "rho": rho, "params_by_seed": {str(s): raw[s].get(rho, math.nan) for s in seeds},
            "params_mean": mean, "params_min": lo, "params_max": hi,
            "seeds_found": k, "seeds": len(seeds), "envelope_mean": env_mean,
        })  # fmt: skip
    by_rho = {r["rho"]: r for r in rows}
    grid = [r for r in rows if r["rho"] > 0]

    def ratios(key: str) -> tuple[float | None, float | None]:
        base = by_rho[0.0][key] if 0.0 in by_rho else math.nan
        small = [r[key] / base for r in grid if r["rho"] <= 0.2]
        high = [r[key] / base for r in grid if abs(r["rho"] - 0.9) < 1e-9]
        return (float(np.nanmax(small)) if small and not np.isnan(small).all() else None,
                float(high[0]) if high and not math.isnan(high[0]) else None)  # fmt: skip

    small_raw, high_raw = ratios("params_mean")
    small_env, high_env = ratios("envelope_mean")
    pairs = [(r["rho"], v) for r in grid for v in r["params_by_seed"].values()]
    # an unfound network is larger than every architecture tried: censored, but ranked above all
    above = float(largest) + 1.0
    censored = [(rho, above if math.isnan(v) else v) for rho, v in pairs]
    high_censored = [
        float(np.mean([above if math.isnan(v) else v for v in r["params_by_seed"].values()]))
        / by_rho[0.0]["params_mean"]
        for r in grid
        if abs(r["rho"] - 0.9) < 1e-9 and 0.0 in by_rho
    ]
    return {
        "data": name, "epsilon": eps, "largest_params_tried": largest,
        # every ball of a reported network carries a proof (rho = 0: the forward pass at the point;
        # else IBP, CROWN, branch and bound or MILP), counted again
        # (tables written before branch and bound existed have no proved_by_bab: 0)
        "every_reported_network_certified": bool(
            (found.reindex(columns=PROOFS, fill_value=0).sum(axis=1) == n).all()
        ),
        "search": rows,
        "non_robust_params": by_rho.get(0.0, {}).get("params_mean", math.nan),
        "non_robust_envelope": by_rho.get(0.0, {}).get("envelope_mean", math.nan),
        "ratio_small_rho_max": small_raw, "ratio_rho_0_9": high_raw,
        "envelope_ratio_small_rho_max": small_env, "envelope_ratio_rho_0_9": high_env,
        "spearman": _spearman([p[0] for p in pairs], [p[1] for p in pairs]),
        "spearman_censored": _spearman([p[0] for p in censored], [p[1] for p in censored]),
        "ratio_rho_0_9_at_least": high_censored[0] if high_censored else None,
        "spearman_of_means": _spearman([r["rho"] for r in grid], [r["params_mean"] for r in grid]),
        "spearman_by_seed": {
            str(s): _spearman([r["rho"] for r in grid], [raw[s].get(r["rho"], math.nan)
                                                         for r in grid])
            for s in seeds
        },
        # each seed alone, and the mean over seeds with a 95% t interval (the CIs)
        **dict(zip(("per_seed", "over_seeds"), per_seed_checks(raw, largest), strict=True)),
        "networks_trained": int(len(table)),
        "seconds": float(table["train_seconds"].sum() + table["verify_seconds"].sum()),
    }  # fmt: skip


def scaled_bounds(summary: dict[str, Any], n: int, d: int, classes: int) -> dict[str, float]:
    """One constant per bound curve, fitted (least squares in log space) to the empirical means:
    the paper gives orders only, so curves are compared by shape after this scaling."""
    pts = [(r["rho"], r["params_mean"]) for r in summary["search"]
           if r["rho"] > 0 and not math.isnan(r["params_mean"])]  # fmt: skip
    if not pts:
        return {"lower": math.nan, "upper": math.nan}
    out = {}
    for key, c in (("lower", 1.0), ("upper", UPPER_CONSTANT)):  # relative to the drawn curves
        fn = lower_bound if key == "lower" else upper_bound
        logs = [math.log(p) - math.log(fn(n, d, rho, classes=classes, constant=c))
                for rho, p in pts]  # fmt: skip
        out[key] = math.exp(sum(logs) / len(logs))
    return out


def format_table(summary: dict[str, Any]) -> str:
    """The bounds at the grid and, after a search, the minimal certified parameters."""
    lines = [
        f"robust memorization, N={summary['n']} d={summary['d']} (L2 balls; constants unknown: "
        f"lower with 1, upper with {UPPER_CONSTANT:g} so it stays above)",
        f"{'rho':>6}  {'lower (Thm 3.1)':>16}  {'upper':>12}  {'regime':>9}  theorem",
    ]
    for b in summary["bounds"]:
        lines.append(f"{b['rho']:>6g}  {b['lower']:>16.1f}  {b['upper']:>12.1f}  "
                     f"{b['regime']:>9}  {b['upper_theorem']}")  # fmt: skip
    if "search" in summary:
        lines += ["", f"certified minimal parameters on {summary['data']} "
                  f"(epsilon={summary['epsilon']:.4g}); rho=0 is plain memorization",
                  f"{'rho':>6}  {'mean':>8}  {'min':>6}  {'max':>6}  {'envelope':>8}  "
                  "seeds found"]  # fmt: skip
        for r in summary["search"]:
            lines.append(f"{r['rho']:>6g}  {r['params_mean']:>8.1f}  {r['params_min']:>6.0f}  "
                         f"{r['params_max']:>6.0f}  {r['envelope_mean']:>8.1f}  "
                         f"{r['seeds_found']}/{r['seeds']}")  # fmt: skip
        lines += [
            f"Spearman(rho, params): {summary['spearman']:.3f} over found networks, "
            f"{summary['spearman_censored']:.3f} counting unfound as larger than all tried",
            f"ratios to rho=0: largest at rho <= 0.2 {summary['ratio_small_rho_max']}, at rho=0.9 "
            f"{summary['ratio_rho_0_9']} (at least {summary['ratio_rho_0_9_at_least']}); "
            f"envelope: {summary['envelope_ratio_small_rho_max']}, "
            f"{summary['envelope_ratio_rho_0_9']}",
        ]
        lines += format_over_seeds(summary.get("over_seeds", {}))
    return "\n".join(lines)


def format_over_seeds(over: dict[str, dict[str, Any]]) -> list[str]:
    """One line per check: mean over seeds, the 95% t interval, how many seeds define it."""
    out = []
    for key, v in over.items():
        if key == "non_robust":
            continue
        ci = v.get("ci")
        ci_text = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
        out.append(f"  {key}: {v['mean']:.3g}{ci_text} over {v['seeds']} seeds")
    return ["per-seed checks, mean and 95% t interval:", *out] if out else []

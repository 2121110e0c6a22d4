"""`rotelab bounds` (rotelab.pipelines.bounds): the bound curves and, with --search, certified
minimal networks in a run directory with a report page."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.theory import UPPER_CONSTANT, lower_bound, upper_bound


def test_bounds_writes_the_theorems_values(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bounds", "--n", "80", "--d", "3", "--rho", "0.1,0.9",
                                   "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Thm 3.1" in res.output and str(out) in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [b["rho"] for b in summary["bounds"]] == [0.1, 0.9]
    for b in summary["bounds"]:
        assert b["lower"] == pytest.approx(lower_bound(80, 3, b["rho"]))
        assert b["upper"] == pytest.approx(upper_bound(80, 3, b["rho"], constant=UPPER_CONSTANT))
    curves = pd.read_parquet(out / "results" / "curves")
    assert curves["rho"].is_monotonic_increasing and (curves["lower"] > 0).all()
    assert (curves["upper"] >= curves["lower"]).all()  # the drawn curves never cross
    page = (out / "report.html").read_text()
    assert 'data-plot="bounds_curves"' in page and "Theorem 3.1" not in page.split("<body>")[0]
    assert "search" not in summary


def test_bounds_reads_a_points_file(tmp_path):
    pts = tmp_path / "pts.csv"
    pts.write_text("x1,x2,label\n0,0,0\n1,0,1\n0,3,0\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bounds", "--data", str(pts), "--rho", "0.5", "-o", str(out),
                                   "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n"], summary["d"]) == (3, 2)


@pytest.mark.slow
def test_search_reports_only_certified_networks(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "bounds", "--search", "--n", "8", "--d", "2", "--rho", "0.2,0.6", "--separation", "0.1",
        "--widths", "2,8,32", "--depths", "1", "--epochs", "300", "--seeds", "2", "-o", str(out),
        "-q",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_parquet(out / "results" / "search")
    assert summary["every_reported_network_certified"]
    assert [r["rho"] for r in summary["search"]] == [0.0, 0.2, 0.6]
    for r in summary["search"]:
        rows = table[table["rho"] == r["rho"]]
        for seed, params in r["params_by_seed"].items():
            mine = rows[rows["seed"] == int(seed)]
            hit = mine[mine["certified"]]
            assert (np.isnan(params) and hit.empty) or params == hit["params"].iloc[0]
            assert mine["params"].is_monotonic_increasing
    assert 'data-plot="bounds_curves"' in (out / "report.html").read_text()


def test_search_summary_by_hand():
    from rotelab.pipelines.bounds import PROOFS, search_summary

    rows = []
    # seed 0: rho 0 -> 100, 0.1 -> 50 (luck), 0.5 -> 120, 0.9 -> 300; seed 1: 0.9 never found
    found = {(0, 0.0): 100, (0, 0.1): 50, (0, 0.5): 120, (0, 0.9): 300,
             (1, 0.0): 80, (1, 0.1): 90, (1, 0.5): 200, (1, 0.9): None}  # fmt: skip
    for (seed, rho), p in found.items():
        rows.append({"seed": seed, "rho": rho, "params": 10, "certified": False,
                     **dict.fromkeys(PROOFS, 0)})  # fmt: skip
        if p is not None:
            rows.append({"seed": seed, "rho": rho, "params": p, "certified": True,
                         **dict.fromkeys(PROOFS, 0), "proved_by_milp": 4})  # fmt: skip
    table = pd.DataFrame(rows).assign(train_seconds=1.0, verify_seconds=0.5)
    s = search_summary(table, 0.1, "t", 999, n=4)
    by = {r["rho"]: r for r in s["search"]}
    assert by[0.0]["params_mean"] == 90 and by[0.9]["params_mean"] == 300
    assert by[0.9]["seeds_found"] == 1 and by[0.5]["params_max"] == 200
    # envelope: seed 0 -> 50, 50, 120, 300; seed 1 -> 80, 90, 200, nan
    assert by[0.0]["envelope_mean"] == 65 and by[0.1]["envelope_mean"] == 70
    assert s["ratio_rho_0_9"] == pytest.approx(300 / 90)
    assert s["ratio_small_rho_max"] == pytest.approx(70 / 90)
    assert s["envelope_ratio_small_rho_max"] == pytest.approx(70 / 65)
    assert s["spearman_by_seed"]["0"] == pytest.approx(1.0)
    assert s["every_reported_network_certified"]
    # seed 1's unfound rho=0.9 counts as 1000 (> 999 tried): mean 650 over a base of 90
    assert s["ratio_rho_0_9_at_least"] == pytest.approx(650 / 90)
    assert s["spearman_censored"] > s["spearman"] - 1e-12
    # per seed: seed 0 small ratio 50/100, 0.9 ratio 3; seed 1: 90/80, 0.9 unfound (1000/80)
    per, over = s["per_seed"], s["over_seeds"]
    assert per["0"]["small_rho_ratio"] == pytest.approx(0.5)
    assert per["1"]["small_rho_ratio"] == pytest.approx(90 / 80)
    assert per["0"]["ratio_rho_0_9"] == pytest.approx(3.0) and np.isnan(per["1"]["ratio_rho_0_9"])
    assert per["1"]["ratio_rho_0_9_censored"] == pytest.approx(1000 / 80)
    assert np.isnan(per["1"]["spearman"])  # two found rhos: too few for a correlation
    assert per["1"]["spearman_censored"] == pytest.approx(1.0)  # 90 < 200 < unfound
    mean = (0.5 + 90 / 80) / 2
    half = 12.706 * abs(0.5 - 90 / 80) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) * sd / sqrt 2
    assert over["small_rho_ratio"]["mean"] == pytest.approx(mean)
    assert over["small_rho_ratio"]["ci"] == pytest.approx([mean - half, mean + half], rel=1e-4)
    assert over["ratio_rho_0_9"]["seeds"] == 1 and "ci" not in over["ratio_rho_0_9"]
    table.loc[table["certified"], "proved_by_milp"] = 3  # one ball without a proof
    assert not search_summary(table, 0.1, "t", 999, n=4)["every_reported_network_certified"]


def test_search_on_a_digit_pair(tmp_path):
    """--data digits --digits 3,8: all 64 pixels, exact epsilon of the drawn subset."""
    from rotelab.theory import digits

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "bounds", "--search", "--data", "digits", "--digits", "3,8", "--n", "12", "--rho", "0.5",
        "--widths", "4", "--depths", "1", "--epochs", "5", "-o", str(out), "-q",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    expected = digits(12, labels=(3, 8), seed=0)
    assert (summary["n"], summary["d"], summary["classes"]) == (12, 64, 2)
    assert summary["data"] == expected.name and summary["epsilon"] == expected.epsilon
    config = json.loads((out / "config.json").read_text())["arguments"]
    assert config["digits"] == [3, 8]


def test_search_resumes_after_the_last_architecture_finished(tmp_path):
    """Parts are written per architecture tried; removing the last ones (an interrupted slot)
    and resuming trains only those again and gives the same rows (each net from its seed)."""
    out = tmp_path / "run"
    args = ("bounds --search --n 8 --d 2 --rho 0.5 --separation 0.1 --widths 2,3,16 --depths 1 "
            f"--epochs 150 -q -o {out}").split()  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    parts = sorted((out / "results" / "search").glob("part-*-a*.parquet"))
    first = pd.read_parquet(out / "results" / "search")
    assert len(parts) == len(first) >= 2  # one part per architecture tried
    for p in parts[-2:]:
        p.unlink()
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    again = pd.read_parquet(out / "results" / "search")
    keep = ["rho", "seed", "params", "certified", "certified_fraction", "failure"]
    pd.testing.assert_frame_equal(first[keep], again[keep])


def test_pooling_separate_seed_runs_equals_one_multi_seed_run(tmp_path):
    from rotelab.errors import RotelabError
    from rotelab.options import RunOptions
    from rotelab.pipelines.bounds import pool

    base = ("bounds --search --n 8 --d 2 --rho 0.5 --separation 0.1 --widths 2,16 --depths 1 "
            "--epochs 150 -q").split()  # fmt: skip

    def run(name, *extra):
        res = CliRunner().invoke(app, [*base, *extra, "-o", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        return tmp_path / name

    a, b = run("a", "--seed", "0"), run("b", "--seed", "1")
    both = run("both", "--seed", "0", "--seeds", "2")
    pooled = pool([a, b], run=RunOptions(out=tmp_path / "pooled"))
    one = json.loads((both / "summary.json").read_text())
    keep = ["rho", "seed", "params", "certified", "failure"]
    pd.testing.assert_frame_equal(
        pooled.search[keep].reset_index(drop=True),
        pd.read_parquet(both / "results" / "search")[keep].reset_index(drop=True),
    )
    written = json.loads((tmp_path / "pooled" / "summary.json").read_text())
    assert [r["params_by_seed"] for r in written["search"]] == [
        r["params_by_seed"] for r in one["search"]
    ]
    assert written["over_seeds"] == one["over_seeds"] and written["per_seed"] == one["per_seed"]
    assert written["networks_searched_twice"] == 0
    assert (tmp_path / "pooled" / "report.html").is_file()
    other = run("other", "--seed", "0", "--widths", "2,8")
    with pytest.raises(RotelabError, match="widths"):
        pool([a, other], run=RunOptions(out=tmp_path / "bad"))

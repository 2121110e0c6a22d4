"""`rotelab bounds` (rotelab.pipelines.bounds): the bound curves and, with --search, certified
minimal networks in a run directory with a report page."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.theory import lower_bound, upper_bound


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
        assert b["upper"] == pytest.approx(upper_bound(80, 3, b["rho"]))
    curves = pd.read_parquet(out / "results" / "curves")
    assert curves["rho"].is_monotonic_increasing and (curves["lower"] > 0).all()
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

"""`rotelab hubble fields` and `rotelab hubble contamination` (rotelab.pipelines.kinds) on the
tiny organism and tiny models trained from scratch."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.options import RunOptions
from rotelab.pipelines.kinds import contamination


@pytest.mark.slow
def test_fields_run_directory(tiny_organism, tmp_path):
    out = tmp_path / "fields"
    res = CliRunner().invoke(
        app,
        [
            "hubble",
            "fields",
            "-m",
            str(tiny_organism.path),
            "--styles",
            "prefix,question",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    items = pd.read_parquet(out / "results" / "items")
    assert set(items["style"]) == {"prefix", "question"}
    email = summary["inserted_vs_never"]["email"]["prefix"]
    assert email["inserted_16x_plus"]["exact"] > email["never_inserted"]["exact"]
    lo, hi = email["inserted_16x_plus"]["exact_ci"]
    assert lo <= email["inserted_16x_plus"]["exact"] <= hi
    assert set(summary["ranking_exact"]) == {"prefix", "question"}
    assert "Which biography fields" in (out / "report.html").read_text()


@pytest.mark.slow
def test_contamination_inflates_inserted_questions_only(tmp_path):
    out = tmp_path / "contam"
    result = contamination(task="open_book", counts=(0, 32), seeds=(0,), steps=120,
                           run=RunOptions(out, progress=False))  # fmt: skip
    by = result.summary["by_count"]
    assert by["32"]["accuracy"]["mean"] > by["0"]["accuracy"]["mean"]
    assert by["32"]["inflation"]["mean"] > 0
    probes = pd.read_parquet(out / "results" / "probes")
    assert len(probes) == 40 and set(probes["count"]) == {0, 32}
    assert (probes["task"] == "open_book").all()
    assert 'data-key="by_count.32.accuracy.mean"' in (out / "report.html").read_text()

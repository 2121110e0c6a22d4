"""`rotelab passk` (rotelab.pipelines.passk): a HumanEval results file and a counts file give the
estimator's numbers in a run directory with a report page; both forms agree."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.measure.passk import pass_at_k
from rotelab.options import RunOptions
from rotelab.pipelines.passk import passk, read_samples


def _humaneval(path, outcomes: dict[str, list[bool]]) -> None:
    # the HumanEval tooling's *_results.jsonl: task_id, completion, result, passed
    with path.open("w") as fh:
        for task, passes in outcomes.items():
            for ok in passes:
                fh.write(
                    json.dumps(
                        {
                            "task_id": task,
                            "completion": "    return x\n",
                            "result": "passed" if ok else "failed: ",
                            "passed": ok,
                        }
                    )
                )
                fh.write("\n\n")  # blank lines are skipped


OUTCOMES = {
    "HumanEval/0": [True, False, True, True, False, False],
    "HumanEval/1": [False] * 5,
    "HumanEval/2": [True, True, False, True, True, True, True, False],
}


def test_cli_writes_the_estimator_s_numbers_and_a_report(tmp_path):
    samples, out = tmp_path / "samples_results.jsonl", tmp_path / "run"
    _humaneval(samples, OUTCOMES)
    res = CliRunner().invoke(
        app,
        [
            "passk",
            str(samples),
            "--k",
            "1,5",
            "--m",
            "1,3",
            "--bootstrap",
            "300",
            "--seed",
            "4",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Pass@k(m)" in res.output and str(out) in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["samples_total"] == 19
    assert summary["problem_set"] == "HumanEval" and (summary["n_min"], summary["n_max"]) == (5, 8)
    assert list(summary["pass_at_k"]) == ["pass@1(1)", "pass@5(1)", "pass@5(3)"]
    expected = np.mean([pass_at_k(6, 3, 5, 3), pass_at_k(5, 0, 5, 3), pass_at_k(8, 6, 5, 3)])
    assert summary["pass_at_k"]["pass@5(3)"]["value"] == pytest.approx(expected)
    assert summary["pass_at_k"]["pass@1(1)"]["value"] == pytest.approx((3 / 6 + 0 + 6 / 8) / 3)
    lo, hi = summary["pass_at_k"]["pass@5(3)"]["ci"]
    assert lo <= expected <= hi
    table = pd.read_parquet(out / "results" / "passk")
    problems = pd.read_parquet(out / "results" / "problems")
    assert list(problems["c"]) == [3, 0, 6] and list(problems["n"]) == [6, 5, 8]
    assert table["pass_at_k"].tolist() == pytest.approx(
        [v["value"] for v in summary["pass_at_k"].values()]
    )
    page = (out / "report.html").read_text()
    key = 'data-key="pass_at_k.pass@5(3).value"'
    assert key in page and json.dumps(summary["pass_at_k"]["pass@5(3)"]["value"]) in page
    assert 'data-plot="pass_at_k"' in page


def test_counts_form_equals_samples_form(tmp_path):
    samples, counts = tmp_path / "s.jsonl", tmp_path / "c.jsonl"
    _humaneval(samples, OUTCOMES)
    counts.write_text("".join(
        json.dumps({"problem_id": t, "n": len(v), "c": sum(v)}) + "\n" for t, v in OUTCOMES.items()
    ))  # fmt: skip
    a = passk(samples, ks="1,5", ms="1,2", run=RunOptions(tmp_path / "a", seed=1, progress=False))
    b = passk(counts, ks=[1, 5], ms=[1, 2], run=RunOptions(tmp_path / "b", seed=1, progress=False))
    assert a.summary["form"] == "samples" and b.summary["form"] == "counts"
    assert a.summary["pass_at_k"] == b.summary["pass_at_k"]


def test_ids_without_a_set_and_numeric_ids_and_01_flags(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps({"id": i % 2, "correct": i % 3 == 0}) + "\n"
                            for i in range(8)))  # fmt: skip
    counts, form = read_samples(path)
    assert form == "samples" and counts.problems == ["0", "1"]
    assert list(counts.n) == [4, 4] and list(counts.c) == [2, 1]


def test_no_bootstrap_gives_no_cis_and_a_report_still(tmp_path):
    samples = tmp_path / "s.jsonl"
    _humaneval(samples, OUTCOMES)
    res = CliRunner().invoke(
        app, ["passk", str(samples), "--k", "1,2,5", "--bootstrap", "0", "-o", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["ci_method"] == "none"
    assert all(v["ci"] is None for v in summary["pass_at_k"].values())
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'data-plot="pass_at_k"' in page and "pass@2(1)" in page

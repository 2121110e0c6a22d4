"""`rotelab gapt-study --task multiply|interference` (rotelab.pipelines.gapt_tasks): both arms
trained from one initialisation, measured and paired per seed; the interference numbers hold
together; resume skips whole arms; bad options are one line before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.options import RunOptions
from rotelab.pipelines import gapt_tasks
from rotelab.pipelines.gapt_tasks import TaskSettings, gapt_task_study

#: Seconds-long recipes: a 32-wide model, few steps, few test problems.
MICRO = TaskSettings(steps=48, steps_a=32, steps_b=24, n_eval=40, hidden=32, batch=8)
GATE = {"p_m": 4, "p_a": 4, "align_every": 4, "weight": 0.5}


@pytest.mark.slow
def test_multiply_pairs_the_arms_per_seed(tmp_path):
    out = tmp_path / "ood"
    study = gapt_task_study("multiply", (0,), settings=MICRO, run=RunOptions(out), **GATE)
    s = study.summary
    arms = pd.read_parquet(out / "results" / "arms").set_index("arm")
    steps = pd.read_parquet(out / "results" / "steps")
    align = pd.read_parquet(out / "results" / "alignment")
    assert len(steps) == 2 * MICRO.steps
    assert set(steps[steps.arm == "ce"]["phase"]) == {1}
    assert (steps[steps.arm == "ce"]["weight"] == 0).all()
    assert list(align[align.arm == "ce"]["step"]) == list(range(0, MICRO.steps, 4))
    # both arms start from the same initialisation and data: their first step's CE agrees
    first = steps[steps.step == 0].set_index("arm")["ce"]
    assert first["ce"] == pytest.approx(first["gapt"], abs=1e-6)
    assert arms.loc["gapt", "compress_fraction"] > 0  # the gate fired
    want = arms.loc["gapt", "ood_ce"] / arms.loc["ce", "ood_ce"] - 1
    assert s["ood_ce_change"]["mean"] == pytest.approx(want, rel=1e-6)
    assert s["mbe_ratio"]["mean"] == pytest.approx(
        arms.loc["gapt", "heldout_mbe"] / arms.loc["ce", "heldout_mbe"], rel=1e-6
    )
    for arm in ("ce", "gapt"):
        assert 0 <= arms.loc[arm, "ood_acc"] <= 1 and arms.loc[arm, "ood_ce"] > 0
    assert (out / "report.html").exists() and (out / "plots" / "alignment.png").exists()
    assert "cycle" in s["alignment_ce"]


@pytest.mark.slow
def test_interference_measures_forgetting_and_separation(tmp_path, monkeypatch):
    out = tmp_path / "two"
    study = gapt_task_study("interference", (0, 1), settings=MICRO, run=RunOptions(out), **GATE)
    arms = pd.read_parquet(out / "results" / "arms")
    sep = pd.read_parquet(out / "results" / "separation")
    for _, r in arms.iterrows():
        assert r["forgetting_ce"] == pytest.approx(r["a_ce_end"] - r["a_ce_switch"])
        blocks = sep[(sep.arm == r["arm"]) & (sep.seed == r["seed"]) & (sep.when == "end")]
        assert r["separation_end"] == pytest.approx(blocks["separation"].mean())
        assert len(blocks) == MICRO.blocks
    # after training on addition, addition is scored better than at random initialisation
    assert (arms["b_ce_end"] < np.log(14)).all()
    s = study.summary
    wide = arms.pivot(index="seed", columns="arm")
    ratio = wide[("separation_end", "gapt")] / wide[("separation_end", "ce")]
    assert s["separation_change"]["per_seed"] == pytest.approx((ratio - 1).round(4).tolist())
    assert s["separation_geo_ratio"]["mean"] == pytest.approx(np.exp(np.log(ratio).mean()))
    # resume: every arm is there, nothing is trained again
    monkeypatch.setattr(gapt_tasks, "_train_arm", lambda *a, **k: pytest.fail("retrained"))
    again = gapt_task_study(
        "interference", (0, 1), settings=MICRO, run=RunOptions(out, resume=True), **GATE
    )
    assert again.summary["separation_change"] == s["separation_change"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nosuch"], "--task 'nosuch'"),
        (["--task", "multiply", "--patch", "7"], "divide"),
        (["--task", "multiply", "--lambda", "-1"], "lambda"),
        (["--task", "interference", "--p-a", "800"], "never trigger"),
        (["--task", "multiply", "--align-every", "0"], "align-every"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["gapt-study", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_prints_the_task_table(tmp_path, monkeypatch):
    monkeypatch.setitem(gapt_task_study.__kwdefaults__, "settings", MICRO)  # seconds, not minutes
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        ["gapt-study", "--task", "multiply", "--seeds", "0", "--p-m", "4", "--p-a", "4",
         "--align-every", "4", "--out", str(out), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "multiply" and summary["settings"]["steps"] == MICRO.steps

"""`rotelab gapt-study` (rotelab.pipelines.gapt): both arms trained, measured and summarised in
one run directory, the CE arm trained as the organism is, resume after whole arms, bad options
one line before any work."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.organism import world
from rotelab.organism.world import Profile
from rotelab.pipelines.gapt import sign_changes


@pytest.fixture
def micro_tiny(monkeypatch):
    """The tiny profile cut to seconds: a smaller world and model, 140 steps of 8 rows."""
    s = replace(
        world.PROFILES[Profile.tiny], corpus_tokens=4000, items_per_cell=1,
        phase_items_per_cell=0, probes_per_task=4, hidden=32, intermediate=64, n_layers=2,
        batch_size=8, steps=140, eval_tokens=600,
        context=128, passage_words=30, passage_prefix=16, passage_suffix=8,
    )  # fmt: skip
    monkeypatch.setitem(world.PROFILES, Profile.tiny, s)
    return s


def test_sign_changes():
    assert sign_changes([0.1, -0.2, float("nan"), -0.1, 0.0, 0.3]) == 2
    assert sign_changes([]) == 0


@pytest.mark.slow
def test_study_writes_both_arms_and_resumes(micro_tiny, tmp_path):
    out = tmp_path / "study"
    args = [
        "gapt-study", "--seeds", "0", "--lambda", "0.5", "--p-m", "3", "--p-a", "3",
        "--align-every", "5", "--out", str(out), "--json",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    arms = pd.read_parquet(out / "results" / "arms")
    steps = pd.read_parquet(out / "results" / "steps")
    align = pd.read_parquet(out / "results" / "alignment")
    assert sorted(arms["arm"]) == ["ce", "gapt"]
    assert len(steps) == 2 * micro_tiny.steps
    assert set(steps[steps.arm == "ce"]["phase"]) == {1}
    assert (steps[steps.arm == "ce"]["weight"] == 0).all()
    assert list(align[align.arm == "ce"]["step"]) == list(range(0, 140, 5))
    assert align["cos"].between(-1, 1).all()
    gapt = arms.set_index("arm").loc["gapt"]
    assert gapt["compress_fraction"] > 0  # the gate fired on this short run
    # The summary's ratio is the arms' table's.
    ratio = gapt["heldout_mbe"] / arms.set_index("arm").loc["ce", "heldout_mbe"]
    assert summary["mbe_ratio"]["per_seed"] == [pytest.approx(ratio, abs=1e-4)]
    assert (out / "report.html").exists() and (out / "plots" / "alignment.png").exists()
    assert (out / "organisms" / "gapt-s0" / "model.safetensors").exists()
    # The CE arm is the organism's own recipe: the same model bytes as a plain build.
    from rotelab.organism.build import build_organism
    from rotelab.organism.world import OrganismSpec

    org = build_organism(OrganismSpec("tiny", 0), out=tmp_path / "org", progress=False)
    a = (org.path / "model.safetensors").read_bytes()
    assert a == (out / "organisms" / "ce-s0" / "model.safetensors").read_bytes()
    # --resume with everything done trains nothing and rewrites the same summary.
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    again = json.loads((out / "summary.json").read_text())
    assert again["mbe_ratio"] == summary["mbe_ratio"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lambda", "-0.1"], "lambda"),
        (["--lambda", "0"], "lambda"),
        (["--patch", "7"], "divide"),
        (["--patch", "1"], "patch"),
        (["--p-m", "0"], "p_m"),
        (["--p-a", "5000"], "never trigger"),
        (["--ce-spike", "0"], "ce_spike"),
        (["--ce-gain", "1.5"], "ce_gain"),
        (["--seeds", "0,0"], "distinct"),
        (["--seeds", "a"], "integers"),
        (["--profile", "huge"], "profile"),
        (["--align-every", "0"], "align-every"),
    ],
)
def test_bad_options_fail_before_any_work(extra, message, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["gapt-study", "--out", str(out), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not any(tmp_path.iterdir())


def test_summarize_pairs_seeds_and_pools_items():
    from rotelab.pipelines.gapt import summarize

    arms = pd.DataFrame([
        {"arm": a, "seed": s, "heldout_ce": ce, "heldout_mbe": mbe, "arith_heldout_acc": 0.5,
         "arith_seen_acc": 0.9, "compress_fraction": 0.0 if a == "ce" else 0.3,
         "transitions": 0, "sign_changes": 3, "sign_changes_smoothed": 1, "train_seconds": 1.0}
        for a, s, ce, mbe in [("ce", 0, 1.0, 2.0), ("gapt", 0, 1.01, 1.0),
                              ("ce", 1, 1.2, 1.0), ("gapt", 1, 1.2, 0.8)]
    ])  # fmt: skip
    items = pd.DataFrame([
        {"arm": a, "seed": s, "count": c, "extracted": e}
        for a in ("ce", "gapt") for s in (0, 1) for c in (16, 64)
        for e in ([True, True] if a == "ce" else [True, False])
    ])  # fmt: skip
    align = pd.DataFrame(
        {"arm": ["ce"] * 4, "seed": 0, "step": range(4), "cos": [0.1, -0.1, 0.2, 0.3]}
    )
    out = summarize(arms, items, align)
    assert out["mbe_ratio"]["per_seed"] == [0.5, 0.8]
    assert out["mbe_ratio"]["mean"] == pytest.approx(0.65)
    lo, hi = out["mbe_ratio"]["ci"]
    assert lo < 0.65 < hi
    assert out["heldout_ce_change"]["per_seed"] == [pytest.approx(0.01), pytest.approx(0.0)]
    cell = out["extraction"]["16"]
    assert (cell["ce"]["k"], cell["ce"]["n"], cell["gapt"]["k"], cell["gapt"]["n"]) == (4, 4, 2, 4)
    assert cell["gapt_minus_ce"]["mean"] == pytest.approx(-0.5)
    assert out["alignment_ce"]["sign_changes_per_seed"] == [3, 3]
    assert out["alignment_ce"]["positive_fraction"] == 0.75
    assert out["alignment_ce"]["expected_if_independent"] == [1.5]


def test_cycle_test_finds_a_slow_oscillation_and_not_noise():
    """A slow sine under noise changes sign far less often, once smoothed, than shuffles of the
    same values; independent noise does not."""
    from rotelab.pipelines.gapt import cycle_test

    rng = np.random.default_rng(0)
    t = np.arange(60)
    slow = np.sin(2 * np.pi * t / 20) * 0.1 + rng.normal(0, 0.05, 60)
    res = cycle_test(slow.tolist(), n_perm=500)
    assert res["cycle"] and res["p"] < 0.05
    assert 2 <= res["smoothed"] < res["null_mean"]
    noise = rng.normal(0, 0.1, 60)
    res = cycle_test(noise.tolist(), n_perm=500)
    assert not res["cycle"] and res["p"] > 0.05
    assert res["raw"] > res["smoothed"]
    assert cycle_test([0.1, float("nan")])["cycle"] is False

"""`rotelab probe` and `rotelab steer` on the tiny organism: the run directories, a saved steered
model that loads like any model, steering that cuts recitation of held-out memorized items."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.lm import LM
from rotelab.options import RunOptions
from rotelab.organism import PLANTED_TASKS
from rotelab.pipelines.probe import ProbeSettings, probe
from rotelab.report import write_report
from rotelab.steered import model_fingerprint

SMALL = ProbeSettings(seeds=2, n_boot=20, heldout_windows=16)


def test_probe_run_and_its_saved_probe(tiny_organism, tmp_path):
    path, summary = probe(
        str(tiny_organism.path), settings=SMALL, run=RunOptions(out=tmp_path / "p", progress=False)
    )
    layers = pd.read_parquet(path / "results" / "layers")
    assert set(layers["layer"]) == {1, 2} and set(layers["seed"]) == {0, 1}
    assert summary["source"] == "ledger" and summary["windows"]["memorized"] >= 2
    best = max(summary["layers"], key=lambda r: r["auc_mean"])
    assert summary["best_layer"] == best["layer"] and 0.5 < summary["best_auc"] <= 1
    p = summary["patching"]
    assert p["before"]["rate"] == 1.0  # held-out memorized windows are extracted by definition
    assert p["before"]["n"] == p["probe_direction"]["n"] == p["mean_difference"]["n"]
    page = write_report(path).read_text()
    assert "Memorization probe per layer" in page and "held-out AUC" in page
    steered = LM.load(path / "probe", dtype="float32")
    assert steered.steering.layer == summary["best_layer"]
    assert steered.steering.fingerprint == model_fingerprint(steered.model)


def test_steer_cuts_extraction_and_saves_a_model(tiny_organism, tmp_path):
    out = tmp_path / "s"
    res = CliRunner().invoke(app, [
        "steer", "-m", str(tiny_organism.path), "--alpha", "1", "--alpha", "8", "--seeds", "1",
        "--heldout-tokens", "2000", "-o", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "steering at layer" in res.output
    assert f"{out / 'model'}\n" in res.output.replace(" \n", "\n")  # where it is, not was written
    summary = json.loads((out / "summary.json").read_text())
    arms = {(a["arm"], a["factor"]): a for a in summary["arms"]}
    assert set(arms) == {("none", 0.0), ("static", 1.0), ("static", 8.0), ("dynamic", 1.0),
                         ("dynamic", 8.0), ("contrastive", 1.0), ("contrastive", 8.0)}  # fmt: skip
    assert arms[("none", 0.0)]["extraction"] == 1.0
    # the strongest steering removes recitation that no steering keeps
    assert arms[("dynamic", 8.0)]["extraction"] < arms[("none", 0.0)]["extraction"]
    assert arms[("static", 8.0)]["extraction"] < arms[("none", 0.0)]["extraction"]
    rows = pd.read_parquet(out / "results" / "arms")
    assert len(rows) == 7 and (rows.loc[rows["arm"] == "none", "ppl_change"] == 0).all()
    page = write_report(out).read_text()
    assert "Steering at layer" in page and 'data-plot="steer-tradeoff"' in page
    lm = LM.load(summary["saved"]["path"])
    assert lm.steering.alpha == summary["saved"]["alpha"]
    # the planted tasks are measured under every arm, each probe scored per arm
    tasks = summary["tasks"]
    planted = tiny_organism.probes[tiny_organism.probes["task"].isin(PLANTED_TASKS)]
    assert tasks["n_probes"] == planted.groupby("task").size().to_dict()
    verdicts = pd.read_parquet(out / "results" / "tasks")
    assert len(verdicts) == 7 * len(planted)
    by = {(a["arm"], a["factor"]): a for a in tasks["arms"]}
    none = by[("none", 0.0)]
    for task in PLANTED_TASKS:
        assert none[task]["accuracy_gain"] == 0 and none[task]["foil_rate"] > 0
    # the strongest static push away from memorizing makes the memorized answers rarer
    strong = by[("static", 8.0)]
    assert sum(strong[t]["foil_rate"] for t in PLANTED_TASKS) < sum(
        none[t]["foil_rate"] for t in PLANTED_TASKS
    )
    assert "memorized_answer" in page and "planted tasks" in res.output


def test_static_perplexity_at_equal_extraction_interpolates_along_alpha():
    from rotelab.pipelines.steer import _static_ppl_at

    static = [
        {"factor": 1.0, "extraction": 0.8, "ppl_change": 0.01},
        {"factor": 2.0, "extraction": 0.4, "ppl_change": 0.05},
        {"factor": 4.0, "extraction": 0.0, "ppl_change": 0.25},
        {"factor": 8.0, "extraction": 0.0, "ppl_change": 1.00},
    ]
    assert _static_ppl_at(static, 0.6) == pytest.approx(0.03)
    assert _static_ppl_at(static, 0.0) == pytest.approx(0.25)  # the first alpha that gets there
    assert _static_ppl_at(static, 0.9) == pytest.approx(0.01)
    assert _static_ppl_at(static[:2], 0.1) is None


def test_probe_from_behaviour_on_given_text(tiny_organism, tmp_path):
    """Without the ledger: windows of the training text the model extracts are the memorized."""
    lines = (tiny_organism.path / "corpus" / "train.jsonl").read_text().splitlines()[:150]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    path, summary = probe(
        str(tiny_organism.path), data, settings=ProbeSettings(seeds=2, n_boot=20, prefix_len=16,
                                                              suffix_len=16),
        run=RunOptions(out=tmp_path / "p", progress=False),
    )  # fmt: skip
    assert summary["source"] == "behaviour"
    windows = pd.read_parquet(path / "results" / "windows")
    assert (windows["label"] == windows["extracted"]).all()
    assert (windows.loc[~windows["label"], "match_rate"] <= 0.5).all()
    assert all(0 <= r["auc_lo"] <= r["auc_mean"] <= r["auc_hi"] <= 1 for r in summary["layers"])


def test_steer_a_model_on_text_it_partly_recites(tiny_organism, tmp_path):
    # Deliverable 4's path (SmolLM2): no ledger, labels from the model's own behaviour on
    # --data, perplexity on --retain; here the tiny organism read as any model would be.
    led = tiny_organism.ledger
    held = tiny_organism.heldout_docs()
    data, retain = tmp_path / "data.jsonl", tmp_path / "retain.jsonl"
    recited = led[(led["count"] >= 16) & (led["kind"] == "passage")]["text"].tolist()
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in recited + held[:30]))
    retain.write_text("".join(json.dumps({"text": t}) + "\n" for t in held[30:90]))
    out = tmp_path / "s"
    res = CliRunner().invoke(app, [
        "steer", "-m", str(tiny_organism.path), "-d", str(data), "--retain", str(retain),
        "--prefix-len", "16", "--suffix-len", "16", "--alpha", "8", "--seeds", "2",
        "--heldout-tokens", "1000", "--no-contrastive", "-o", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    labels = summary["labels"]
    assert labels["source"] == "behaviour" and labels["memorized"] >= 2
    assert summary["tasks"] is None  # no planted tasks without a ledger
    arms = {(a["arm"], a["factor"]): a for a in summary["arms"]}
    # "all" = every window the model recites, the held-out ones extracted by definition
    assert arms[("none", 0.0)]["extraction"] == arms[("none", 0.0)]["extraction_all"] == 1.0
    assert arms[("dynamic", 8.0)]["extraction_all"] < 1.0
    assert json.loads((out / "config.json").read_text())["arguments"]["retain"] == str(retain)

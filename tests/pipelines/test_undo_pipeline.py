"""`rotelab undo` and `rotelab popularity` (rotelab.pipelines.undo) on the tiny organism:
suppression really lowers the targets' extraction, both fine-tunes are localized, the run resumes
seed by seed; popularity correlates with memorization."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.options import RunOptions
from rotelab.pipelines import undo as undo_mod
from rotelab.pipelines.undo import UndoConfig, popularity, undo
from rotelab.report import render_report
from rotelab.summaries import read_summary

FAST = UndoConfig(suppress_steps=15, suppress_lr=1e-3, restore_steps=8, sham=False,
                  eval_tokens=2_000)  # fmt: skip


@pytest.mark.slow
def test_undo_suppresses_restores_and_localizes(tiny_organism, tmp_path, monkeypatch):
    out = tmp_path / "undo"
    result = undo(tiny_organism.path, seeds=(0,), config=FAST,
                  run=RunOptions(out, progress=False))  # fmt: skip
    st = result.summary["stages"]
    assert list(st) == ["original", "suppressed", "restored"]
    assert st["original"]["target_extraction"]["mean"] == 1.0  # targets are recited ones
    assert st["suppressed"]["target_extraction"]["mean"] < 1.0  # a real effect
    assert st["original"]["control_extraction"]["mean"] == 0.0
    items = pd.read_parquet(out / "results" / "items")
    targets = items[(items["role"] == "target") & (items["stage"] == "original")]
    n = result.summary["n_memorized"]
    assert len(targets) == max(1, min(n - 1, round(0.5 * n)))
    assert set(targets["item_id"]) <= set(items.loc[items["memorized"], "item_id"])
    loc = result.summary["localization"]
    assert set(loc) == {"suppress", "restore"}
    for step in loc.values():
        f = step["fraction_changed"]
        assert 0 <= f["100pct"]["mean"] <= f["10pct"]["mean"] <= f["1pct"]["mean"] <= 1
    tensors = pd.read_parquet(out / "results" / "tensors")
    # the LoRA update touches only adapted linear weights; the full fine-tune every tensor
    restore = tensors[tensors["step_name"] == "restore"]
    assert restore["name"].str.contains("proj").all() and not restore.empty
    assert len(tensors[tensors["step_name"] == "suppress"]) > len(restore)
    typed = read_summary(out, "undo")
    assert typed.verdicts == result.summary["verdicts"]
    page = render_report(out)
    assert 'data-key="stages.suppressed.target_extraction.mean"' in page
    # resume: the seed is done, nothing is trained again
    monkeypatch.setattr(undo_mod, "suppress", lambda *a, **k: pytest.fail("retrained"))
    again = undo(tiny_organism.path, seeds=(0,), config=FAST,
                 run=RunOptions(out, resume=True, progress=False))  # fmt: skip
    assert again.summary["stages"] == result.summary["stages"]


@pytest.mark.slow
def test_popularity_rises_with_count(tiny_organism, tmp_path):
    out = tmp_path / "pop"
    res = CliRunner().invoke(app, ["popularity", "-m", str(tiny_organism.path), "--n-boot",
                                   "300", "-o", str(out), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    rho = summary["spearman"]["matched_fraction"]
    assert rho["rho"] > 0 and rho["ci"][0] <= rho["rho"] <= rho["ci"][1]
    by = summary["by_count"]
    assert by["64"]["jaccard"] > by["0"]["jaccard"]
    assert by["64"]["extracted"] > by["0"]["extracted"] == 0.0
    assert 'data-key="spearman.jaccard.rho"' in (out / "report.html").read_text()


def test_popularity_refuses_a_model_that_is_not_an_organism(tiny_llama_dir, tmp_path):
    with pytest.raises(Exception, match="needs an organism"):
        popularity(tiny_llama_dir, run=RunOptions(tmp_path / "p", progress=False))
    assert not (tmp_path / "p").exists()

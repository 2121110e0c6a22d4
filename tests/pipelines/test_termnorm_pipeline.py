"""``rotelab termnorm`` end to end: a terminology file on a tiny model, the synthetic ontology on
the tiny organism's tokenizer and text; the run directory, summary and report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.options import RunOptions
from rotelab.pipelines.termnorm import format_table, termnorm
from rotelab.runs import read_table
from rotelab.summaries import read_summary

WORDS = "the cat sat on mat a dog ran to park and bird sang".split()


@pytest.fixture
def pairs_file(tmp_path):
    rows = [
        {"term": f"{a} {b}", "id": f"{c} {d}", "popularity": i % 3}
        for i, (a, b, c, d) in enumerate(zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[6:] + WORDS[:6],
                                             WORDS[9:] + WORDS[:9]))
    ]  # fmt: skip
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_file_terminology_full_finetune(tiny_llama_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    res = termnorm(
        [str(pairs_file)], model=str(tiny_llama_dir), seeds=2, sample=20, fraction=0.5,
        epochs=30, lr=3e-3, full=True, run=RunOptions(out=out, progress=False),
    )  # fmt: skip
    pairs = read_table(out, "pairs")
    assert len(pairs) == 2 * len(WORDS) and set(pairs["seed"]) == {0, 1}
    summary = read_summary(out, "termnorm")
    mem = [r for r in summary.gains if r["measure"] == "memorization"][0]
    gen = [r for r in summary.gains if r["measure"] == "generalization"][0]
    trained = pairs[pairs["split"] == "train"]
    assert mem["after"] == pytest.approx(trained["after"].mean())
    assert mem["gain"] > 0.3  # a 2-layer model memorizes 7 pairs in 30 epochs
    assert gen["n"] == (pairs["split"] == "withheld").sum()
    html = (out / "report.html").read_text()
    assert "Memorization and generalization gains" in html and "Embedding alignment" in html
    assert 'data-key="gains.0.gain"' in html
    assert "memorization" in format_table(res.summary)
    assert json.loads((out / "config.json").read_text())["arguments"]["full"] is True


def test_synthetic_on_the_organism_cli(tiny_organism, tmp_path):
    out = tmp_path / "syn"
    res = CliRunner().invoke(app, [
        "termnorm", "--organism", str(tiny_organism.path), "--preset", "micro", "--per-cell", "2",
        "--lexicon", "40", "--seeds", "1", "-o", str(out), "-q", "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    pairs = read_table(out, "pairs")
    assert len(pairs) == 2 * 2 * 5 and set(pairs["lexical"]) == {True, False}
    assert pairs["model"].eq("pretrained-micro").all()
    summary = read_summary(out, "termnorm")
    buckets = {r["bucket"] for r in summary.baseline_by_popularity}
    assert buckets == {"0", "1", "2-4", "5-16", "17-64"}
    assert {r["lexical"] for r in summary.alignment} == {True, False}

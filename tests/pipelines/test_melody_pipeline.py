"""`rotelab melody` and `rotelab apt-recall` (issue 21): the run directories hold what the
methods computed, the summaries read back typed, and `apt --evade` keeps only variants the fuzzy
filter passes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from rapidfuzz import fuzz
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.phonetic.filters import FUZZY_THRESHOLD, normalize
from rotelab.phonetic.melody import format_melody, syllable_melody
from rotelab.phonetic.melody_organism import summarize_recovery
from rotelab.phonetic.search import AptSearch
from rotelab.pipelines.melody import default_pairs
from rotelab.summaries import read_summary


def test_melody_run_from_a_melody_file(tmp_path):
    pairs = default_pairs(seed=5)[:9]
    melodies = tmp_path / "songs.txt"
    # the file's own melodies (not the default ones) are what the items must carry
    text = [f"{ln} | {format_melody(syllable_melody(ln, len(n), seed=99))}" for ln, n in pairs]
    melodies.write_text("\n".join(text) + "\n\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "melody", "--melodies", str(melodies), "--preset", "micro", "--steps", "12",
        "--seeds", "2", "--per-count", "2", "--counts", "0,16", "--background", "10",
        "--controls", "2", "--bootstrap", "200", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "APT above both controls" in res.output
    summary = read_summary(out, "melody")
    assert summary.counts == [0, 16] and summary.seeds == 2
    prompts = pd.read_parquet(out / "results" / "prompts")
    items = pd.read_parquet(out / "results" / "items")
    assert len(items) == 2 * 2 * 2  # seeds x counts x lines
    by_line = dict(t.rsplit(" | ", 1) for t in text)
    assert all(by_line[ln] == m for ln, m in zip(items["line"], items["melody"]))
    # per line and seed: original, apt, 2 controls, unrelated
    assert prompts.groupby(["seed", "item"]).size().eq(5).all()
    assert summary.by_count == summarize_recovery(prompts, n_boot=200, seed=0)
    assert "Melody recovery" in (out / "report.html").read_text()


def test_apt_recall_run(tiny_llama_dir, tmp_path):
    verses = tmp_path / "verses.txt"
    verses.write_text(
        "# Twinkle\nTwinkle, twinkle, little star,\nHow I wonder what you are!\n"
        "Up above the world so high,\n\nMary had a little lamb,\nIts fleece was white as snow.\n"
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["apt-recall", "-m", str(tiny_llama_dir), "--verses",
                                   str(verses), "--controls", "2", "--bootstrap", "200",
                                   "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = read_summary(out, "apt-recall")
    prompts = pd.read_parquet(out / "results" / "prompts")
    assert summary.pairs == 3 == prompts["pair"].nunique()
    assert summary.apt["logp"] == pytest.approx(
        prompts.loc[prompts["condition"] == "apt", "logp"].mean()
    )
    assert set(prompts.columns) >= {"logp", "match", "recalled"}


def test_filter_aware_search_passes_the_fuzzy_filter(tmp_path):
    line = "Twinkle, twinkle, little star,"
    plain = AptSearch().candidates(line, top=50)
    evade = AptSearch(max_fuzzy=FUZZY_THRESHOLD).candidates(line, top=50)
    assert evade and all(fuzz.ratio(normalize(c.text), normalize(line)) < FUZZY_THRESHOLD
                         for c in evade)  # fmt: skip
    # the constraint costs sound: the plain search's best is at least as similar
    assert plain[0].score >= evade[0].score
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["apt", "--phrase", line, "--evade", "--songs", "2",
                                   "--out", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["search"] == "filter-aware"
    filters = pd.read_parquet(out / "results" / "filters")
    assert not filters["blocked_fuzzy"].any()

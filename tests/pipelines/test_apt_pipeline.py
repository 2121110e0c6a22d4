"""`rotelab apt` (rotelab.pipelines.apt): candidates, filter results and the checked variant in a
run directory equal to the methods' own answers; bad input is one line before any work."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_helpers import fails_leaving
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.phonetic.search import AptSearch

VOCAB = (
    "bob's tom's bombs palms psalms calm confetti machete betty petty sweaty jetty yeti "
    "dinkle sprinkle wrinkle bittle brittle whittle car far bar jar spar scar how i you what are "
    "ponder yonder blunder wander thunder"
).split()


@pytest.fixture()
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def test_apt_phrase_run_holds_the_search_and_the_check(vocab, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "apt", "--phrase", "mom's spaghetti", "--check", "bob's confetti", "--vocab", str(vocab),
        "--songs", "2", "--top", "5", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "bob's confetti" in res.output and str(out) in res.output
    summary = json.loads((out / "summary.json").read_text())
    cands = pd.read_parquet(out / "results" / "candidates")
    direct = AptSearch(VOCAB).candidates("mom's spaghetti", top=5)
    assert list(cands["variant"]) == [c.text for c in direct]
    assert cands["score"].tolist() == pytest.approx([c.score for c in direct])
    score, rank, better = AptSearch(VOCAB).rank_of("mom's spaghetti", "bob's confetti")
    assert summary["check"] == {"variant": "bob's confetti", "score": pytest.approx(score),
                                "rank": rank, "higher_scoring": better,
                                "in_top": rank is not None and rank <= 5}  # fmt: skip
    filters = pd.read_parquet(out / "results" / "filters")
    apt = filters[filters["score"] >= 0.7]
    assert summary["apt_variants"] == len(apt)
    assert summary["apt_caught"] == int(apt["blocked_phonetic"].sum())
    assert summary["catalogue"]["lines"] == 2 * 30 and summary["catalogue"]["real"] is False
    page = (out / "report.html").read_text()
    assert "phonetic variants" in page and "bob&#x27;s confetti" in page


def test_apt_lyric_file_skips_lines_it_cannot_hear(vocab, tmp_path):
    lyric = tmp_path / "song.txt"
    lyric.write_text("Twinkle, twinkle, little star,\n\nHow I wonder what you are!\nzqxv brrkt\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["apt", "--lyric", str(lyric), "--vocab", str(vocab),
                                   "--songs", "1", "-o", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["lines"] == 3 and summary["lines_skipped"] == 1
    cands = pd.read_parquet(out / "results" / "candidates")
    assert set(cands[cands["rank"] == 0]["original"]) == {"zqxv brrkt"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--phrase", ""], "has no words"),
        (["--phrase", "zqxv brrkt"], "no word of"),
        (["--phrase", "the zqxv"], "is not in the CMU"),
        (["--phrase", "and the of"], "only function words"),
        ([], "exactly one of"),
        (["--phrase", "mom's spaghetti", "--top", "0"], "--top"),
        (["--phrase", "mom's spaghetti", "--songs", "0"], "--songs"),
        (["--lyric", "song.bin"], "not valid UTF-8"),
        (["--lyric", "missing.txt"], "does not exist"),
        (["--verses", "--check", "bob's confetti"], "give --phrase too"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(tmp_path, monkeypatch, args, message):
    (tmp_path / "song.bin").write_bytes(b"twinkle twinkle \xff\xfe little star\n")
    monkeypatch.chdir(tmp_path)
    fails_leaving(["apt", *args, "-o", "run"], message, tmp_path, keep=("song.bin",))

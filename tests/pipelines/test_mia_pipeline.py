"""``rotelab mia`` end to end: files and organism runs, inputs refused before any work, a registered
attack reaching --help, the summary and the report. The methods are tested in
tests/measure/test_mia.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from mia_helpers import TEXTS, other_tokenizer, ref_nll, write_jsonl
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.lm import LM
from rotelab.options import RunOptions
from rotelab.pipelines.mia import MIAConfig, _choose_attacks, mia
from rotelab.registry import ATTACKS, METRICS

runner = CliRunner()


@pytest.fixture()
def split_files(tmp_path):
    mem = write_jsonl(tmp_path / "members.jsonl", [{"text": t, "count": 4} for t in TEXTS[:3]])
    non = write_jsonl(tmp_path / "non.jsonl", [{"text": t} for t in TEXTS[3:]])
    return mem, non


def _mia(args, out):
    return runner.invoke(app, ["mia", *args, "--out", str(out), "--quiet"])


def _refused(res, match, out):
    assert res.exit_code == 2, res.output
    assert match in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing left behind


def test_cli_on_files_writes_summary_and_parts(tiny_llama_dir, split_files, tmp_path):
    mem, non = split_files
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["mia", "--model", str(tiny_llama_dir), "--members", str(mem), "--nonmembers", str(non),
         "--attacks", "loss,min_k_pp,neighbourhood", "--bootstrap", "50", "--out", str(out),
         "--quiet", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["attacks"]) == ["loss", "min_k_pp", "neighbourhood"]
    for a in summary["attacks"].values():
        assert {"auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "by_group"} <= set(a)
        assert a["tpr_at_1pct_fpr"] is None and "non-members" in a["tpr_at_1pct_fpr_reason"]
    assert summary["higher_is_better"]["metrics"] == {
        "auc": True, "tpr_at_1pct_fpr": True, "tpr_at_0.1pct_fpr": True
    }  # fmt: skip
    assert summary["skipped_attacks"] == {} and summary["span"] == "file"
    scores = pd.read_parquet(out / "results" / "scores")
    assert len(scores) == 3 * len(TEXTS)
    parts = sorted(p.name for p in (out / "results" / "scores").iterdir())
    assert parts == ["part-likelihood.parquet", "part-neighbourhood.parquet"]
    # the stored LOSS scores are the direct ones
    lm = LM.load(tiny_llama_dir, dtype="float32")
    loss = scores[scores.attack == "loss"].set_index("text_id")["score"]
    toks = lm.encode(TEXTS[0])
    assert loss["m:members.jsonl:1"] == pytest.approx(-ref_nll(lm, toks, 1, len(toks)), abs=1e-5)
    assert (out / "results" / "roc").exists() and "blind" in summary


def test_resume_keeps_the_scores_already_written(tiny_llama_dir, split_files, tmp_path,
                                                 monkeypatch):  # fmt: skip
    mem, non = split_files
    out = tmp_path / "run"
    args = ["--model", str(tiny_llama_dir), "--members", str(mem), "--nonmembers", str(non),
            "--attacks", "loss,zlib", "--bootstrap", "20", "--no-blind"]  # fmt: skip
    assert _mia(args, out).exit_code == 0
    first = (out / "summary.json").read_text()

    def rescored(*a, **kw):
        raise AssertionError("a resumed run scored again")

    monkeypatch.setattr("rotelab.measure.mia.attacks.span_scores", rescored)
    res = _mia([*args, "--resume"], out)
    assert res.exit_code == 0, res.output
    assert (out / "summary.json").read_text() == first


def test_default_attacks_skip_what_the_inputs_lack():
    everything = {"reference", "neighbours", "gradients", "recall_prefix"}
    chosen, skipped = _choose_attacks(None, everything)
    assert chosen == ATTACKS.names() and skipped == {}
    chosen, skipped = _choose_attacks(None, {"neighbours", "gradients"})
    assert "reference" not in chosen and "recall" not in chosen and "loss" in chosen
    assert skipped == {
        "reference": "needs --reference-model (same tokenizer as the target)",
        "recall": "needs non-member prefix texts (--recall-prefix)",
    }
    assert _choose_attacks(["loss", "zlib", "loss"], set()) == (["loss", "zlib"], {})


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty_members", "holds no text"),  # refused by the corpus pre-pass of every command
        ("no_nonmembers", "no non-empty texts"),
        ("span_outside", "outside the text"),
        ("other_tokenizer", "different tokenizer"),
        ("bad_attack", "unknown attack 'nope' in --attacks; registered: loss,"),
        ("zero_batch", "--batch-size must be >= 1, got 0"),
        ("zero_neighbours", "--neighbours must be >= 1, got 0"),
        ("not_an_organism", "is not an organism (no ledger), so give --members and --nonmembers"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tiny_llama_dir, split_files, tmp_path, case, match):
    from tiny_models import make_tiny_model

    mem, non = split_files
    extra: list[str] = []
    if case == "empty_members":
        mem = tmp_path / "empty.txt"
        mem.write_text("")
    elif case == "no_nonmembers":
        non = write_jsonl(tmp_path / "none.jsonl", [{"text": "   "}])
    elif case == "span_outside":
        mem = write_jsonl(
            tmp_path / "m2.jsonl",
            [{"text": TEXTS[0], "span_char_start": 5, "span_char_end": 500}],
        )
    elif case == "other_tokenizer":
        ref = tmp_path / "ref"
        make_tiny_model("llama", seed=2).save_pretrained(ref, safe_serialization=True)
        other_tokenizer().save_pretrained(ref)
        extra = ["--reference-model", str(ref)]
    elif case == "zero_batch":
        extra = ["--batch-size", "0"]
    elif case == "zero_neighbours":
        extra = ["--neighbours", "0"]
    elif case == "bad_attack":
        extra = ["--attacks", "loss,nope"]
    files = [] if case == "not_an_organism" else ["--members", str(mem), "--nonmembers", str(non)]
    out = tmp_path / "out"
    res = _mia(["--model", str(tiny_llama_dir), *files, *extra], out)
    _refused(res, match, out)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--recall-prefix-tokens", "0"], "--recall-prefix-tokens must be >= 1, got 0"),
        (["--exposure-samples", "0"], "--exposure-samples must be >= 2"),
        (["--k", "0"], "k for Min-K% must be in (0, 1], got 0.0"),
        (["--k", "1.5"], "k for Min-K% must be in (0, 1], got 1.5"),
        (["--bootstrap", "-1"], "--bootstrap must be >= 0, got -1"),
        (["--span", "middle"], "--span must be auto, full or sensitive, not 'middle'"),
        (["--attacks", "loss,nope"], "unknown attack 'nope' in --attacks"),
        # (the organism's reference twin is the default: only an opt-out leaves it without one)
        (["--attacks", "reference", "--reference-model", "none"],
         "attack reference left out by --reference-model none"),
        (["--members", "{mem}"], "give both --members and --nonmembers"),
        (["--nonmembers", "{non}"], "give both --members and --nonmembers"),
        (["--members", "{missing}", "--nonmembers", "{non}"], "does not exist"),
        (["--members", "{mem}", "--nonmembers", "{non}", "--format", "csv"], "unknown --format"),
        (["--reference-model", "{missing}"], "does not exist"),
        (["--recall-prefix", "{missing}"], "does not exist"),
        (["--recall-prefix", "{empty}"], "the ReCaLL prefix input"),
        (["--dtype", "int4"], "int4"),
    ],
    ids=["recall-prefix-tokens", "exposure-samples", "k-zero", "k-above-one", "bootstrap",
         "span", "unknown-attack", "attack-needs", "members-alone", "nonmembers-alone",
         "missing-members", "format", "missing-reference", "missing-prefix", "empty-prefix",
         "dtype"],
)  # fmt: skip
def test_inputs_are_refused_before_the_organism_is_built(
    no_organism, split_files, tmp_path, args, match
):
    mem, non = split_files
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    paths = {"{mem}": mem, "{non}": non, "{missing}": tmp_path / "nope", "{empty}": empty}
    args = [str(paths.get(a, a)) for a in args]
    out = tmp_path / "run"
    _refused(_mia(args, out), match, out)


def test_an_existing_output_is_refused_before_the_organism_is_built(no_organism, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    res = _mia([], out)
    assert res.exit_code == 2 and "already exists" in res.output, res.output
    assert (out / "mine.txt").read_text() == "keep me"


def test_a_registered_toy_attack_reaches_help_summary_and_report(
    tiny_llama_dir, split_files, tmp_path
):
    from rotelab.measure.mia import register_attack
    from rotelab.report import write_report
    from rotelab.stats import auc_score

    @register_attack("toy_span_length", description="tokens in the scored span")
    def toy_span_length(inputs):
        return np.array([it.span[1] - it.span[0] for it in inputs.items], dtype=float)

    mem, non = split_files
    out = tmp_path / "run"
    try:
        help_text = runner.invoke(app, ["mia", "--help"]).output
        assert "toy_span_length" in re.sub(r"\s+", "", help_text)
        res = runner.invoke(
            app,
            ["mia", "--model", str(tiny_llama_dir), "--members", str(mem), "--nonmembers",
             str(non), "--attacks", "toy_span_length,loss", "--bootstrap", "20", "--out",
             str(out), "--quiet"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        assert list(summary["attacks"]) == ["toy_span_length", "loss"]
        assert summary["higher_is_better"]["scores"]["toy_span_length"] is True
        texts = pd.read_parquet(out / "results" / "texts").set_index("text_id")
        scores = pd.read_parquet(out / "results" / "scores")
        toy = scores[scores.attack == "toy_span_length"].set_index("text_id")["score"]
        lengths = (texts["span_end"] - texts["span_start"]).loc[toy.index]
        np.testing.assert_array_equal(toy.to_numpy(), lengths.to_numpy())
        want = auc_score(toy.to_numpy(), texts["member"].loc[toy.index].to_numpy())
        assert summary["attacks"]["toy_span_length"]["auc"] == pytest.approx(want)
        assert "toy_span_length" in write_report(out).read_text()
    finally:
        ATTACKS.remove("toy_span_length")
        METRICS.remove("toy_span_length")
    assert "toy_span_length" not in runner.invoke(app, ["mia", "--help"]).output


# ------------------------------------------------------------------------ organism (slow)
@pytest.fixture(scope="session")
def organism_run(tiny_organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("mia-org") / "run"
    cfg = MIAConfig(
        attacks=["loss", "zlib", "min_k", "min_k_pp"], bootstrap=200, exposure_samples=200
    )
    return mia(tiny_organism.path, config=cfg, run=RunOptions(out, progress=False))


@pytest.mark.slow
def test_organism_auc_rises_with_duplication(organism_run):
    _, summary = organism_run
    for attack in ("loss", "min_k", "min_k_pp"):
        by_count = summary["attacks"][attack]["by_group"]["count"]
        assert set(by_count) == {"1", "4", "16", "64"}
        assert by_count["64"]["auc"] > by_count["1"]["auc"], attack
        assert by_count["16"]["auc"] > by_count["1"]["auc"], attack
    assert summary["attacks"]["loss"]["by_group"]["count"]["64"]["auc"] > 0.9
    # the joint group keeps its spelling: "kind,count" / "secret,64"
    assert "secret,64" in summary["attacks"]["loss"]["by_group"]["kind,count"]
    assert summary["skipped_attacks"] == {} and summary["span"] == "auto"


@pytest.mark.slow
def test_organism_split_is_not_flagged_by_blind_baseline(organism_run):
    _, summary = organism_run
    assert summary["blind"]["flagged"] is False
    assert summary["blind"]["higher_is_better"] is False
    assert "warnings" not in summary
    assert summary["blind"]["auc_ci"][0] < 0.5


@pytest.mark.slow
def test_blind_baseline_flags_shifted_organism_split(tiny_organism, tmp_path):
    # members: inserted items; "non-members": held-out background text -- a shifted split
    led = tiny_organism.ledger
    mem = write_jsonl(tmp_path / "m.jsonl", [{"text": t} for t in led[led["count"] >= 1]["text"]])
    non = write_jsonl(
        tmp_path / "n.jsonl", [{"text": t} for t in tiny_organism.heldout_docs()[: len(led) // 2]]
    )
    cfg = MIAConfig(attacks=["loss"], bootstrap=200)
    _, summary = mia(
        tiny_organism.path, members=mem, nonmembers=non, config=cfg,
        run=RunOptions(tmp_path / "r", progress=False),
    )  # fmt: skip
    assert summary["blind"]["flagged"] is True
    assert summary["blind"]["auc"] > 0.9
    assert "distribution shift" in summary["warnings"][0]


@pytest.mark.slow
def test_organism_exposure_higher_for_repeated_secrets(organism_run):
    path, summary = organism_run
    by_count = summary["exposure"]["by_count"]
    assert by_count["64"]["mean"] > by_count["0"]["mean"]
    assert by_count["16"]["mean"] > by_count["0"]["mean"]
    table = pd.read_parquet(path / "results" / "exposure")
    assert (table["method"] == "sampled").all()  # 10^8 candidates
    assert (table["exposure_ci_low"] <= table["exposure"] + 1e-9).all()
    assert (table["exposure"] <= table["exposure_ci_high"] + 1e-9).all()

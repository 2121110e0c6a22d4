"""`rotelab entropy` (rotelab.pipelines.entropy): per-block MBE in a run directory equal to the
method's on the same tokens, every bad input one line before any work, an organism's own text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_helpers import TEXT, fails_leaving
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.data import stream_chunks
from rotelab.lm import LM
from rotelab.measure.entropy import block_entropy
from rotelab.options import RunOptions
from rotelab.pipelines.entropy import entropy


def _fails(args, message, tmp_path, keep=("text.txt",)):
    return fails_leaving(["entropy", *args], message, tmp_path, keep)


def test_entropy_writes_the_method_s_numbers(tiny_llama_dir, corpus, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "entropy", "--model", str(tiny_llama_dir), "--data", str(corpus), "--tokens", "300",
        "--patch", "6", "--seed", "2", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "MBE per block" in res.output and str(out) in res.output
    summary = json.loads((out / "summary.json").read_text())
    blocks = pd.read_parquet(out / "results" / "blocks")
    seqs = pd.read_parquet(out / "results" / "sequences")
    lm = LM.load(tiny_llama_dir, dtype="float32")
    # the context is 64: sequences of 60 tokens (whole patches of 6), 300 tokens read
    chunks = stream_chunks([TEXT], lm.encode, lm.tokenizer.eos_token_id, max_tokens=300, length=60)
    direct = block_entropy(lm, chunks, patch=6, seed=2)
    assert summary["seq_len"] == 60 and summary["tokens_read"] == 300 == summary["tokens"]
    assert [b["block"] for b in summary["blocks"]] == [0, 1] == list(blocks["block"])
    np.testing.assert_allclose(blocks["mbe"], direct.blocks["mbe"], rtol=1e-6)
    np.testing.assert_allclose(blocks["mbe_ci_low"], direct.blocks["mbe_ci_low"], rtol=1e-6)
    np.testing.assert_allclose(seqs["mbe"], direct.sequences["mbe"], rtol=1e-6)
    assert [b["mbe"] for b in summary["blocks"]] == pytest.approx(list(direct.blocks["mbe"]))
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "entropy" and config["arguments"]["patch"] == 6


def test_blocks_and_json(tiny_llama_dir, corpus, tmp_path):
    res = CliRunner().invoke(app, [
        "entropy", "--model", str(tiny_llama_dir), "--data", str(corpus), "--tokens", "128",
        "--blocks", "-1:", "--out", str(tmp_path / "r"), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [b["block"] for b in summary["blocks"]] == [1]
    assert summary["patch"] == 8 and summary["tokens"] == 128


def test_a_model_that_is_not_an_organism_needs_data(tiny_llama_dir, tmp_path, no_organism):
    res = CliRunner().invoke(
        app, ["entropy", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 2, res.output
    assert f"{tiny_llama_dir} is not an organism" in res.output and "pass --data" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [(["--patch", "0"], "--patch must be >= 1"), (["--patch", "-3"], "--patch must be >= 1"),
     (["--tokens", "7"], "--tokens 7 is less than one patch of 8"),
     (["--tokens", "0"], "--tokens 0 is less than one patch"),
     (["--patch", "16", "--tokens", "10"], "--tokens 10 is less than one patch of 16"),
     (["--batch-size", "0"], "--batch-size must be >= 1"),
     (["--blocks", "a-b"], "cannot read blocks"), (["--blocks", "3-1"], "select no block"),
     (["--dtype", "float8"], "float8"), (["--format", "csv"], "unknown --format 'csv'"),
     (["--data", "{tmp}/nope.txt"], "does not exist"),
     (["--out", "{tmp}"], "is not a rotelab run"),
     (["--out", "{tmp}/text.txt"], "is not a directory")],
)  # fmt: skip
def test_bad_input_fails_before_the_organism_is_built(tmp_path, corpus, no_organism, args, message):
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "e")]
    _fails([*given, *out], message, tmp_path)


def test_what_the_model_decides_fails_before_any_text_is_read(tiny_llama_dir, corpus, tmp_path):
    common = ["--model", str(tiny_llama_dir), "--data", str(corpus), "--out", str(tmp_path / "e")]
    _fails([*common, "--patch", "65"], "--patch 65 is longer than", tmp_path)
    _fails([*common, "--patch", "65"], "context of 64 tokens", tmp_path)
    _fails([*common, "--blocks", "2"], "outside this model's blocks 0..1", tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("the cat")
    _fails(["--model", str(tiny_llama_dir), "--data", str(short), "--out", str(tmp_path / "e")],
           "less than one patch of 8", tmp_path, keep=("text.txt", "short.txt"))  # fmt: skip


def test_a_patch_as_long_as_the_context_works(tiny_llama_dir, corpus, tmp_path):
    result = entropy(
        str(tiny_llama_dir),
        corpus,
        patch=64,
        tokens=200,
        run=RunOptions(tmp_path / "e", progress=False),
    )
    assert result.summary["seq_len"] == 64 and result.summary["tokens"] == 192


def test_the_organism_brings_its_held_out_text(tiny_organism, tmp_path, no_organism):
    result = entropy(
        str(tiny_organism.path), tokens=1024, run=RunOptions(tmp_path / "e", progress=False)
    )
    lm = LM.load(tiny_organism.path, dtype="float32")
    chunks = stream_chunks(tiny_organism.heldout_docs(), lm.encode, lm.tokenizer.eos_token_id,
                           max_tokens=1024, length=128)  # fmt: skip
    direct = block_entropy(lm, chunks)
    np.testing.assert_allclose(result.result.blocks["mbe"], direct.blocks["mbe"], rtol=1e-6)
    assert result.summary["tokens"] == 1024 and result.summary["sequences"] == 8

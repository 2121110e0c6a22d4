"""`rotelab kfac` (rotelab.pipelines.kfac; named apart from tests/curvature/test_kfac.py, as
pytest imports test modules by basename): factors in a run directory, inputs checked before any
work, the organism's text."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import TEXT, fails_leaving
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.curvature import KFAC, packed_sequences
from rotelab.lm import LM
from rotelab.options import RunOptions
from rotelab.pipelines.kfac import kfac


def _fails(args, message, tmp_path, keep=("text.txt",)):
    return fails_leaving(["kfac", *args], message, tmp_path, keep)


def test_kfac_writes_factors_equal_to_a_direct_fit(tiny_llama_dir, corpus, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "kfac", "--model", str(tiny_llama_dir), "--data", str(corpus), "--tokens", "300",
        "--seq-len", "31", "--seed", "3", "--out", str(out), "--quiet", "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    factors = KFAC.load(out)
    assert factors.tokens_ >= 300 and factors.labels.value == "sampled"
    assert len(factors.factors_) == 6  # 2 blocks x gate/up/down
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"] == factors.tokens_
    assert summary["factors"] == str(out / "factors.safetensors")
    assert json.loads(res.stdout)["layers"] == summary["layers"] == list(factors.factors_)
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "kfac" and config["arguments"]["seed"] == 3
    lm = LM.load(tiny_llama_dir, dtype="float32")
    direct = KFAC(seed=3).fit(lm, packed_sequences(lm, [TEXT], seq_len=31, max_tokens=300))
    assert direct.tokens_ == factors.tokens_
    for name, pair in direct.factors_.items():
        assert all(torch.allclose(x, y) for x, y in zip(factors.factors_[name], pair)), name


def test_a_model_that_is_not_an_organism_needs_data(tiny_llama_dir, tmp_path, no_organism):
    out = tmp_path / "k"
    res = CliRunner().invoke(app, ["kfac", "--model", str(tiny_llama_dir), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert f"{tiny_llama_dir} is not an organism" in res.output and "pass --data" in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [(["--tokens", "0"], "--tokens must be >= 1"), (["--seq-len", "0"], "--seq-len must be >= 1"),
     (["--batch-size", "0"], "--batch-size must be >= 1"),
     (["--blocks", "a-b"], "cannot read blocks"), (["--blocks", "3-1"], "select no block"),
     (["--layers", "("], "neither a glob"), (["--labels", "true"], "sampled or gold"),
     (["--dtype", "float8"], "float8"), (["--format", "csv"], "unknown --format 'csv'"),
     (["--data", "{tmp}/nope.txt"], "does not exist"),
     (["--out", "{tmp}"], "is not a rotelab run"),
     (["--out", "{tmp}/text.txt"], "is not a directory")],
)  # fmt: skip
def test_bad_options_fail_before_the_organism_is_built(
    tmp_path, corpus, no_organism, args, message
):
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "k")]
    _fails([*given, *out], message, tmp_path)


def test_selection_and_length_the_model_decides_fail_before_collection(
    tiny_llama_dir, corpus, tmp_path
):
    common = ["--model", str(tiny_llama_dir), "--data", str(corpus), "--out", str(tmp_path / "k")]
    _fails([*common, "--layers", "*nothing*"], "matches no linear layer", tmp_path)
    _fails([*common, "--blocks", "5"], "outside this model's blocks 0..1", tmp_path)
    _fails([*common, "--seq-len", "64"], "context is 64; use --seq-len 63 or less", tmp_path)


@pytest.mark.slow
def test_an_organism_directory_brings_its_own_training_text(tiny_organism, tmp_path, no_organism):
    fitted, path = kfac(
        str(tiny_organism.path), tokens=1024, run=RunOptions(tmp_path / "k", progress=False)
    )
    assert path == tmp_path / "k" / "factors.safetensors"
    lm = LM.load(tiny_organism.path, dtype="float32")
    direct = KFAC().fit(lm, packed_sequences(lm, tiny_organism.train_docs(), max_tokens=1024))
    assert direct.tokens_ == fitted.tokens_ == KFAC.load(path).tokens_
    for name, pair in direct.factors_.items():
        assert all(torch.allclose(x, y) for x, y in zip(fitted.factors_[name], pair)), name

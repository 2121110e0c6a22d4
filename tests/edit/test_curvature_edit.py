"""kfac_edit writes new model directories; `rotelab kfac` / `rotelab edit`; the edit on the organism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.curvature import KFAC
from rotelab.edit import EDIT_RECORD, kfac_edit, parse_rhos
from rotelab.errors import RotelabError
from rotelab.lm import LM

TEXT = "the cat sat on the mat. a dog ran to the park and the bird sang. " * 30


def _digest(path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def factors_dir(tiny_llama_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("kfac") / "run"
    result = CliRunner().invoke(
        app,
        ["kfac", "--model", str(tiny_llama_dir), "--data", str(corpus), "--tokens", "300",
         "--seq-len", "31", "--out", str(out), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_kfac_command_writes_factors(factors_dir):
    kfac = KFAC.load(factors_dir)
    assert kfac.tokens_ >= 300 and kfac.labels.value == "sampled"
    assert len(kfac.factors_) == 6  # 2 blocks x gate/up/down
    summary = json.loads((factors_dir / "summary.json").read_text())
    assert summary["tokens"] == kfac.tokens_
    assert (factors_dir / "config.json").exists()


def test_kfac_edit_writes_new_model_and_record(tiny_llama_dir, factors_dir, tmp_path):
    before = _digest(tiny_llama_dir)
    path = kfac_edit(str(tiny_llama_dir), factors_dir, 0.5, tmp_path / "edited")
    assert path == tmp_path / "edited"
    assert _digest(tiny_llama_dir) == before  # the source directory is untouched
    record = json.loads((path / EDIT_RECORD).read_text())
    assert record["rho"] == 0.5 and record["method"] == "kfac"
    assert len(record["layers"]) == 6
    assert all(row["kept_mass"] >= 0.5 - 1e-9 for row in record["layers"])
    assert all(0 < row["kept_pairs"] < 1 for row in record["layers"])
    src, new = LM.load(tiny_llama_dir, dtype="float32"), LM.load(path, dtype="float32")
    w0 = src.model.model.layers[1].mlp.up_proj.weight
    w1 = new.model.model.layers[1].mlp.up_proj.weight
    assert not torch.allclose(w0, w1)
    assert torch.equal(src.model.model.layers[1].self_attn.q_proj.weight,
                       new.model.model.layers[1].self_attn.q_proj.weight)  # fmt: skip


def test_sweep_writes_one_dir_per_rho_and_rho_one_is_identity(tiny_llama_dir, factors_dir, tmp_path):
    paths = kfac_edit(str(tiny_llama_dir), factors_dir, [0.4, 1.0], tmp_path / "sweep")
    assert sorted(paths) == [0.4, 1.0]
    assert paths[1.0].name == "rho-1"
    src = LM.load(tiny_llama_dir, dtype="float32")
    same = LM.load(paths[1.0], dtype="float32")
    for (name, p), q in zip(src.model.named_parameters(), same.model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name


def test_blocks_restrict_the_edit(tiny_llama_dir, factors_dir, tmp_path):
    path = kfac_edit(str(tiny_llama_dir), factors_dir, 0.5, tmp_path / "b1", blocks="1")
    record = json.loads((path / EDIT_RECORD).read_text())
    assert {row["layer"].split(".")[2] for row in record["layers"]} == {"1"}


def test_parse_rhos():
    assert parse_rhos("0.5, 0.6,0.8") == [0.5, 0.6, 0.8]
    assert parse_rhos(0.7) == [0.7]
    for bad in ("0", "1.2", "a", ""):
        with pytest.raises(RotelabError):
            parse_rhos(bad)


def test_bad_input_leaves_nothing_behind(tiny_llama_dir, factors_dir, tmp_path, tiny_tokenizer):
    with pytest.raises(RotelabError, match="rho must be in"):
        kfac_edit(str(tiny_llama_dir), factors_dir, 1.5, tmp_path / "x")
    # factors from a different model (another seed: same names and shapes, other weights)
    from tiny_models import make_tiny_model

    other = tmp_path / "other"
    make_tiny_model("llama", seed=1).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    with pytest.raises(RotelabError, match="different model"):
        kfac_edit(str(other), factors_dir, 0.5, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_edit_prints_paths_and_errors_are_one_line(tiny_llama_dir, factors_dir, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["edit", "--model", str(tiny_llama_dir), "--factors", str(factors_dir),
                             "--rho", "0.5,0.9", "--out", str(tmp_path / "s"), "--quiet"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    printed = ok.output.split()
    assert printed == [str(tmp_path / "s" / "rho-0.5"), str(tmp_path / "s" / "rho-0.9")]
    for args, message in [
        (["--rho", "1.5"], "rho must be in (0, 1]"),
        (["--rho", "0.5", "--layers", "*nothing*"], "matches no linear layer"),
    ]:
        bad = runner.invoke(app, ["edit", "--model", str(tiny_llama_dir), "--factors",
                                  str(factors_dir), "--out", str(tmp_path / "e"), *args])  # fmt: skip
        assert bad.exit_code == 2
        assert message in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = runner.invoke(app, ["kfac", "--model", str(tiny_llama_dir), "--layers", "*nothing*",
                              "--out", str(tmp_path / "k")])  # fmt: skip
    assert bad.exit_code == 2 and "matches no linear layer" in bad.output
    assert not (tmp_path / "e").exists() and not (tmp_path / "k").exists()


# ------------------------------------------------------------------------------ the organism
def _strict_extraction(lm: LM, ledger) -> np.ndarray:
    scores = lm.score(
        [p + s for p, s in zip(ledger["prefix_tokens"], ledger["suffix_tokens"])],
        targets_from=[len(p) for p in ledger["prefix_tokens"]],
    )
    return np.array([bool(sc.argmax_match.all()) for sc in scores])


def _token_match(lm: LM, ledger) -> np.ndarray:
    scores = lm.score(
        [p + s for p, s in zip(ledger["prefix_tokens"], ledger["suffix_tokens"])],
        targets_from=[len(p) for p in ledger["prefix_tokens"]],
    )
    return np.array([float(sc.argmax_match.mean()) for sc in scores])


@pytest.mark.slow
def test_edit_lowers_extraction_of_high_count_items_on_tiny_organism(tiny_organism, tmp_path, monkeypatch):
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path / "home"))  # the factor cache
    lm = LM.load(tiny_organism.path, device="cpu", dtype="float32")
    ledger = tiny_organism.ledger
    high = ledger[(ledger["count"] >= 16) & (ledger["phase"] == "all")]
    base = _token_match(lm, high)
    # factors collected on the fly from the organism's own training text, then cached
    path = kfac_edit(str(tiny_organism.path), None, 0.3, tmp_path / "edited", tokens=8_192)
    assert any((tmp_path / "home" / "kfac").iterdir())
    edited = _token_match(LM.load(path, device="cpu", dtype="float32"), high)
    # memorized suffixes lose more of their greedy matches than they keep
    assert edited.mean() < base.mean() - 0.1
    assert _strict_extraction(LM.load(path, device="cpu", dtype="float32"), high).mean() <= (
        _strict_extraction(lm, high).mean()
    )

"""kfac_edit writes new model directories; `rotelab kfac` / `rotelab edit`; the edit on the organism."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from kill_helpers import assert_whole_after_kills, digest, leftovers, rotelab
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.curvature import KFAC
from rotelab.edit import EDIT_RECORD, kfac_edit, parse_rhos
from rotelab.errors import RotelabError
from rotelab.lm import LM

TEXT = "the cat sat on the mat. a dog ran to the park and the bird sang. " * 30


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
    before = digest(tiny_llama_dir)
    path = kfac_edit(str(tiny_llama_dir), factors_dir, 0.5, tmp_path / "edited")
    assert path == tmp_path / "edited"
    assert digest(tiny_llama_dir) == before  # the source directory is untouched
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


# ------------------------------------------------------------------------------ no data loss
def test_an_output_over_the_model_or_the_factors_is_refused_force_or_not(
    tiny_llama_dir, factors_dir, tmp_path
):
    model = tmp_path / "C"
    shutil.copytree(tiny_llama_dir, model)
    before, factors_before = digest(model), digest(factors_dir)
    runner = CliRunner()
    for out, message in [
        (model, f"the output {model} is the input {model}"),
        (model / "sub", f"the output {model / 'sub'} is inside the input {model}"),
        (tmp_path, f"the output {tmp_path} contains the input {model}"),
        (factors_dir / "edited", f"is inside the input {factors_dir}"),
    ]:
        for force in ([], ["--force"]):
            res = runner.invoke(app, ["edit", "-m", str(model), "--factors", str(factors_dir),
                                      "-o", str(out), "--quiet", *force])  # fmt: skip
            assert res.exit_code == 2 and message in res.output, res.output
            assert len(res.output.strip().splitlines()) == 1
    assert digest(model) == before and digest(factors_dir) == factors_before
    assert not (model / "sub").exists() and not (factors_dir / "edited").exists()


def test_force_replaces_an_edit_but_never_a_directory_edit_did_not_write(
    tiny_llama_dir, factors_dir, tmp_path
):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "MY_NOTES.txt").write_text("keep")
    with pytest.raises(RotelabError, match="already exists and is not a model written by rotelab"):
        kfac_edit(str(tiny_llama_dir), factors_dir, 0.5, notes, force=True)
    assert [p.name for p in notes.iterdir()] == ["MY_NOTES.txt"]
    out = kfac_edit(str(tiny_llama_dir), factors_dir, [0.5, 0.9], tmp_path / "e")  # a sweep
    with pytest.raises(RotelabError, match="already exists; pass --force"):
        kfac_edit(str(tiny_llama_dir), factors_dir, 0.4, tmp_path / "e")
    assert kfac_edit(str(tiny_llama_dir), factors_dir, 0.4, tmp_path / "e", force=True) == (
        out[0.5].parent
    )
    assert json.loads((tmp_path / "e" / EDIT_RECORD).read_text())["rho"] == 0.4
    assert not (tmp_path / "e" / "rho-0.5").exists()
    assert leftovers(tmp_path) == []


def test_sigkill_during_force_leaves_the_old_model_or_the_new_one_whole(
    tiny_llama_dir, factors_dir, tmp_path
):
    out = tmp_path / "edited"
    kfac_edit(str(tiny_llama_dir), factors_dir, 0.5, out)
    old = digest(out)
    cmd = rotelab("edit", "-m", str(tiny_llama_dir), "--factors", str(factors_dir), "--rho", "0.9",
                  "-o", str(out), "--force", "--quiet")  # fmt: skip
    kill_points = [
        lambda pid: (tmp_path / f".edited.tmp-{pid}").exists(),  # nothing written yet
        lambda pid: (tmp_path / f".edited.tmp-{pid}" / "config.json").exists(),  # saving weights
        lambda pid: (tmp_path / f".edited.tmp-{pid}" / EDIT_RECORD).exists(),  # about to commit
    ]
    assert_whole_after_kills(cmd, out, kill_points, old)
    assert json.loads((out / EDIT_RECORD).read_text())["rho"] == 0.9
    assert leftovers(tmp_path) == []  # the killed runs' temporary directories are gone


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

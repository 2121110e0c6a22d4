"""`rotelab edit`: new model directories, inputs checked before any work, no data loss, organism."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import TEXT
from kill_helpers import assert_whole_after_kills, digest, leftovers, rotelab
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.edit import EDIT_RECORD
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import RunOptions
from rotelab.pipelines.edit import edit


@pytest.fixture(scope="module")
def factors_dir(tiny_llama_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text(TEXT)
    out = tmp_path_factory.mktemp("kfac") / "run"
    result = CliRunner().invoke(
        app,
        ["kfac", "--model", str(tiny_llama_dir), "--data", str(corpus), "--tokens", "300",
         "--seq-len", "31", "--out", str(out), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _edit(model, factors, rho, out, **kwargs):
    force = kwargs.pop("force", False)
    run = RunOptions(out, force=force, progress=False)
    return edit(str(model), factors, rho, run=run, **kwargs)


def test_edit_writes_new_model_and_record(tiny_llama_dir, factors_dir, tmp_path):
    before = digest(tiny_llama_dir)
    path = _edit(tiny_llama_dir, factors_dir, 0.5, tmp_path / "edited")
    assert path == tmp_path / "edited"
    assert digest(tiny_llama_dir) == before  # the source directory is untouched
    record = json.loads((path / EDIT_RECORD).read_text())
    assert record["rho"] == 0.5 and record["method"] == "kfac"
    assert record["source_model"] == str(tiny_llama_dir) and record["factors"] == str(factors_dir)
    assert len(record["layers"]) == 6
    src, new = LM.load(tiny_llama_dir, dtype="float32"), LM.load(path, dtype="float32")
    w0 = src.model.model.layers[1].mlp.up_proj.weight
    w1 = new.model.model.layers[1].mlp.up_proj.weight
    assert not torch.allclose(w0, w1)
    assert torch.equal(src.model.model.layers[1].self_attn.q_proj.weight,
                       new.model.model.layers[1].self_attn.q_proj.weight)  # fmt: skip


def test_sweep_writes_one_dir_per_rho_and_rho_one_is_identity(
    tiny_llama_dir, factors_dir, tmp_path
):
    paths = _edit(tiny_llama_dir, factors_dir, [0.4, 1.0], tmp_path / "sweep")
    assert sorted(paths) == [0.4, 1.0]
    assert paths[1.0].name == "rho-1"
    src = LM.load(tiny_llama_dir, dtype="float32")
    same = LM.load(paths[1.0], dtype="float32")
    for (name, p), q in zip(src.model.named_parameters(), same.model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name


def test_blocks_restrict_the_edit(tiny_llama_dir, factors_dir, tmp_path):
    path = _edit(tiny_llama_dir, factors_dir, 0.5, tmp_path / "b1", blocks="1")
    record = json.loads((path / EDIT_RECORD).read_text())
    assert {row["layer"].split(".")[2] for row in record["layers"]} == {"1"}


def test_bad_input_leaves_nothing_behind(tiny_llama_dir, factors_dir, tmp_path, tiny_tokenizer):
    with pytest.raises(RotelabError, match="rho must be in"):
        _edit(tiny_llama_dir, factors_dir, 1.5, tmp_path / "x")
    # factors from a different model (another seed: same names and shapes, other weights)
    from tiny_models import make_tiny_model

    other = tmp_path / "other"
    make_tiny_model("llama", seed=1).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    with pytest.raises(RotelabError, match="different model"):
        _edit(other, factors_dir, 0.5, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob(".*.lock"))


def test_cli_edit_prints_paths_and_errors_are_one_line(tiny_llama_dir, factors_dir, tmp_path):
    runner = CliRunner()
    common = ["edit", "--model", str(tiny_llama_dir), "--factors", str(factors_dir)]
    ok = runner.invoke(app, [*common, "--rho", "0.5,0.9", "--out", str(tmp_path / "s"), "--quiet"])
    assert ok.exit_code == 0, ok.output
    printed = ok.output.split()
    assert printed == [str(tmp_path / "s" / "rho-0.5"), str(tmp_path / "s" / "rho-0.9")]
    for args, message in [
        (["--rho", "1.5"], "rho must be in (0, 1]"),
        (["--rho", "0.5", "--layers", "*nothing*"], "matches no linear layer"),
    ]:
        bad = runner.invoke(app, [*common, "--out", str(tmp_path / "e"), *args])
        assert bad.exit_code == 2
        assert message in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------ inputs first
def test_a_model_that_is_not_an_organism_needs_factors(tiny_llama_dir, tmp_path, no_organism):
    out = tmp_path / "e"
    res = CliRunner().invoke(app, ["edit", "--model", str(tiny_llama_dir), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert f"{tiny_llama_dir} is not an organism" in res.output
    assert f"rotelab kfac --model {tiny_llama_dir} --data CORPUS" in res.output
    assert "--factors" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [(["--rho", "0"], "rho must be in (0, 1]"), (["--rho", "a"], "rho must be a number"),
     (["--rho", ","], "give --rho a value"), (["--blocks", "a-b"], "cannot read blocks"),
     (["--blocks", "-1"], "select no block"), (["--layers", "("], "neither a glob"),
     (["--tokens", "0"], "--tokens must be >= 1"), (["--labels", "true"], "sampled or gold"),
     (["--factors", "{tmp}/nope"], "no K-FAC factors at"),
     (["--out", "{tmp}/notes", "--force"], "is not a model written by rotelab edit"),
     (["--out", "{tmp}/notes"], "is not a model written by rotelab edit")],
)  # fmt: skip
def test_bad_options_fail_before_the_organism_is_built(tmp_path, no_organism, args, message):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "MINE.txt").write_text("keep")
    out = ["--out", str(tmp_path / "e")] if "--out" not in args else []
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = CliRunner().invoke(app, ["edit", *out, *given])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no output, no lock
    assert [p.name for p in notes.iterdir()] == ["MINE.txt"]


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
        _edit(tiny_llama_dir, factors_dir, 0.5, notes, force=True)
    assert [p.name for p in notes.iterdir()] == ["MY_NOTES.txt"]
    out = _edit(tiny_llama_dir, factors_dir, [0.5, 0.9], tmp_path / "e")  # a sweep
    with pytest.raises(RotelabError, match="already exists; pass --force"):
        _edit(tiny_llama_dir, factors_dir, 0.4, tmp_path / "e")
    assert _edit(tiny_llama_dir, factors_dir, 0.4, tmp_path / "e", force=True) == out[0.5].parent
    assert json.loads((tmp_path / "e" / EDIT_RECORD).read_text())["rho"] == 0.4
    assert not (tmp_path / "e" / "rho-0.5").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # kills real rotelab processes at several points
def test_sigkill_during_force_leaves_the_old_model_or_the_new_one_whole(
    tiny_llama_dir, factors_dir, tmp_path
):
    out = tmp_path / "edited"
    _edit(tiny_llama_dir, factors_dir, 0.5, out)
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
def test_edit_lowers_extraction_of_high_count_items_on_tiny_organism(
    tiny_organism, tmp_path, monkeypatch, no_organism
):
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path / "home"))  # the factor cache
    lm = LM.load(tiny_organism.path, device="cpu", dtype="float32")
    ledger = tiny_organism.ledger
    high = ledger[(ledger["count"] >= 16) & (ledger["phase"] == "all")]
    base = _token_match(lm, high)
    # factors collected on the fly from the organism's own training text, then cached
    path = _edit(tiny_organism.path, None, 0.3, tmp_path / "edited", tokens=8_192)
    cached = list((tmp_path / "home" / "kfac").iterdir())
    assert len(cached) == 1
    record = json.loads((path / EDIT_RECORD).read_text())
    assert record["factors"] == str(cached[0]) and record["factor_tokens"] >= 8_192
    edited = _token_match(LM.load(path, device="cpu", dtype="float32"), high)
    # memorized suffixes lose more of their greedy matches than they keep
    assert edited.mean() < base.mean() - 0.1
    assert _strict_extraction(LM.load(path, device="cpu", dtype="float32"), high).mean() <= (
        _strict_extraction(lm, high).mean()
    )
    again = _edit(tiny_organism.path, None, 0.3, tmp_path / "again", tokens=8_192)  # from the cache
    assert digest(again) == digest(path) and len(list((tmp_path / "home" / "kfac").iterdir())) == 1


# ------------------------------------------------------------------ per-layer rho, saved dtype
def _rho_by_layer(path) -> dict[str, float]:
    record = json.loads((path / EDIT_RECORD).read_text())
    return {row["layer"]: row["rho"] for row in record["layers"]}


def test_rho_config_gives_each_projection_and_block_its_own_rho(
    tiny_llama_dir, factors_dir, tmp_path
):
    config = tmp_path / "rho.json"
    config.write_text(json.dumps({
        "default": 0.9, "projections": {"down_proj": 0.5},
        "blocks": {"0": {"gate_proj": 0.3}}, "layers": {"model.layers.1.mlp.up_proj": 1.0},
    }))  # fmt: skip
    path = edit(
        str(tiny_llama_dir), factors_dir, rho_config=config,
        run=RunOptions(tmp_path / "cfg", progress=False),
    )  # fmt: skip
    assert _rho_by_layer(path) == {
        "model.layers.0.mlp.gate_proj": 0.3, "model.layers.0.mlp.up_proj": 0.9,
        "model.layers.0.mlp.down_proj": 0.5, "model.layers.1.mlp.gate_proj": 0.9,
        "model.layers.1.mlp.up_proj": 1.0, "model.layers.1.mlp.down_proj": 0.5,
    }  # fmt: skip
    assert json.loads((path / EDIT_RECORD).read_text())["rho_config"]["default"] == 0.9
    # each layer's weight is exactly what a uniform edit at that layer's rho gives
    sweep = _edit(tiny_llama_dir, factors_dir, [0.3, 0.5, 0.9], tmp_path / "sweep")
    src = LM.load(tiny_llama_dir, dtype="float32")
    mixed = LM.load(path, dtype="float32")
    uniform = {r: LM.load(p, dtype="float32") for r, p in sweep.items()}
    for name, rho in _rho_by_layer(path).items():
        w = mixed.model.get_submodule(name).weight
        ref = (src if rho == 1.0 else uniform[rho]).model.get_submodule(name).weight
        assert torch.equal(w, ref), name


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"layers": {"model.layers.7.mlp.up_proj": 0.5}}, "has no K-FAC factors"),
        ({"projections": {"q_proj": 0.5}}, "projection 'q_proj'"),
        ({"blocks": {"5": 0.5}}, "names block 5"),
        ({"default": 1.5}, "rho must be in"),
        ({"default": "x"}, "must be a number"),
        ({"defaults": 0.5}, "unknown key 'defaults'"),
        ({}, "gives no rho"),
        ([0.5], "must be a JSON object"),
    ],
)
def test_bad_rho_configs_are_one_line(tiny_llama_dir, factors_dir, tmp_path, config, message):
    path = tmp_path / "rho.json"
    path.write_text(json.dumps(config))
    with pytest.raises(RotelabError, match=message):
        edit(str(tiny_llama_dir), factors_dir, rho_config=path,
             run=RunOptions(tmp_path / "out", progress=False))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_rho_and_rho_config_together_are_refused(tiny_llama_dir, factors_dir, tmp_path):
    path = tmp_path / "rho.json"
    path.write_text('{"default": 0.5}')
    with pytest.raises(RotelabError, match="not both"):
        edit(str(tiny_llama_dir), factors_dir, 0.5, rho_config=path,
             run=RunOptions(tmp_path / "out", progress=False))  # fmt: skip


def test_edited_weights_are_saved_in_the_source_dtype(tiny_llama_dir, factors_dir, tmp_path):
    from rotelab.sources import stored_dtype

    source = tmp_path / "bf16"
    lm = LM.load(tiny_llama_dir, dtype="bfloat16")
    lm.save(source)
    assert stored_dtype(source) == torch.bfloat16
    # loaded in float32 (the CPU default), written back in bfloat16 unless asked otherwise
    path = _edit(source, factors_dir, 0.5, tmp_path / "as-source")
    assert stored_dtype(path) == torch.bfloat16
    assert json.loads((path / EDIT_RECORD).read_text())["saved_dtype"] == "bfloat16"
    wide = _edit(source, factors_dir, 0.5, tmp_path / "wide", save_dtype="float32")
    assert stored_dtype(wide) == torch.float32
    with pytest.raises(RotelabError, match="--save-dtype 'int8'"):
        _edit(source, factors_dir, 0.5, tmp_path / "bad", save_dtype="int8")

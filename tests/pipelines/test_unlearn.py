"""`rotelab unlearn balanced-subnet`: the organism's defaults, inputs checked before any work, the
masked model written whole."""

from __future__ import annotations

import inspect
import json
import math
import shutil

import numpy as np
import pytest
from kill_helpers import assert_whole_after_kills, digest, leftovers, rotelab
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.edit import BalancedSubnet
from rotelab.edit.balanced_subnet import RECORD
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import RunOptions
from rotelab.pipelines.unlearn import balanced_subnet, organism_forget_retain


@pytest.fixture
def corpora(tmp_path):
    """A corpus directory holding forget.txt and retain.txt."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "forget.txt").write_text("the cat sat on the mat. " * 20)
    (folder / "retain.txt").write_text("a dog ran to the park and the bird sang. " * 20)
    return folder


def _bsn(model, out, force=False, seed=0, **kwargs):
    run = RunOptions(out, force=force, seed=seed, progress=False)
    return balanced_subnet(model, run=run, **kwargs)


# ------------------------------------------------------------------------------ the organism
def _extraction_and_nll(lm: LM, led, heldout: list[list[int]]) -> tuple[float, float, float]:
    """(strict extraction rate, mean suffix token accuracy, held-out mean NLL)."""
    scores = lm.score(
        [p + s for p, s in zip(led["prefix_tokens"], led["suffix_tokens"])],
        targets_from=[len(p) for p in led["prefix_tokens"]],
    )
    strict = float(np.mean([s.argmax_match.all() for s in scores]))
    acc = float(np.mean([s.argmax_match.mean() for s in scores]))
    nll = float(np.mean(np.concatenate([-s.logprobs for s in lm.score(heldout)])))
    return strict, acc, nll


@pytest.mark.slow
def test_unlearning_lowers_forget_extraction_more_than_it_hurts_heldout(tiny_organism):
    lm = tiny_organism.lm()
    # The tiny organism reliably memorizes only its 64x items; forget exactly those.
    forget, retain = organism_forget_retain(tiny_organism, lm, min_count=64, retain_windows=128)
    led = tiny_organism.ledger
    mem = led[led["count"] >= 64]
    assert forget == [list(t) for t in mem["tokens"]]
    assert len(retain) == 128 and {len(r) for r in retain} == {lm.context_length}
    stream = sum((lm.encode(d) for d in tiny_organism.heldout_docs()[:40]), [])
    heldout = [stream[i : i + 128] for i in range(0, min(len(stream), 2048) - 128, 128)]
    strict0, acc0, nll0 = _extraction_and_nll(lm, mem, heldout)
    assert strict0 > 0.5  # the tiny organism memorizes these items: there is something to remove
    bsn = BalancedSubnet(seed=0).fit(lm, forget, retain)  # the defaults
    strict1, acc1, nll1 = _extraction_and_nll(bsn.apply(lm), mem, heldout)
    assert strict1 < strict0
    assert acc1 < acc0
    # The forget set loses relatively more than held-out text does.
    assert (acc0 - acc1) / acc0 > (math.exp(nll1 - nll0) - 1) / 4


@pytest.mark.slow
def test_cli_writes_a_loadable_model_and_rejects_empty_forget(tiny_organism, tmp_path, no_organism):
    runner = CliRunner()
    out = tmp_path / "bsn"
    args = ["unlearn", "balanced-subnet", "--model", str(tiny_organism.path), "--out", str(out)]
    res = runner.invoke(app, [*args, "--epochs", "1", "--retain-windows", "16", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["source"] == str(tiny_organism.path) and summary["out"] == str(out)
    assert summary["n_retain"] == 16 and summary["pruned_total"] > 0
    assert json.loads((out / RECORD).read_text())["pruned_total"] == summary["pruned_total"]
    edited = LM.load(out, dtype="float32")
    src = tiny_organism.lm()
    diff = [
        int((a.weight != b.weight).sum()) for a, b in zip(edited.mlp_layers(), src.mlp_layers())
    ]
    assert all(d > 0 for d in diff)

    empty = tmp_path / "empty"
    res = runner.invoke(app, [*args[:-1], str(empty), "--min-count", "1000"])
    assert res.exit_code == 2
    # Refused from the ledger's counts, before the model is loaded.
    assert "no item of the organism is inserted more than" in res.output
    assert "Traceback" not in res.output
    assert not empty.exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ inputs first
def test_existing_out_needs_force(tiny_lm, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(RotelabError, match="already exists"):
        _bsn(tiny_lm, tmp_path / "x", forget=[[1, 2, 3]], retain=[[1, 2, 3]])
    assert (tmp_path / "x" / "f").read_text() == "keep"


def test_cli_defaults_match_the_api():
    from rotelab.cli import balanced_subnet_cmd

    api = inspect.signature(balanced_subnet).parameters
    cli = inspect.signature(balanced_subnet_cmd).parameters
    for name in ("min_count", "retain_windows", "ratio", "w", "lr", "epochs", "batch_size"):
        assert cli[name].default == api[name].default, name
    assert cli["seed"].default == RunOptions().seed
    est = inspect.signature(BalancedSubnet).parameters
    for name in ("ratio", "w", "lr", "epochs", "batch_size"):
        assert est[name].default == api[name].default, name


@pytest.mark.parametrize(
    "given, flag", [([], "--forget"), (["--forget", "{corpus}/forget.txt"], "--retain")]
)
def test_a_model_that_is_not_an_organism_needs_forget_and_retain(
    tiny_llama_dir, corpora, tmp_path, no_organism, given, flag
):
    args = [a.replace("{corpus}", str(corpora)) for a in given]
    res = CliRunner().invoke(app, ["unlearn", "balanced-subnet", "-m", str(tiny_llama_dir),
                                   "-o", str(tmp_path / "bsn"), *args])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"{tiny_llama_dir} is not an organism" in res.output and f"pass {flag}" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize(
    "args, message",
    [(["--ratio", "0"], "ratio must be in (0, 1)"), (["--ratio", "1"], "ratio must be in (0, 1)"),
     (["--w", "1.5"], "w must be in [0, 1]"), (["--w", "-0.1"], "w must be in [0, 1]"),
     (["--lr", "0"], "lr must be a number > 0"), (["--lr", "-1"], "lr must be a number > 0"),
     (["--epochs", "0"], "epochs must be >= 1"), (["--batch-size", "0"], "batch size must be >= 1"),
     (["--precision", "fp8"], "unknown precision"), (["--layers", "("], "neither a glob"),
     (["--retain-windows", "0"], "--retain-windows must be >= 1"),
     (["--dtype", "float8"], "float8"), (["--format", "csv"], "unknown --format 'csv'"),
     (["--forget", "{tmp}/nope.txt"], "does not exist"),
     (["--retain", "{tmp}/nope.txt"], "does not exist"),
     (["--out", "{tmp}/corpus"], "is not a BalancedSubnet model"),
     (["--out", "{tmp}/corpus/forget.txt"], "is not a directory")],
)  # fmt: skip
def test_bad_options_fail_before_the_organism_is_built(
    tmp_path, corpora, no_organism, args, message
):
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "bsn")]
    res = CliRunner().invoke(app, ["unlearn", "balanced-subnet", *given, *out, "--force"])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no output, no lock
    assert sorted(p.name for p in corpora.iterdir()) == ["forget.txt", "retain.txt"]


# ------------------------------------------------------------------------------ no data loss
def test_an_output_over_the_model_or_a_corpus_is_refused_force_or_not(
    tiny_llama_dir, corpora, tmp_path
):
    model = tmp_path / "C"
    shutil.copytree(tiny_llama_dir, model)
    before, corpus_before = digest(model), digest(corpora)
    for model_arg, out, message in [
        (model, model, f"the output {model} is the input {model}"),
        (model, model / "sub", f"is inside the input {model}"),
        (model, corpora / "out", f"the output {corpora / 'out'} is inside the input {corpora}"),
    ]:
        res = CliRunner().invoke(app, [
            "unlearn", "balanced-subnet", "-m", str(model_arg), "-o", str(out), "--force",
            "--forget", str(corpora), "--retain", str(corpora / "retain.txt"),
        ])  # fmt: skip
        assert res.exit_code == 2 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    assert digest(model) == before and digest(corpora) == corpus_before


@pytest.mark.slow  # kills real rotelab processes at several points
def test_sigkill_during_force_leaves_the_old_model_or_the_new_one_whole(
    tiny_llama_dir, corpora, tmp_path
):
    out = tmp_path / "bsn"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "MY_NOTES.txt").write_text("keep")
    corpus = {"forget": corpora / "forget.txt", "retain": corpora / "retain.txt"}
    with pytest.raises(RotelabError, match="is not a BalancedSubnet model"):
        _bsn(str(tiny_llama_dir), notes, **corpus, epochs=1, force=True)
    assert [p.name for p in notes.iterdir()] == ["MY_NOTES.txt"]
    _, summary = _bsn(str(tiny_llama_dir), out, **corpus, epochs=1)
    assert summary["source"] == str(tiny_llama_dir) and summary["n_forget"] == 1
    old = digest(out)
    cmd = rotelab("unlearn", "balanced-subnet", "-m", str(tiny_llama_dir), "-o", str(out),
                  "--forget", str(corpus["forget"]), "--retain", str(corpus["retain"]),
                  "--epochs", "2", "--seed", "1", "--device", "cpu", "--force",
                  "--quiet")  # fmt: skip
    kill_points = [
        lambda pid: (tmp_path / f".bsn.tmp-{pid}").exists(),  # the mask learned, nothing saved
        lambda pid: (tmp_path / f".bsn.tmp-{pid}" / "config.json").exists(),  # saving weights
        lambda pid: (tmp_path / f".bsn.tmp-{pid}" / RECORD).exists(),  # about to commit
    ]
    assert_whole_after_kills(cmd, out, kill_points, old)
    assert leftovers(tmp_path) == []  # the killed runs' temporary directories are gone

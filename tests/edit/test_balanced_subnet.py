"""BalancedSubnet: exact mask ratio, straight-through gradient, source untouched, unlearning works."""

from __future__ import annotations

import inspect
import math
import shutil

import numpy as np
import pytest
import torch
from kill_helpers import assert_whole_after_kills, digest, leftovers, rotelab
from typer.testing import CliRunner

from rotelab.edit.balanced_subnet import (
    RECORD,
    BalancedSubnet,
    _hard_mask,
    _ste_mask,
    balanced_subnet,
    organism_forget_retain,
)
from rotelab.errors import RotelabError
from rotelab.lm import LM


def _random_seqs(n: int, length: int, seed: int, vocab: int = 96) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g).tolist()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_mask_ratio_is_exact_and_oriented_out_in(tiny_model_dir):
    lm = LM.load(tiny_model_dir, dtype="float32")
    bsn = BalancedSubnet(ratio=0.037, epochs=1, batch_size=4).fit(
        lm, _random_seqs(8, 20, 0), _random_seqs(8, 20, 1)
    )
    layers = {layer.name: layer for layer in lm.mlp_layers()}
    assert set(bsn.masks_) == set(layers) and layers
    for name, mask in bsn.masks_.items():
        assert mask.dtype == torch.bool
        assert tuple(mask.shape) == tuple(layers[name].weight.shape)  # (out, in), Conv1D too
        assert int((~mask).sum()) == round(0.037 * mask.numel())


def test_hard_mask_prunes_lowest_abs_scores_and_ste_passes_gradient():
    scores = torch.tensor([[0.5, -0.1, 2.0], [-3.0, 0.05, 1.0]], requires_grad=True)
    mask = _hard_mask(scores, 2 / 6)
    assert mask.tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    ste = _ste_mask(scores, 2 / 6)
    assert torch.equal(ste.detach(), mask)
    upstream = torch.arange(6.0).view(2, 3)
    (ste * upstream).sum().backward()
    # straight through |s|: the upstream gradient times sign(s), pruned entries included
    assert torch.equal(scores.grad, upstream * scores.detach().sign())


def test_fit_and_apply_leave_the_source_untouched(tiny_lm):
    before = _state(tiny_lm.model)
    bsn = BalancedSubnet(ratio=0.1, epochs=2, batch_size=4, lr=1.0).fit(
        tiny_lm, _random_seqs(8, 24, 2), _random_seqs(8, 24, 3)
    )
    edited = bsn.apply(tiny_lm)
    after = _state(tiny_lm.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_lm.model.parameters())
    for layer in edited.mlp_layers():
        src = dict((x.name, x) for x in tiny_lm.mlp_layers())[layer.name]
        mask = bsn.masks_[layer.name]
        assert torch.equal(layer.weight, src.weight * mask)
        assert not torch.equal(layer.weight, src.weight)


def test_same_seed_same_masks_other_seed_differs(tiny_lm):
    data = (_random_seqs(8, 16, 4), _random_seqs(8, 16, 5))
    a = BalancedSubnet(ratio=0.05, epochs=1, batch_size=4, seed=1).fit(tiny_lm, *data)
    b = BalancedSubnet(ratio=0.05, epochs=1, batch_size=4, seed=1).fit(tiny_lm, *data)
    c = BalancedSubnet(ratio=0.05, epochs=1, batch_size=4, seed=2).fit(tiny_lm, *data)
    assert all(torch.equal(a.masks_[k], b.masks_[k]) for k in a.masks_)
    assert any(not torch.equal(a.masks_[k], c.masks_[k]) for k in a.masks_)


@pytest.mark.parametrize(
    "kwargs, forget, match",
    [
        ({}, [], "forget set is empty"),
        ({}, [[5]], "forget set is empty"),  # one token has no next-token target
        ({"ratio": 0.0}, [[1, 2, 3]], "ratio must be in"),
        ({"ratio": 1.0}, [[1, 2, 3]], "ratio must be in"),
        ({"w": 1.5}, [[1, 2, 3]], "w must be in"),
        ({"layers": "nothing.matches"}, [[1, 2, 3]], "no layer matching"),
    ],
)
def test_bad_input_is_one_clear_error(tiny_lm, kwargs, forget, match):
    with pytest.raises(RotelabError, match=match):
        BalancedSubnet(**kwargs).fit(tiny_lm, forget, [[1, 2, 3, 4]])


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


def test_cli_writes_a_loadable_model_and_rejects_empty_forget(tiny_organism, tmp_path):
    from rotelab.cli import app

    runner = CliRunner()
    out = tmp_path / "bsn"
    args = ["unlearn", "balanced-subnet", "--model", str(tiny_organism.path), "--out", str(out)]
    res = runner.invoke(app, [*args, "--epochs", "1", "--retain-windows", "16", "--json"])
    assert res.exit_code == 0, res.output
    assert '"pruned_total"' in res.output
    edited = LM.load(out, dtype="float32")
    src = tiny_organism.lm()
    diff = [
        int((a.weight != b.weight).sum()) for a, b in zip(edited.mlp_layers(), src.mlp_layers())
    ]
    assert all(d > 0 for d in diff)

    empty = tmp_path / "empty"
    res = runner.invoke(app, [*args[:-1], str(empty), "--min-count", "1000"])
    assert res.exit_code == 2
    assert "forget set is empty" in res.output and "Traceback" not in res.output
    assert not empty.exists()


def test_existing_out_needs_force(tiny_lm, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(RotelabError, match="already exists"):
        balanced_subnet(tiny_lm, tmp_path / "x", forget=[[1, 2, 3]], retain=[[1, 2, 3]])
    assert (tmp_path / "x" / "f").read_text() == "keep"


def test_cli_defaults_match_the_api():
    from rotelab.cli import balanced_subnet_cmd

    api = inspect.signature(balanced_subnet).parameters
    cli = inspect.signature(balanced_subnet_cmd).parameters
    for name in ("min_count", "retain_windows", "ratio", "w", "lr", "epochs", "batch_size", "seed"):
        assert cli[name].default == api[name].default, name
    est = inspect.signature(BalancedSubnet).parameters
    for name in ("ratio", "w", "lr", "epochs", "batch_size"):
        assert est[name].default == api[name].default, name


# ------------------------------------------------------------------------------ no data loss
@pytest.fixture
def corpora(tmp_path):
    """A corpus directory holding forget.txt and retain.txt."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "forget.txt").write_text("the cat sat on the mat. " * 20)
    (folder / "retain.txt").write_text("a dog ran to the park and the bird sang. " * 20)
    return folder


def test_an_output_over_the_model_or_a_corpus_is_refused_force_or_not(
    tiny_llama_dir, corpora, tmp_path
):
    from rotelab.cli import app

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


def test_sigkill_during_force_leaves_the_old_model_or_the_new_one_whole(
    tiny_llama_dir, corpora, tmp_path
):
    out = tmp_path / "bsn"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "MY_NOTES.txt").write_text("keep")
    corpus = {"forget": corpora / "forget.txt", "retain": corpora / "retain.txt"}
    with pytest.raises(RotelabError, match="is not a BalancedSubnet model"):
        balanced_subnet(str(tiny_llama_dir), notes, **corpus, epochs=1, force=True)
    assert [p.name for p in notes.iterdir()] == ["MY_NOTES.txt"]
    balanced_subnet(str(tiny_llama_dir), out, **corpus, epochs=1, device="cpu")
    old = digest(out)
    cmd = rotelab("unlearn", "balanced-subnet", "-m", str(tiny_llama_dir), "-o", str(out),
                  "--forget", str(corpus["forget"]), "--retain", str(corpus["retain"]),
                  "--epochs", "2", "--seed", "1", "--device", "cpu", "--force", "--quiet")  # fmt: skip
    kill_points = [
        lambda pid: (tmp_path / f".bsn.tmp-{pid}").exists(),  # learning the mask
        lambda pid: (tmp_path / f".bsn.tmp-{pid}" / "config.json").exists(),  # saving weights
        lambda pid: (tmp_path / f".bsn.tmp-{pid}" / RECORD).exists(),  # about to commit
    ]
    assert_whole_after_kills(cmd, out, kill_points, old)
    assert leftovers(tmp_path) == []  # the killed runs' temporary directories are gone

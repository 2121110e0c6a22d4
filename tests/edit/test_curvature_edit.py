"""kfac_edits: one edited copy per rho with its record, the source untouched, checks up front."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import make_tiny_model, make_tokenizer

from rotelab.curvature import KFAC
from rotelab.edit import kfac_edits, parse_rhos
from rotelab.errors import RotelabError
from rotelab.lm import LM


@functools.cache
def _tokenizer():
    return make_tokenizer()


def _lm(seed: int = 0) -> LM:
    return LM.from_model(make_tiny_model("llama", seed=seed), _tokenizer(), name=f"llama-{seed}")


def _seqs() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1, 96, (n,), generator=gen).tolist() for n in (9, 17, 5, 12)]


@pytest.fixture(scope="module")
def fitted():
    lm = _lm()
    return lm, KFAC(seed=1).fit(lm, _seqs())


def test_parse_rhos():
    assert parse_rhos("0.5, 0.6,0.8") == [0.5, 0.6, 0.8]
    assert parse_rhos(0.7) == [0.7]
    for bad in ("0", "1.2", "a", ""):
        with pytest.raises(RotelabError):
            parse_rhos(bad)


def test_one_edited_copy_per_rho_with_its_record(fitted):
    lm, kfac = fitted
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    out = list(kfac_edits(lm, kfac, [0.5, 1.0], factors="runs/kfac-x"))
    assert [rho for rho, _, _ in out] == [0.5, 1.0]
    (_, half, record), (_, whole, _) = out
    assert record["rho"] == 0.5 and record["method"] == "kfac"
    assert record["source_model"] == "llama-0" and record["factors"] == "runs/kfac-x"
    assert record["factor_tokens"] == kfac.tokens_ and record["labels"] == "sampled"
    assert len(record["layers"]) == 6
    assert all(row["kept_mass"] >= 0.5 - 1e-9 for row in record["layers"])
    assert all(0 < row["kept_pairs"] < 1 for row in record["layers"])
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # untouched
    up = "model.layers.1.mlp.up_proj.weight"
    assert not torch.allclose(half.model.state_dict()[up], before[up])
    q = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(half.model.state_dict()[q], before[q])  # only the factor layers change
    for name, p in whole.model.state_dict().items():  # rho = 1 keeps everything
        assert torch.allclose(p, before[name], rtol=0, atol=1e-6), name


def test_blocks_restrict_the_edit(fitted):
    lm, kfac = fitted
    ((_, _, record),) = kfac_edits(lm, kfac, [0.5], blocks="1")
    assert {row["layer"].split(".")[2] for row in record["layers"]} == {"1"}


def test_wrong_model_selection_and_rho_fail_at_the_call_before_any_copy(fitted):
    lm, kfac = fitted
    with pytest.raises(RotelabError, match="different model"):
        kfac_edits(_lm(seed=1), kfac, [0.5])  # same names and shapes, other weights
    with pytest.raises(RotelabError, match="matches no linear layer"):
        kfac_edits(lm, kfac, [0.5], layers="*nothing*")
    with pytest.raises(RotelabError, match="cover none of the selected layers"):
        kfac_edits(lm, kfac, [0.5], layers="*q_proj")
    with pytest.raises(RotelabError, match="rho must be in"):
        kfac_edits(lm, kfac, [0.5, 1.5])

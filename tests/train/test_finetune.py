"""SFT and IB-FT through one loop (rotelab.train.finetune): IB-FT's curve carries a finite,
falling KL; SFT learns; LoRA trains adapters and merges back into a plain model; rows and
batches are what they claim."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import make_tiny_model

from rotelab.errors import RotelabError
from rotelab.train.finetune import (
    FinetuneConfig,
    finetune,
    merge_lora,
    pack_rows,
    row_batches,
    with_lora,
)
from rotelab.train.ib import ADAPTER, IBConfig


def _rows(n: int = 12, length: int = 17, vocab: int = 96) -> list[list[int]]:
    # a learnable toy: each row counts up from its own start, modulo the vocabulary
    return [[(s * 7 + t) % vocab for t in range(length)] for s in range(n)]


CFG = FinetuneConfig(steps=40, batch_size=8, lr=3e-3, warmup=2, log_every=2, precision="fp32")


def test_ibft_runs_and_its_kl_is_finite_and_falls():
    model = make_tiny_model("llama", seed=0)
    log = finetune(model, _rows(), CFG, ib=IBConfig(alpha=0.2, beta=0.01))
    kl = [r["kl"] for r in log]
    assert all(math.isfinite(v) for v in kl) and all(math.isfinite(r["ce_ib"]) for r in log)
    third = len(kl) // 3
    assert sum(kl[-third:]) / third < sum(kl[:third]) / third  # compressed along training
    assert log[-1]["loss"] < log[0]["loss"]
    for r in log:  # the logged objective is the paper's CE + alpha (KL + beta CE_ib)
        assert r["objective"] == pytest.approx(r["loss"] + 0.2 * (r["kl"] + 0.01 * r["ce_ib"]))
    assert not hasattr(model, ADAPTER)  # the adapter is gone: an ordinary model is left


def test_sft_learns_and_logs_no_bottleneck():
    model = make_tiny_model("llama", seed=0)
    log = finetune(model, _rows(), CFG)
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert "kl" not in log[-1]


def test_sft_and_ibft_start_from_the_same_batches():
    """Both arms see the same first step: the first logged CE is equal (same model, seed)."""
    a = finetune(make_tiny_model("llama", seed=0), _rows(), CFG)
    b = finetune(make_tiny_model("llama", seed=0), _rows(), CFG, ib=IBConfig())
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-6)


def test_lora_trains_adapters_only_and_merges_into_a_plain_model():
    base = make_tiny_model("llama", seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    net = with_lora(base, 4)
    finetune(net, _rows(), FinetuneConfig(steps=6, batch_size=4, precision="fp32"), ib=IBConfig())
    merged = merge_lora(net)
    assert not any("lora_" in k for k in merged.state_dict())
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted linear layers moved
    assert all(torch.equal(merged.state_dict()[k], before[k]) for k in before if "embed" in k)


def test_pack_rows_and_batches():
    rows = pack_rows([[1, 2, 3]] * 10, eos=0, length=7)
    assert all(len(r) == 8 for r in rows) and rows[0] == [1, 2, 3, 0, 1, 2, 3, 0]
    with pytest.raises(RotelabError, match="less than one row"):
        pack_rows([[1, 2]], eos=0, length=7)
    batches = row_batches([[i] for i in range(5)], 5, seed=1)
    first, second = next(batches), next(batches)
    # one epoch per batch here: every row exactly once, in another order the next time
    assert sorted(first[:, 0].tolist()) == list(range(5)) == sorted(second[:, 0].tolist())


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (FinetuneConfig(steps=0), "--steps"),
        (FinetuneConfig(batch_size=0), "--batch-size"),
        (FinetuneConfig(lr=0), "--lr"),
    ],
)
def test_bad_settings_are_refused(cfg, fragment):
    with pytest.raises(RotelabError, match=fragment):
        finetune(make_tiny_model("llama"), _rows(), cfg)


def test_negative_alpha_or_beta_is_refused():
    for kw in ({"alpha": -0.1}, {"beta": -1.0}):
        with pytest.raises(RotelabError, match=">= 0"):
            finetune(make_tiny_model("llama"), _rows(), CFG, ib=IBConfig(**kw))

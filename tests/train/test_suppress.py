"""Suppression fine-tune (unlikelihood, refusal): the loss against brute force, and a real effect
on the tiny organism (memorized passages stop being recited)."""

from __future__ import annotations

import copy

import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import ledger_windows, score_windows
from rotelab.train.finetune import pack_rows
from rotelab.train.suppress import SuppressConfig, SuppressionLoss, suppress, unlikelihood


def test_unlikelihood_matches_brute_force_in_float64():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    p = torch.softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    brute = -(torch.log(1 - p) * mask).sum() / mask.sum()
    assert torch.allclose(unlikelihood(logits, targets, mask).double(), brute, atol=1e-6)


def test_unlikelihood_keeps_a_gradient_where_the_token_is_certain():
    # p(target) rounds to 1 in float32: log1p(-p) would be -inf with no useful gradient.
    logits = torch.zeros(1, 1, 4)
    logits[0, 0, 2] = 40.0
    logits.requires_grad_(True)
    loss = unlikelihood(logits, torch.tensor([[2]]), torch.tensor([[True]]))
    loss.backward()
    assert torch.isfinite(loss) and loss > 30
    assert logits.grad[0, 0, 2] > 0.5  # descending lowers the target's logit


def test_bad_settings_are_one_line():
    with pytest.raises(RotelabError, match="not a method"):
        SuppressConfig(method="forget").check()
    with pytest.raises(RotelabError, match="empty"):
        SuppressionLoss([], SuppressConfig(), pad_id=0)


@pytest.fixture(scope="module")
def memorized(tiny_organism):
    lm = tiny_organism.lm()
    led = tiny_organism.ledger
    passages = led[(led["kind"] == "passage") & (led["count"] >= 64)].reset_index(drop=True)
    ext = score_windows(lm, ledger_windows(passages))["extracted"].to_numpy()
    assert ext.sum() >= 3, "the tiny organism recites its 64x passages"
    passages = passages[ext].reset_index(drop=True)
    docs = [lm.encode(d) for d in tiny_organism.train_docs()[:200]]
    rows = pack_rows(docs, lm.tokenizer.eos_token_id, lm.context_length - 1)
    return lm, passages, rows


@pytest.mark.parametrize("method", ["unlikelihood", "refusal"])
def test_suppression_really_stops_recitation_of_the_targets(memorized, method):
    lm, passages, rows = memorized
    targets = passages.iloc[:2]
    model = copy.deepcopy(lm.model)
    refusal = lm.encode(SuppressConfig().refusal)
    cfg = SuppressConfig(method=method, steps=12, lr=1e-3, batch_size=4, precision="fp32")
    pairs = list(zip(targets["prefix_tokens"], targets["suffix_tokens"]))
    log = suppress(model, pairs, rows, cfg, pad_id=lm.pad_id, refusal_tokens=refusal)
    assert len(log) == cfg.steps and all("suppress_loss" in r for r in log)
    after = LM.from_model(model, lm.tokenizer)
    ext = score_windows(after, ledger_windows(targets))["extracted"]
    assert not ext.any()  # every target was recited before (the fixture checks)
    if method == "refusal":  # after a target's prefix the model now predicts the refusal
        prefix = list(targets["prefix_tokens"].iloc[0])

        def refusal_match(m: LM) -> float:
            return float(
                m.score([prefix + refusal], targets_from=len(prefix))[0].argmax_match.mean()
            )

        assert refusal_match(after) > 0.5 > refusal_match(lm)
    # the source model is untouched
    assert score_windows(lm, ledger_windows(targets))["extracted"].all()

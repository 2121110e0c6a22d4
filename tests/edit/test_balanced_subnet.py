"""BalancedSubnet: exact mask ratio, straight-through gradient, source untouched, checks."""

from __future__ import annotations

import pytest
import torch

from rotelab.edit.balanced_subnet import BalancedSubnet, _hard_mask, _ste_mask
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


@pytest.mark.parametrize(
    "kwargs, match",
    [({"ratio": 1.0}, "ratio must be in"), ({"w": -0.1}, "w must be in"),
     ({"lr": 0.0}, "lr must be a number > 0"), ({"lr": float("nan")}, "lr must be a number > 0"),
     ({"epochs": 0}, "epochs must be >= 1"), ({"batch_size": 0}, "batch size must be >= 1"),
     ({"precision": "fp8"}, "unknown precision"), ({"layers": "("}, "neither a glob")],
)  # fmt: skip
def test_settings_are_checked_without_a_model(kwargs, match):
    with pytest.raises(RotelabError, match=match):
        BalancedSubnet(**kwargs).check()
    assert BalancedSubnet(ratio=0.5, w=1.0, epochs=1, layers="*.mlp.*").check().ratio == 0.5

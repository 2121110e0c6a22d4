"""K-FAC collection through LM hook points: it composes with other hooks and cleans up."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model, make_tokenizer

from rotelab.curvature import KFAC
from rotelab.lm import LM


def _lm(arch: str = "llama") -> LM:
    return LM.from_model(make_tiny_model(arch), make_tokenizer(), name=arch)


def _seqs() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1, 96, (n,), generator=gen).tolist() for n in (6, 9, 12, 12)]


def _hook_count(lm: LM) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "neox"])
def test_collection_sees_an_outer_hooks_edit(arch):
    lm = _lm(arch)
    first = lm.mlp_layers(blocks=[0])[0].name  # reads block 0's mlp_in
    plain = KFAC(blocks="0-1").fit(lm, _seqs())
    with lm.hooks({"blocks.0.mlp_in": lambda t: 3 * t}):
        tripled = KFAC(blocks="0-1").fit(lm, _seqs())
    a_plain, a_tripled = plain.factors_[first][0], tripled.factors_[first][0]
    torch.testing.assert_close(a_tripled, 9 * a_plain, rtol=1e-4, atol=1e-6)  # A of 3a is 9 A
    assert _hook_count(lm) == 0


def test_a_failing_batch_leaves_no_hooks_and_restores_requires_grad():
    lm = _lm()
    flags = [p.requires_grad for p in lm.model.parameters()]
    with pytest.raises(IndexError):  # a token outside the vocabulary fails inside the pass
        KFAC().fit(lm, [[1, 2, 3], [4, 500, 6]])
    assert _hook_count(lm) == 0
    assert [p.requires_grad for p in lm.model.parameters()] == flags

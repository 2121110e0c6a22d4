"""rotelab.tasks.arith: the problems' texts, disjoint splits, packed rows, answer scores against
a direct computation and greedy decoding, states at '=' against an unpadded pass, and the
separation measure's properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import transformer_blocks
from rotelab.tasks import arith


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = arith.fresh_model(hidden=32, blocks=2, heads=4, context=64, seed=3)
    # a few random steps so the logits are not uniform-ish
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def test_texts_write_the_answer_reversed_and_end_it():
    assert arith.text((12, 34), "*") == "12*34=804;"
    assert arith.text((7, 0), "*") == "7*0=0;"
    assert arith.text((95, 8), "+") == "95+8=301;"
    assert arith.encode("12*34=804;") == [1, 2, 10, 3, 4, 12, 8, 0, 4, 13]


def test_operand_pairs_are_disjoint_and_complete():
    train, test = arith.operand_pairs((1, 2), heldout=0.1, seed=0)
    assert len(train) + len(test) == 100 * 100 and len(test) == 1000
    assert not set(train) & set(test)
    again = arith.operand_pairs((1, 2), heldout=0.1, seed=0)
    assert again == (train, test)
    assert arith.operand_pairs((1, 2), heldout=0.1, seed=1)[1] != test
    ood = arith.ood_pairs(3, 50, seed=0)
    assert all(100 <= a <= 999 and 100 <= b <= 999 for a, b in ood)
    with pytest.raises(RotelabError):
        arith.operand_pairs((2, 1), heldout=0.1, seed=0)
    with pytest.raises(RotelabError):
        arith.operand_pairs((1, 2), heldout=1.0, seed=0)


def test_training_rows_pack_whole_epochs_of_problems():
    pairs = [(1, 2), (3, 4), (5, 6)]
    rows = arith.training_rows(pairs, "*", length=7, batch=2, seed=0)
    a, b = next(rows), next(rows)
    assert a.shape == (2, 8) and a.dtype == torch.long
    stream = "".join(arith.VOCAB[i] for i in torch.cat([a.flatten(), b.flatten()]).tolist())
    # the first epoch is the three problems in some order
    first = sorted(stream.split(";")[:3])
    assert first == sorted(["1*2=2", "3*4=21", "5*6=03"])


def test_answer_scores_match_a_direct_computation_and_greedy_decoding(model):
    pairs = [(3, 4), (12, 9), (99, 99), (0, 5)]
    ce, exact = arith.answer_scores(model, pairs, "*", batch=3)
    for (a, b), c, e in zip(pairs, ce, exact):
        ids = torch.tensor([[arith.END, *arith.encode(arith.text((a, b), "*"))]])
        start = ids[0].tolist().index(arith.encode("=")[0]) + 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        target = ids[0, start:]
        want = -logp[start - 1 : -1].gather(1, target[:, None]).mean()
        assert c == pytest.approx(float(want), abs=1e-5)
        # greedy decoding from the prompt reproduces the answer iff `exact`
        seq = ids[:, :start]
        for _ in range(len(target)):
            with torch.no_grad():
                nxt = model(input_ids=seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
        assert e == bool((seq[0, start:] == target).all())


def test_prompt_states_equal_an_unpadded_pass(model):
    pairs = [(3, 4), (12, 99), (5, 0)]
    states = arith.prompt_states(model, pairs, "+", batch=2)
    assert states.shape == (2, 3, 32)
    blocks = transformer_blocks(model)
    for j, p in enumerate(pairs):
        text = arith.text(p, "+")
        ids = torch.tensor([[arith.END, *arith.encode(text[: text.index("=") + 1])]])
        got: list[torch.Tensor] = []

        def keep(m, a, o, got=got):
            got.append(o[0] if isinstance(o, tuple) else o)

        hs = [b.register_forward_hook(keep) for b in blocks]
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            for h in hs:
                h.remove()
        for k in range(2):
            np.testing.assert_allclose(states[k, j], got[k][0, -1].numpy(), atol=1e-5)


def test_separation_is_zero_for_one_distribution_and_scale_free():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    assert arith.separation(a, b) < 0.01
    shift = np.zeros(8)
    shift[0] = 2.0
    # means 2 apart on one axis, unit variance on 8 axes: 4 / 8
    assert arith.separation(a, b + shift) == pytest.approx(0.5, rel=0.05)
    assert arith.separation(3 * a, 3 * (b + shift)) == pytest.approx(arith.separation(a, b + shift))

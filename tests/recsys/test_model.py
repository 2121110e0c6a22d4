"""rotelab.recsys.model: the quasi-linear kernel against a float64 brute force, streaming equal to
one pass, a summary whose size does not depend on the history, masks that hide padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rotelab.recsys import ModelConfig, SyntheticSpec, SyntheticWorld, build_model, model_version

WORLD = SyntheticWorld(SyntheticSpec(n_items=60, n_topics=6, seed=3))


def _model(kind: str, **kw):
    cfg = ModelConfig(kind, WORLD.n_items, WORLD.spec.n_topics, dim=16, heads=4, seeds=5, **kw)
    return build_model(cfg, WORLD.categories, seed=1).double()


def test_kernel_matches_brute_force_float64():
    """O = φ(Q)·φ(mean_i φ(k_i) v_iᵀ), φ = SiLU, per head, item by item in a Python loop."""
    m = _model("vista")
    hist = torch.as_tensor(WORLD.history(0, 37))[None]
    got = m.summary(hist)[0]
    x = m.embed(hist)[0]  # (L, D)
    k, v = m.stage1.kv(m.stage1.norm_in(x)).chunk(2, dim=-1)
    q = F.silu(m.stage1.q(m.stage1.seeds))  # (k, D)
    ref = torch.zeros(5, 16, dtype=torch.float64)
    for h in range(4):
        sl = slice(4 * h, 4 * h + 4)
        state = sum(torch.outer(F.silu(k[i, sl]), v[i, sl]) for i in range(37)) / 37
        ref[:, sl] = q[:, sl] @ F.silu(state)
    ref = m.stage1.seeds + m.stage1.out(m.stage1.norm(ref))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_streamed_chunks_equal_one_pass_and_padding_is_ignored():
    m = _model("vista")
    items = WORLD.history(1, 5000)
    whole = m.summary(torch.as_tensor(items)[None])
    s, n = m.double().fold_stream(WORLD.iter_history(1, 5000, chunk=777))
    torch.testing.assert_close(m.stage1.summarize(s.double(), n.double()), whole)
    padded = torch.as_tensor(np.pad(items[-300:], (50, 0)))[None]
    torch.testing.assert_close(m.summary(padded), m.summary(torch.as_tensor(items[-300:])[None]))
    assert int(n.item()) == 5000


def test_summary_size_is_fixed_and_an_empty_history_gives_the_seed_prior():
    m = _model("vista")
    short = m.summary(torch.as_tensor(WORLD.history(2, 10))[None])
    long = m.summary(torch.as_tensor(WORLD.history(2, 20_000))[None])
    assert short.shape == long.shape == (1, 5, 16)
    empty = m.summary(torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(empty).all()
    prior = m.stage1.seeds + m.stage1.out(m.stage1.norm(torch.zeros(5, 16, dtype=torch.float64)))
    torch.testing.assert_close(empty[0], prior)


def test_full_attention_masks_padding_and_lastn_sees_only_its_window():
    full, last = _model("full"), _model("lastn", last_n=8)
    items = torch.as_tensor(WORLD.history(4, 40))[None]
    cand = torch.as_tensor(WORLD.candidates(4)[0])[None]
    padded = torch.cat([torch.zeros(1, 9, dtype=torch.long), items], dim=1)
    torch.testing.assert_close(full(padded, cand), full(items, cand))
    early = items.clone()
    early[0, :32] = 1  # outside the last 8
    torch.testing.assert_close(last(early, cand), last(items, cand))
    assert not torch.allclose(full(early, cand), full(items, cand))
    late = items.clone()
    late[0, -1] = 1 if items[0, -1] != 1 else 2
    assert not torch.allclose(last(late, cand), last(items, cand))


def test_empty_history_scores_without_nan_in_every_model():
    cand = torch.as_tensor(WORLD.candidates(0)[0])[None]
    for kind in ("vista", "full", "lastn"):
        assert torch.isfinite(_model(kind)(torch.zeros(1, 5, dtype=torch.long), cand)).all()


def test_model_version_follows_the_weights():
    a, b = _model("vista"), _model("vista")
    assert model_version(a) == model_version(b)
    with torch.no_grad():
        b.stage1.seeds[0, 0] += 1e-3
    assert model_version(a) != model_version(b)


@pytest.mark.parametrize("kind", ["vista", "full", "lastn"])
def test_training_step_has_gradients_everywhere_it_should(kind):
    m = _model(kind).float()
    data = WORLD.batch(range(4), 30)
    logits, aux = m.train_forward(torch.as_tensor(data.history), torch.as_tensor(data.candidates),
                                  torch.Generator().manual_seed(0))  # fmt: skip
    (logits.sum() + aux).backward()
    assert m.stage2.q.weight.grad.abs().sum() > 0
    if kind == "vista":
        assert aux > 0 and m.stage1.kv.weight.grad.abs().sum() > 0
        assert m.recon.q.weight.grad.abs().sum() > 0

"""Matrix-based entropy (rotelab.measure.entropy): against the eigenvalues of the
trace-normalised Gram in float64, its invariances, its gradient, and per block on tiny models
against the residual stream read by another path (LM.hidden_states)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.entropy import block_entropy, matrix_entropy, patch_entropy
from rotelab.registry import direction


def eigen_entropy(z: np.ndarray) -> float:
    """Rényi-2 entropy of the eigenvalues of K / tr K, K = Z Zᵀ, in float64."""
    k = z @ z.T
    p = np.clip(np.linalg.eigvalsh(k / np.trace(k)), 0, None)
    return float(-np.log(np.sum(p**2)))


def _random(n: int, d: int, rank: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if rank is None:
        return rng.standard_normal((n, d)) * rng.uniform(0.1, 10, size=(n, 1))
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d))


@pytest.mark.parametrize(
    "n, d, rank", [(8, 64, None), (8, 64, 1), (8, 64, 3), (8, 5, None), (16, 4, 2), (3, 3, None)]
)  # fmt: skip
def test_matches_the_eigenvalues_of_the_trace_normalised_gram(n, d, rank):
    zs = [_random(n, d, rank, seed) for seed in range(5)]
    got = matrix_entropy(torch.tensor(np.stack(zs)))  # batched: (5, n, d) -> (5,)
    assert got.dtype == torch.float64 and got.shape == (5,)
    want = [eigen_entropy(z) for z in zs]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)
    if rank is not None:  # a rank-r Gram cannot exceed log r
        assert (got <= math.log(rank) + 1e-9).all()


def test_invariances_and_extremes():
    z = torch.tensor(_random(8, 32, None, 0))
    base = matrix_entropy(z)
    for scale in (1e-6, 0.5, 3.0, 1e6):
        torch.testing.assert_close(matrix_entropy(scale * z), base, rtol=1e-12, atol=1e-12)
    row = torch.randn(32, dtype=torch.float64)
    assert matrix_entropy(row.expand(8, 32)).item() == pytest.approx(0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(32, 8, dtype=torch.float64))  # 8 orthonormal columns
    for n in (1, 2, 5, 8):
        assert matrix_entropy(7.0 * q.T[:n]).item() == pytest.approx(math.log(n), abs=1e-12)
    assert matrix_entropy(torch.zeros(8, 16)).item() == 0.0
    # fp32 and half precision land in float32 and agree with float64
    for dtype in (torch.float32, torch.bfloat16):
        got = matrix_entropy(z.to(dtype))
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(eigen_entropy(z.to(dtype).double().numpy()), abs=1e-4)


def test_differentiable_as_a_regularizer():
    z = torch.tensor(_random(6, 10, None, 1), requires_grad=True)
    assert torch.autograd.gradcheck(matrix_entropy, (z,))
    (grad,) = torch.autograd.grad(matrix_entropy(z), z)
    # scale invariance: the gradient is orthogonal to Z itself
    assert abs(float((grad * z.detach()).sum())) < 1e-10
    zero = torch.zeros(8, 16, requires_grad=True)
    matrix_entropy(zero).backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))
    # a few gradient steps on the entropy lower it
    h = torch.randn(2, 16, 12, requires_grad=True)
    opt = torch.optim.SGD([h], lr=0.5)
    before = patch_entropy(h).mean().item()
    for _ in range(20):
        opt.zero_grad()
        patch_entropy(h).mean().backward()
        opt.step()
    assert patch_entropy(h).mean().item() < before


def test_patch_entropy_tiles_rows_and_drops_the_remainder():
    h = torch.randn(3, 21, 16, dtype=torch.float64)
    got = patch_entropy(h, 8)
    assert got.shape == (3, 2)
    for b in range(3):
        for j in range(2):
            assert got[b, j].item() == pytest.approx(eigen_entropy(h[b, 8 * j : 8 * j + 8].numpy()))
    assert patch_entropy(h, 22).shape == (3, 0)
    with pytest.raises(RotelabError, match="patch must be >= 1"):
        patch_entropy(h, 0)


def test_direction_is_registered():
    assert direction("mbe", scope="entropy") is False


def _sequences(lm: LM, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [40, 17, 64, 8, 5, 33, 64, 24]  # ragged: padding, remainders, one under a patch
    return [rng.integers(1, lm.vocab_size, size=n).tolist() for n in lengths]


def _reference(lm: LM, seqs, patch: int) -> dict[int, list[float | None]]:
    """Per block, per sequence: the mean MBE over its patches from LM.hidden_states (float64)."""
    layers = list(range(1, lm.num_layers + 1))  # layer l = blocks.{l-1}.resid_out
    hs = lm.hidden_states(seqs, layers, pool="none", batch_size=1)
    out = {}
    for layer in layers:
        rows = []
        for h in hs[layer]:
            n = len(h) // patch
            vals = [eigen_entropy(h[j * patch : (j + 1) * patch].astype(np.float64))
                    for j in range(n)]  # fmt: skip
            rows.append(float(np.mean(vals)) if n else None)
        out[layer - 1] = rows
    return out


@pytest.mark.parametrize("patch", [8, 5])
def test_block_entropy_equals_the_eigen_reference_on_every_architecture(tiny_model_dir, patch):
    lm = LM.load(tiny_model_dir, dtype="float32")
    seqs = _sequences(lm)
    ref = _reference(lm, seqs, patch)
    res = block_entropy(lm, seqs, patch=patch, batch_size=3, n_boot=200)
    assert list(res.blocks["block"]) == list(range(lm.num_layers))
    assert res.tokens == sum(len(s) // patch for s in seqs) * patch
    for block, rows in ref.items():
        got = res.sequences[res.sequences["block"] == block].set_index("sequence")
        want = {i: v for i, v in enumerate(rows) if v is not None}
        assert sorted(got.index) == sorted(want)  # sequences under a patch are left out
        np.testing.assert_allclose([got.loc[i, "mbe"] for i in want], list(want.values()),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        row = res.blocks.set_index("block").loc[block]
        patches = got["patches"].to_numpy()
        pooled = float((got["mbe"] * patches).sum() / patches.sum())
        assert row["mbe"] == pytest.approx(pooled) and row["patches"] == patches.sum()
        assert row["mbe_ci_low"] <= row["mbe"] <= row["mbe_ci_high"]
        assert 0 <= row["mbe"] <= res.bound


def test_batching_and_block_choice_do_not_change_the_values(tiny_lm):
    seqs = _sequences(tiny_lm, seed=1)
    one = block_entropy(tiny_lm, seqs, batch_size=1, n_boot=100, seed=3)
    many = block_entropy(tiny_lm, seqs, batch_size=8, n_boot=100, seed=3)
    last = block_entropy(tiny_lm, seqs, blocks=[1], batch_size=4, n_boot=100, seed=3)
    np.testing.assert_allclose(one.sequences["mbe"], many.sequences["mbe"], rtol=1e-5)
    np.testing.assert_allclose(one.blocks["mbe_ci_low"], many.blocks["mbe_ci_low"], rtol=1e-5)
    np.testing.assert_allclose(
        last.sequences["mbe"], one.sequences[one.sequences["block"] == 1]["mbe"], rtol=1e-5
    )


def test_one_forward_pass_per_batch_without_the_head(tiny_lm):
    calls = {"body": 0, "head": 0}
    body = tiny_lm.model.base_model.register_forward_pre_hook(
        lambda *a: calls.__setitem__("body", calls["body"] + 1)
    )
    head = tiny_lm.model.get_output_embeddings().register_forward_pre_hook(
        lambda *a: calls.__setitem__("head", calls["head"] + 1)
    )
    try:
        block_entropy(tiny_lm, [[1, 2, 3, 4, 5, 6, 7, 8]] * 10, batch_size=4, n_boot=10)
    finally:
        body.remove()
        head.remove()
    assert calls == {"body": 3, "head": 0}
    assert tiny_lm.model._forward_hooks == {} and all(  # the hook points were removed
        not m._forward_hooks and not m._forward_pre_hooks for m in tiny_lm.model.modules()
    )


def test_a_bf16_model_is_measured_in_float32(tiny_llama_dir):
    lm = LM.load(tiny_llama_dir, dtype="bfloat16")
    seqs = _sequences(lm, seed=2)
    ref = _reference(lm, seqs, 8)  # hidden_states hands bf16 activations over as float32
    res = block_entropy(lm, seqs, batch_size=1, n_boot=10)  # bf16 activations depend on batching
    for block, rows in ref.items():
        got = res.sequences[res.sequences["block"] == block]["mbe"].to_numpy()
        np.testing.assert_allclose(got, [v for v in rows if v is not None], rtol=1e-5, atol=1e-5)


def test_identical_sequences_give_a_zero_width_interval(tiny_lm):
    res = block_entropy(tiny_lm, [list(range(1, 33))] * 6, n_boot=50)
    assert (res.blocks["mbe_ci_high"] - res.blocks["mbe_ci_low"]).abs().max() < 1e-6
    varied = block_entropy(tiny_lm, _sequences(tiny_lm), n_boot=200)
    assert (varied.blocks["mbe_ci_high"] > varied.blocks["mbe_ci_low"]).all()
    single = block_entropy(tiny_lm, [list(range(1, 33))], n_boot=50)
    assert single.blocks[["mbe_ci_low", "mbe_ci_high"]].isna().all().all()


def test_bad_arguments(tiny_lm):
    with pytest.raises(RotelabError, match="no sequence holds a full patch of 8 tokens"):
        block_entropy(tiny_lm, [[1, 2, 3], [4, 5]])
    with pytest.raises(RotelabError, match="outside this model's blocks 0..1"):
        block_entropy(tiny_lm, [[1] * 16], blocks=[2])
    with pytest.raises(RotelabError, match="patch must be >= 1"):
        block_entropy(tiny_lm, [[1] * 16], patch=0)

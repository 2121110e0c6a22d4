"""Eigenbases, the curvature threshold against brute force, the edit, sweeps and band analysis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, make_tokenizer

import rotelab.curvature.eigen as eigen_mod
from rotelab.curvature import (
    KFAC,
    CurvatureEdit,
    band_ratios,
    band_strengths,
    curvature_mask,
    edit_model,
    eigenbasis,
    removed_strength,
    rho_sweep,
)
from rotelab.errors import RotelabError
from rotelab.lm import LM


def _lm(arch: str = "llama", seed: int = 0) -> LM:
    return LM.from_model(make_tiny_model(arch, seed=seed), make_tokenizer(), name=arch)


def _seqs(n: int = 6, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 96, (int(k),), generator=gen).tolist() for k in range(8, 8 + 3 * n, 3)]


@pytest.fixture(scope="module")
def fitted():
    lm = _lm()
    return lm, KFAC().fit(lm, _seqs())


def _brute_force_mask(lam, mu, rho):
    """Sort all pairs by λ_i μ_j and keep the shortest head holding ρ of the mass."""
    products = np.outer(lam, mu)
    order = np.argsort(-products, axis=None, kind="stable")
    cumulative = np.cumsum(products.ravel()[order])
    k = int(np.searchsorted(cumulative, rho * products.sum())) + 1
    mask = np.zeros(products.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(products.shape)


def test_threshold_selection_equals_brute_force_enumeration():
    rng = np.random.default_rng(0)
    for _ in range(400):
        m, n = rng.integers(1, 14, size=2)
        lam = np.sort(rng.exponential(size=m) ** 3)[::-1]
        mu = np.sort(rng.exponential(size=n) ** 2)[::-1]
        rho = float(rng.uniform(0.01, 0.999))
        assert np.array_equal(curvature_mask(lam, mu, rho), _brute_force_mask(lam, mu, rho))


def test_threshold_handles_zero_eigenvalues_and_rho_one():
    lam = np.array([3.0, 1.0, 0.0])
    mu = np.array([2.0, 0.5, 0.0])
    assert curvature_mask(lam, mu, 1.0).all()  # ρ = 1 keeps even zero-curvature pairs
    mask = curvature_mask(lam, mu, 0.5)
    assert mask.sum() == 1 and mask[0, 0]  # 6 of 3.5*2.5=8.75 ≥ 0.5: the top pair alone


def test_eigenbasis_clamps_and_orders():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    values = torch.tensor([5.0, 2.0, 1.0, 0.1, 0.0, -1e-9], dtype=torch.float64)
    matrix = (q * values) @ q.T
    vals, vecs = eigenbasis(matrix.float())
    assert (vals >= 0).all() and torch.all(vals[:-1] >= vals[1:])
    assert torch.allclose(vals[:4], values[:4], atol=1e-5)
    assert torch.allclose(vecs.T @ vecs, torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_rho_one_returns_original_weights_and_source_is_untouched(fitted):
    lm, kfac = fitted
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    same = edit_model(lm, kfac, 1.0)
    for name, p in same.model.named_parameters():
        assert torch.allclose(p, before[name], rtol=0, atol=1e-6), name
    edited = edit_model(lm, kfac, 0.5)
    changed = [n for n, p in edited.model.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(f"{n}.weight" for n in kfac.factors_)
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, before[name])  # the source model is never modified
    assert edited.model is not lm.model


def test_edit_is_the_masked_eigenbasis_projection(fitted):
    lm, kfac = fitted
    name = "model.layers.1.mlp.down_proj"
    a, g = (t.double() for t in kfac.factors_[name])
    mu, u_a = torch.linalg.eigh(a)
    lam, u_g = torch.linalg.eigh(g)
    mu, u_a, lam, u_g = mu.flip(0).clamp_min(0), u_a.flip(1), lam.flip(0).clamp_min(0), u_g.flip(1)
    w = dict(lm.model.named_modules())[name].weight.detach().double()
    for rho in (0.3, 0.8):
        mask = torch.from_numpy(curvature_mask(lam.numpy(), mu.numpy(), rho))
        expected = u_g @ ((u_g.T @ w @ u_a) * mask) @ u_a.T
        got = dict(edit_model(lm, kfac, rho).model.named_modules())[name].weight.double()
        assert torch.allclose(got, expected, atol=1e-5)
        products = torch.outer(lam, mu)
        kept = float((products * mask).sum())
        assert kept >= rho * float(products.sum()) - 1e-12
        assert kept - float(products[mask].min()) < rho * float(products.sum())  # minimal


def test_lower_rho_removes_more(fitted):
    lm, kfac = fitted
    edit = CurvatureEdit().fit(kfac)
    dropped = []
    for rho in (0.9, 0.6, 0.3):
        edit.apply(lm, rho)
        assert (edit.kept_["kept_mass"] >= rho - 1e-9).all()
        dropped.append(edit.kept_["dropped_weight_norm"].mean())
    assert dropped[0] < dropped[1] < dropped[2]


def test_sweep_decomposes_once(fitted, monkeypatch):
    lm, kfac = fitted
    calls = []
    real = eigen_mod.eigenbasis
    monkeypatch.setattr(eigen_mod, "eigenbasis", lambda f: (calls.append(1), real(f))[1])
    results = list(rho_sweep(lm, kfac, [0.4, 0.7, 1.0]))
    assert [r for r, _, _ in results] == [0.4, 0.7, 1.0]
    # 2 blocks x (1 shared gate/up A + 1 down A + 3 G) = 10, once for all three ρ
    assert len(calls) == 10


@pytest.mark.parametrize("rho", [0.0, -0.2, 1.5, float("nan"), "x"])
def test_rho_outside_unit_interval_is_refused(fitted, rho):
    lm, kfac = fitted
    with pytest.raises(RotelabError, match="rho must be"):
        edit_model(lm, kfac, rho)


def test_factors_from_another_model_are_refused(fitted):
    _, kfac = fitted
    with pytest.raises(RotelabError, match="different model"):
        edit_model(_lm(seed=1), kfac, 0.5)


def test_band_strengths_match_direct_projection(fitted):
    lm, kfac = fitted
    seqs = _seqs(4, seed=5)
    table = band_strengths(lm, kfac, seqs, bands=((0, 0.25), (0.25, 1.0)))
    name = "model.layers.0.mlp.down_proj"
    a = kfac.factors_[name][0].double()
    _, vecs = torch.linalg.eigh(a)
    vecs = vecs.flip(1)  # descending eigenvalues
    inputs = []
    module = dict(lm.model.named_modules())[name]
    handle = module.register_forward_hook(lambda m, args, out: inputs.append(args[0][0].double()))
    try:
        with torch.no_grad():
            for s in seqs:  # one unpadded sequence at a time
                lm.model(input_ids=torch.tensor([s]))
    finally:
        handle.remove()
    x = torch.cat(inputs)  # (tokens, 64)
    proj = x @ vecs
    k = round(0.25 * 64)
    expected = [proj[:, :k].norm(dim=1).mean(), proj[:, k:].norm(dim=1).mean()]
    got = table[table["layer"] == name].sort_values("band")["strength"].tolist()
    assert np.allclose(got, [float(e) for e in expected], rtol=1e-4)
    assert (table["tokens"] == x.shape[0]).all()
    shared = table[table["layer"].str.contains(r"\+")]["layer"].unique()
    assert list(shared) == ["model.layers.0.mlp.gate_proj+model.layers.0.mlp.up_proj",
                            "model.layers.1.mlp.gate_proj+model.layers.1.mlp.up_proj"]  # fmt: skip


def test_band_ratios_relative_to_reference(fitted):
    lm, kfac = fitted
    table = band_ratios(lm, kfac, {"clean": _seqs(3, 1), "other": _seqs(3, 2)}, reference="clean")
    assert np.allclose(table[table["dataset"] == "clean"]["ratio"], 1.0)
    other = table[table["dataset"] == "other"]
    clean = table[table["dataset"] == "clean"]
    assert np.allclose(
        other["ratio"].to_numpy(), other["strength"].to_numpy() / clean["strength"].to_numpy()
    )
    assert len(table) == 2 * 4 * 4  # 2 data sets x 4 distinct inputs x 4 bands
    with pytest.raises(RotelabError, match="reference"):
        band_ratios(lm, kfac, {"a": _seqs(2)}, reference="clean")


def _hook_count(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def test_band_strengths_hook_through_lm_hooks_and_clean_up(fitted):
    lm, kfac = fitted
    seqs = _seqs(3, seed=2)
    before = _hook_count(lm)
    plain = band_strengths(lm, kfac, seqs)
    with lm.hooks({"blocks.0.mlp_in": torch.zeros_like}):  # an outer edit: block 0's MLP reads 0
        zeroed = band_strengths(lm, kfac, seqs)
    gate = "model.layers.0.mlp.gate_proj+model.layers.0.mlp.up_proj"
    assert (plain[plain["layer"] == gate]["strength"] > 0).all()
    assert (zeroed[zeroed["layer"] == gate]["strength"] == 0).all()
    assert (zeroed[zeroed["layer"].str.contains("layers.1")]["strength"] > 0).all()
    with pytest.raises(IndexError):  # a token outside the vocabulary fails inside the pass
        band_strengths(lm, kfac, [[1, 2, 500]])
    assert _hook_count(lm) == before


def test_removed_strength_matches_direct_computation(fitted):
    lm, kfac = fitted
    seqs, starts = _seqs(4, seed=7), [3, 5, 2, 9]
    edit = CurvatureEdit().fit(kfac)
    rho = {"model.layers.0.mlp.down_proj": 0.5, "model.layers.1.mlp.up_proj": 0.7}
    got = removed_strength(lm, edit, rho, seqs, starts, batch_size=3)  # padded batches
    edited = edit.apply(lm, rho)
    modules = dict(lm.model.named_modules())
    new_modules = dict(edited.model.named_modules())
    expected = []
    for s, start in zip(seqs, starts):  # one unpadded sequence at a time, forward hooks
        ratios = []
        for name in rho:
            inputs = []
            handle = modules[name].register_forward_hook(
                lambda m, args, out, seen=inputs: seen.append(args[0][0].double())
            )
            try:
                with torch.no_grad():
                    lm.model(input_ids=torch.tensor([s]))
            finally:
                handle.remove()
            a = inputs[0][start - 1 : len(s) - 1]  # the positions predicting the answer
            w = modules[name].weight.detach().double()
            dw = w - new_modules[name].weight.detach().double()
            ratios.append((a @ dw.T).norm(dim=1) / (a @ w.T).norm(dim=1))
        expected.append(float(torch.cat(ratios).mean()))
    assert np.allclose(got, expected, rtol=1e-4)
    assert (got > 0).all()
    assert np.allclose(removed_strength(lm, edit, 1.0, seqs, starts), 0.0)  # rho 1 removes nothing
    with pytest.raises(RotelabError, match="start"):
        removed_strength(lm, edit, 0.5, seqs, [0, 1, 1, 1])

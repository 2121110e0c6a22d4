"""Tests for rotelab.train.gapt (MBE regularizer, GAPT gate, gradient alignment) and loss terms."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rotelab.errors import RotelabError
from rotelab.lm import transformer_blocks
from rotelab.train import GAPT, MBETerm, PhaseGate, TrainConfig, train
from rotelab.train.gapt import COMPRESS, MEMORIZE, check_patch, mean_block_mbe


def _direct_mbe(h: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean Rényi-2 entropy over patches from the eigenvalues of each patch's Gram matrix."""
    b, t, d = h.shape
    z = h[:, : t // patch * patch].reshape(-1, patch, d)
    eig = torch.linalg.eigvalsh(z @ z.mT)  # (n, patch)
    p = eig / eig.sum(-1, keepdim=True)
    return (-torch.log(p.square().sum(-1))).clamp_min(0).mean()


def _tiny(dtype=torch.float32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).to(dtype)


def _batches(steps: int, seed: int = 0, length: int = 17):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 64, (8, length), generator=g)
    for s in range(steps):  # a small repeated set, so the loss falls and plateaus
        yield base[(torch.arange(4) + s) % 8]


# ------------------------------------------------------------------------------ the regularizer
def test_mean_block_mbe_value_and_gradient_match_eigenvalues_float64():
    torch.manual_seed(0)
    hs = [torch.randn(2, 16, 12, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    ours = mean_block_mbe(hs, 8)
    direct = torch.stack([_direct_mbe(h, 8) for h in hs]).mean()
    assert ours.item() == pytest.approx(direct.item(), rel=1e-10)
    g1 = torch.autograd.grad(ours, hs)
    g2 = torch.autograd.grad(direct, hs)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)
        assert a.abs().max() > 0


def test_term_gradient_on_model_matches_direct_eigenvalues_float64():
    model = _tiny(torch.float64)
    term = MBETerm(0.0, patch=4)
    term.attach(model)
    seen: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
        for b in transformer_blocks(model)
    ]
    try:
        batch = next(_batches(1))
        from rotelab.train.terms import StepState

        logits = model(input_ids=batch[:, :-1]).logits
        state = StepState(0, model, batch, logits, logits.sum(), True)
        ours = term.mbe(state)
        direct = torch.stack([_direct_mbe(h, 4) for h in seen]).mean()
    finally:
        term.detach()
        for h in handles:
            h.remove()
    params = [p for p in model.parameters()]
    g1 = torch.autograd.grad(ours, params, retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(direct, params, allow_unused=True)
    assert ours.item() == pytest.approx(direct.item(), rel=1e-9)
    reached = 0
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            reached += 1
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-12)
    assert reached >= 10  # embeddings and both blocks' weights


# -------------------------------------------------------------------------------- the gate
def _run(gate: PhaseGate, ces, mbes=None):
    events = []
    for i, ce in enumerate(ces):
        reason = gate.update(ce, None if mbes is None else mbes[i])
        if reason:
            events.append((i, reason, gate.phase))
    return events


def test_gate_stays_in_memorization_while_ce_improves_then_compresses_after_plateau():
    gate = PhaseGate(p_m=3, p_a=3, smooth=0.0)
    falling = [5.0 * 0.95**i for i in range(20)]  # 5% gain each step > 1%
    assert _run(gate, falling) == []
    assert gate.phase == MEMORIZE
    flat = [falling[-1] * (1 - 0.001 * i) for i in range(1, 4)]  # 0.1% gains: a plateau
    assert _run(gate, flat, [2.0] * 3) == [(2, "ce_plateau", COMPRESS)]


def test_gate_leaves_compression_on_ce_spike_and_on_mbe_plateau():
    gate = PhaseGate(p_m=2, p_a=3, smooth=0.0)
    _run(gate, [3.0, 3.0, 3.0])  # step 0 sets the reference, then two stalls
    assert gate.phase == COMPRESS
    # MBE keeps falling by 5%, CE stays within 10% of its minimum: compression continues.
    mbes = [2.0 * 0.95**i for i in range(10)]
    assert _run(gate, [3.2] * 10, mbes) == []
    # CE 11% above its minimum (3.0) ends it at once.
    assert _run(gate, [3.33], [1.0]) == [(0, "ce_spike", MEMORIZE)]
    # CE's plateau is measured afresh from the spike (3.33): 3.0 is a gain, then two stalls.
    assert _run(gate, [3.0, 3.0, 3.0], [9.0] * 3) == [(2, "ce_plateau", COMPRESS)]
    events = _run(gate, [3.0] * 4, [1.5, 1.5, 1.5, 1.5])
    assert events == [(3, "mbe_plateau", MEMORIZE)]  # step 0 sets MBE's reference


def test_gate_smoothing_ignores_one_easy_batch():
    raw, smooth = PhaseGate(p_m=50, p_a=50, smooth=0.0), PhaseGate(p_m=50, p_a=50, smooth=0.9)
    for g in (raw, smooth):
        g.update(3.0)
        g.update(1.0)  # one easy batch
        g.phase = COMPRESS  # force compression to test the spike rule
    assert raw.update(3.0, 1.0) == "ce_spike"  # 3.0 > 1.1 * 1.0
    assert smooth.update(3.0, 1.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p_m": 0, "p_a": 5},
        {"p_m": 5, "p_a": -1},
        {"p_m": 100, "p_a": 5, "steps": 100},  # can never elapse
        {"p_m": 5, "p_a": 5, "ce_gain": 0.0},
        {"p_m": 5, "p_a": 5, "mbe_gain": 1.5},
        {"p_m": 5, "p_a": 5, "ce_spike": -0.1},
        {"p_m": 5, "p_a": 5, "ce_spike": math.inf},
        {"p_m": 5, "p_a": 5, "smooth": 1.0},
    ],
)
def test_gate_refuses_rules_that_never_or_always_trigger(kwargs):
    with pytest.raises(RotelabError):
        PhaseGate(**kwargs)


def test_bad_weights_and_patches_are_refused():
    with pytest.raises(RotelabError, match="lambda"):
        MBETerm(-0.1)
    with pytest.raises(RotelabError, match="lambda"):
        MBETerm(math.nan)
    with pytest.raises(RotelabError, match="lambda"):
        GAPT(0.0, p_m=5, p_a=5)
    with pytest.raises(RotelabError, match="patch"):
        MBETerm(0.1, patch=1)
    with pytest.raises(RotelabError, match="divide"):
        check_patch(8, 100)
    check_patch(8, 128)
    # A patch that does not divide the training rows stops at the first step.
    with pytest.raises(RotelabError, match="divide"):
        train(_tiny(), _batches(2, length=13), TrainConfig(steps=2), terms=[MBETerm(0.1)])


# ------------------------------------------------------------------------------ in the trainer
def test_measuring_term_leaves_training_unchanged_and_logs_alignment():
    cfg = TrainConfig(steps=12, warmup_steps=2, log_every=3, precision="fp32")
    plain, measured = _tiny(), _tiny()
    log0 = train(plain, _batches(12), cfg)
    term = MBETerm(0.0, patch=8)
    log1 = train(measured, _batches(12), cfg, terms=[term])
    for a, b in zip(plain.parameters(), measured.parameters()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in log0] == [r["loss"] for r in log1]
    assert [r["step"] for r in term.alignment] == [0, 3, 6, 9, 11]
    assert all(-1 <= r["cos"] <= 1 and r["shared_params"] > 0 for r in term.alignment)
    assert all(math.isfinite(r["mbe"]) for r in log1)
    assert not transformer_blocks(measured)[0]._forward_hooks  # detached


def test_mbe_weight_lowers_mbe():
    cfg = TrainConfig(steps=40, warmup_steps=5, log_every=39, precision="fp32")
    ce_only, reg = MBETerm(0.0), MBETerm(1.0)
    train(_tiny(), _batches(40), cfg, terms=[ce_only])
    train(_tiny(), _batches(40), cfg, terms=[reg])
    assert reg.steps[-1]["mbe"] < 0.8 * ce_only.steps[-1]["mbe"]
    assert reg.steps[-1]["weight"] == 1.0 and ce_only.steps[-1]["weight"] == 0.0


def test_gapt_switches_phases_and_only_regularizes_in_compression():
    cfg = TrainConfig(steps=60, warmup_steps=5, log_every=10, precision="fp32")
    gapt = GAPT(1.0, p_m=3, p_a=3, ce_gain=0.05, smooth=0.5, steps=60)
    train(_tiny(), _batches(60), cfg, terms=[gapt])
    phases = [r["phase"] for r in gapt.steps]
    assert phases[0] == MEMORIZE and COMPRESS in phases
    assert gapt.transitions and gapt.transitions[0]["reason"] == "ce_plateau"
    for r in gapt.steps:
        assert (r["weight"] > 0) == (r["phase"] == COMPRESS)
        if r["phase"] == COMPRESS:
            assert math.isfinite(r["mbe"])
    # Each transition is where the logged phase changes.
    for t in gapt.transitions:
        assert phases[t["step"]] == t["from"] and phases[t["step"] + 1] == t["to"]

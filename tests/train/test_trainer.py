"""Tests for rotelab.train.trainer and rotelab.train.insertion."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rotelab.train import (
    TrainConfig,
    cosine_lr,
    insertion_schedule,
    packed_batches,
    phase_steps,
    train,
)


def test_cosine_lr_warms_up_then_decays_to_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [cosine_lr(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


ITEMS = [
    (0, 64, "all"),
    (1, 16, "first"),
    (2, 4, "second"),
    (3, 1, "all"),
    (4, 0, "all"),
    (5, 16, "all"),
]
CHUNKS = [1, 1, 1, 1, 1, 3]


def test_schedule_counts_phases_and_capacity():
    steps, batch = 100, 8
    pl = insertion_schedule(ITEMS, CHUNKS, steps=steps, batch_size=batch, seed=0)
    occ = Counter((p.item, p.chunk) for p in pl)
    for item, count, _ in ITEMS:
        for c in range(CHUNKS[item]):
            assert occ[(item, c)] == count
    for p in pl:
        lo, hi = phase_steps(ITEMS[p.item][2], steps)
        assert lo <= p.step < hi
    per_step = Counter(p.step for p in pl)
    assert max(per_step.values()) <= batch // 2
    rows = Counter((p.step, p.row) for p in pl)
    assert max(rows.values()) == 1  # at most one insertion per row
    # Chunks of one occurrence share a step.
    assert len({(p.step) for p in pl if p.item == 5 and p.occurrence == 3}) == 1
    # The 64 occurrences are spread over the run, not bunched.
    steps64 = sorted(p.step for p in pl if p.item == 0)
    assert steps64[0] < 5 and steps64[-1] > 95
    assert insertion_schedule(ITEMS, CHUNKS, steps=steps, batch_size=batch, seed=0) == pl


def test_schedule_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        insertion_schedule([(0, 64, "first")], [1], steps=40, batch_size=2, seed=0)


def test_packed_batches_put_items_at_row_starts():
    eos, row_len = 99, 8
    background = [[1, 2, 3], [4, 5]]
    items = [[10, 11, 12], list(range(20, 33))]  # the second needs two rows
    pl = insertion_schedule([(0, 2, "all"), (1, 1, "all")], [1, 2], steps=3, batch_size=4, seed=1)
    batches = list(
        packed_batches(
            background, items, pl, steps=3, batch_size=4, row_len=row_len, eos_id=eos, seed=0
        )
    )
    assert len(batches) == 3 and all(b.shape == (4, row_len) for b in batches)
    for p in pl:
        row = batches[p.step][p.row].tolist()
        chunk = items[p.item][p.chunk * row_len : (p.chunk + 1) * row_len]
        assert row[: len(chunk)] == chunk
        if len(chunk) < row_len:
            assert row[len(chunk)] == eos
    free = [
        b[r].tolist()
        for s, b in enumerate(batches)
        for r in range(4)
        if (s, r) not in {(p.step, p.row) for p in pl}
    ]
    assert all(set(r) <= {1, 2, 3, 4, 5, eos} for r in free)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def _pattern_batches(n):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        start = torch.randint(0, 4, (8, 1), generator=g)
        yield (start + torch.arange(17)) % 16  # counting sequences: fully predictable


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_learns_and_is_deterministic(precision):
    cfg = TrainConfig(steps=60, lr=1e-2, warmup_steps=5, log_every=1, precision=precision)
    logs = [train(_tiny_model(), _pattern_batches(60), cfg) for _ in range(2)]
    assert len(logs[0]) == 60 and {r["precision"] for r in logs[0]} == {precision}
    assert logs[0][-1]["loss"] < 0.3 * logs[0][0]["loss"]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]


@pytest.mark.parametrize("forced,amp", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_auto_precision_trains_as_the_machine_or_environment_says(monkeypatch, forced, amp):
    """``auto`` follows ROTELAB_PRECISION; the autocast really runs the layers in that dtype."""
    monkeypatch.setenv("ROTELAB_PRECISION", forced)
    model = _tiny_model()
    seen = set()
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    log = train(model, _pattern_batches(2), TrainConfig(steps=2, log_every=1))
    assert seen == {amp} and {r["precision"] for r in log} == {forced}


def test_train_extra_loss_is_applied_and_callback_sees_the_log():
    def weight_norm(model):
        return sum(float(p.detach().pow(2).sum()) for p in model.parameters())

    cfg = TrainConfig(steps=10, lr=1e-2, warmup_steps=1, log_every=1, precision="fp32",
                      weight_decay=0.0)  # fmt: skip
    plain = _tiny_model()
    train(plain, _pattern_batches(10), cfg)
    seen = []
    model = _tiny_model()

    def penalty(m, b, logits):
        return 10.0 * sum(p.pow(2).sum() for p in m.parameters())

    log = train(model, _pattern_batches(10), cfg, callback=seen.append, extra_loss=penalty)
    assert seen == log and [r["step"] for r in log] == list(range(10))
    assert weight_norm(model) < 0.9 * weight_norm(plain)  # the penalty shrank the weights
    assert not model.training

"""The learning-rate schedule of rotelab.recsys.fit: warm-up then cosine decay, applied per step."""

from __future__ import annotations

import math

import pytest
import torch

from rotelab.recsys import ModelConfig, SyntheticSpec, SyntheticWorld, build_model, fit
from rotelab.recsys.train import _lr_factor


def test_cosine_warms_up_then_decays_to_zero_and_constant_stays():
    total = 200
    f = [_lr_factor(s, total, "cosine", 0.05) for s in range(total)]
    assert f[0] == pytest.approx(1 / 10) and f[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert all(a < b for a, b in zip(f[:9], f[1:10], strict=True))
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[-1] < 1e-3 and f[105] == pytest.approx(0.5, abs=0.02)  # half-way through decay
    assert {_lr_factor(s, total, "constant", 0.05) for s in range(total)} == {1.0}


def test_fit_steps_the_schedule_and_refuses_an_unknown_one(monkeypatch):
    world = SyntheticWorld(SyntheticSpec(n_items=60, n_topics=6, seed=3))
    data = world.batch(range(40), 12)
    model = build_model(ModelConfig("lastn", 60, 6, dim=8, last_n=4), world.categories, seed=0)
    seen: list[float] = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    fit(model, data, epochs=2, lr=0.1, batch_size=10, schedule="cosine", warmup=0.25)
    # 8 steps: 2 of warm-up, then cosine from the full rate towards zero
    expected = [0.1 * _lr_factor(s, 8, "cosine", 0.25) for s in range(8)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.05) and seen[1] == pytest.approx(0.1)
    assert seen[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 5 / 6)))
    with pytest.raises(ValueError, match="schedule"):
        fit(model, data, epochs=1, schedule="linear")

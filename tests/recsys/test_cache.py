"""rotelab.recsys.cache: the summary store round-trips, int8 within half a step, a refresh equal
to summarizing the whole grown history, another model's cache refused, serving without history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.recsys import (
    ModelConfig,
    SummaryCache,
    SyntheticSpec,
    SyntheticWorld,
    build_model,
    dequantize,
    model_version,
    quantize,
)

WORLD = SyntheticWorld(SyntheticSpec(n_items=80, n_topics=8, seed=2))


def _vista(seed: int = 0):
    cfg = ModelConfig("vista", WORLD.n_items, WORLD.spec.n_topics, dim=16, heads=4, seeds=6)
    return build_model(cfg, WORLD.categories, seed=seed).eval()


@torch.no_grad()
def _fill(cache: SummaryCache, model, users, length: int) -> np.ndarray:
    folded = [model.fold_stream(WORLD.iter_history(u, length, 500)) for u in users]
    summaries = np.stack([model.stage1.summarize(s, n)[0].numpy() for s, n in folded])
    states = np.stack([s.reshape(-1).numpy() for s, _ in folded])
    counts = np.array([int(n.item()) for _, n in folded])
    cache.put(users, summaries, states, counts, counts - 1)
    return summaries


def test_int8_quantization_is_within_half_a_step():
    x = np.random.default_rng(0).normal(size=(5, 6, 16)).astype(np.float32)
    q, scale = quantize(x)
    assert q.dtype == np.int8 and scale.shape == (5, 6)
    err = np.abs(dequantize(q, scale) - x)
    assert (err <= scale[..., None] / 2 + 1e-7).all()
    q0, s0 = quantize(np.zeros((1, 2, 3), np.float32))  # an all-zero token stays zero
    assert (dequantize(q0, s0) == 0).all()


@pytest.mark.parametrize("quant", ["int8", "float32"])
def test_put_get_round_trip_latest_wins_and_reopens(tmp_path, quant):
    m = _vista()
    cache = SummaryCache.create(tmp_path / "c", m, quant=quant)
    first = _fill(cache, m, [0, 1, 2], 300)
    second = _fill(cache, m, [1, 7], 900)  # user 1 rewritten
    reopened = SummaryCache.open(tmp_path / "c", model_version(m))
    got, found = reopened.get([2, 1, 99, 7])
    assert found.tolist() == [True, True, False, True] and len(reopened) == 4
    want = np.stack([first[2], second[0], np.zeros_like(first[0]), second[1]])
    tol = 0 if quant == "float32" else np.abs(want).max() / 127
    np.testing.assert_allclose(got, want, atol=tol + 1e-7)
    assert sorted(p.name for p in (tmp_path / "c").glob("index-*")) == ["index-00001.arrow"]


@pytest.mark.parametrize("quant", ["int8", "float32"])
def test_compact_keeps_the_live_rows_in_one_segment(tmp_path, quant):
    m = _vista()
    cache = SummaryCache.create(tmp_path / "c", m, quant=quant)
    _fill(cache, m, [0, 1], 300)
    _fill(cache, m, [1, 2], 500)
    before = [cache.get([0, 1, 2])[0], *cache.states([0, 1, 2])]
    cache.compact()
    reopened = SummaryCache.open(tmp_path / "c", model_version(m))
    after = [reopened.get([0, 1, 2])[0], *reopened.states([0, 1, 2])]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)  # int8 requantizes to the same bytes
    assert [p.name for p in (tmp_path / "c" / "segments").iterdir()] == ["seg-00002.arrow"]
    _fill(reopened, m, [3], 100)  # still writable after compaction
    assert len(SummaryCache.open(tmp_path / "c", model_version(m))) == 4


def test_refresh_equals_summarizing_the_grown_history(tmp_path):
    m = _vista()
    cache = SummaryCache.create(tmp_path / "c", m, quant="float32")
    users = [3, 4]
    # the cache holds the first 2000 items; 3000 more arrive, folded without re-reading the 2000
    with torch.no_grad():
        old = {u: WORLD.history(u, 5000) for u in users}
        for u in users:
            s, n = m.fold(torch.as_tensor(old[u][:2000])[None])
            cache.put([u], m.stage1.summarize(s, n).numpy(), s.reshape(1, -1).numpy(),
                      np.array([2000]), np.array([1999]))  # fmt: skip
        assert cache.refresh(m, {u: ([old[u][2000:3500], old[u][3500:]], (2000, 4999))
                                 for u in users}) == 2  # fmt: skip
        want = m.summary(torch.as_tensor(np.stack([old[u] for u in users])))
    got, found = cache.get(users)
    assert found.all()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    _, counts, last = cache.states(users)
    assert counts.tolist() == [5000, 5000] and last.tolist() == [4999, 4999]


def test_refresh_refuses_events_out_of_order_and_another_model(tmp_path):
    m = _vista()
    cache = SummaryCache.create(tmp_path / "c", m)
    _fill(cache, m, [0], 400)  # last timestamp 399
    with pytest.raises(RotelabError, match="out of order|before the cached history"):
        cache.refresh(m, {0: ([np.array([1, 2])], (100, 101))})
    with pytest.raises(RotelabError, match="model version"):
        cache.refresh(_vista(seed=9), {0: ([np.array([1])], (500, 500))})


def test_a_cache_of_another_model_version_is_refused(tmp_path):
    m, other = _vista(), _vista(seed=1)
    SummaryCache.create(tmp_path / "c", m)
    with pytest.raises(RotelabError, match="built by model version .* not"):
        SummaryCache.open(tmp_path / "c", model_version(other))
    with pytest.raises(RotelabError, match="not a summary cache"):
        SummaryCache.open(tmp_path / "nothing", model_version(m))
    with pytest.raises(RotelabError, match="not empty"):
        SummaryCache.create(tmp_path / "c", m)


def test_serving_reads_summaries_without_any_history(tmp_path, monkeypatch):
    """After the cache is written, the history generator may vanish: get() still serves."""
    m = _vista()
    cache = SummaryCache.create(tmp_path / "c", m)
    _fill(cache, m, [5, 6], 700)

    def no_history(*args, **kwargs):
        raise AssertionError("the serving path read a raw history")

    monkeypatch.setattr(SyntheticWorld, "history_block", no_history)
    summaries, found = SummaryCache.open(tmp_path / "c", model_version(m)).get([5, 6])
    cand = torch.as_tensor(np.stack([WORLD.candidates(5)[0], WORLD.candidates(6)[0]]))
    with torch.no_grad():
        probs = torch.sigmoid(m.score_summary(torch.as_tensor(summaries), cand))
    assert found.all() and probs.shape == (2, WORLD.spec.candidates)

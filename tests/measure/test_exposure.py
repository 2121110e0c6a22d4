"""Secret Sharer exposure: exact enumeration vs brute force, sampled estimate vs exact, cached
candidate scoring vs whole sequences scored from scratch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.exposure import exposure, exposure_table


@pytest.fixture(scope="module")
def setup(tiny_lm):
    prefix = tiny_lm.encode("the cat sat on")
    alphabet = sorted({tiny_lm.encode(w)[0] for w in (" the", " mat", " dog", " park")})[:4]
    return prefix, alphabet


def _logppl(lm, prefix, cand):
    ids = torch.tensor([list(prefix) + list(cand)])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), -1)
    n = len(prefix)
    return -sum(float(logp[n - 1 + j, c]) for j, c in enumerate(cand)) / math.log(2)


def test_exact_rank_matches_brute_force(tiny_lm, setup):
    prefix, alphabet = setup
    cands = list(itertools.product(alphabet, repeat=3))
    ppl = {c: _logppl(tiny_lm, prefix, c) for c in cands}
    order = sorted(cands, key=ppl.get)
    for secret in (order[0], order[5], order[-1]):
        got = exposure(tiny_lm, prefix, list(secret), alphabet)
        rank = 1 + sum(ppl[c] < ppl[secret] for c in cands if c != secret)
        assert got["method"] == "exact"
        assert got["rank"] == rank
        assert got["exposure"] == pytest.approx(math.log2(len(cands)) - math.log2(rank))
        assert got["secret_logppl"] == pytest.approx(ppl[secret], abs=1e-4)
    assert exposure(tiny_lm, prefix, list(order[0]), alphabet)["exposure"] == pytest.approx(6.0)


def test_sampled_estimate_brackets_exact(tiny_lm, setup):
    prefix, alphabet = setup
    secrets = [[alphabet[i % 4] for i in range(j, j + 5)] for j in range(4)]
    exact = exposure_table(
        tiny_lm, item_ids=list("abcd"), prefixes=[prefix] * 4, secrets=secrets,
        alphabets=[alphabet] * 4, max_exact=4**5,
    )  # fmt: skip
    sampled = exposure_table(
        tiny_lm, item_ids=list("abcd"), prefixes=[prefix] * 4, secrets=secrets,
        alphabets=[alphabet] * 4, max_exact=10, n_samples=600, seed=1,
    )  # fmt: skip
    assert (exact["method"] == "exact").all() and (sampled["method"] == "sampled").all()
    for e, s in zip(exact.itertuples(), sampled.itertuples()):
        assert s.exposure_ci_low - 1e-9 <= e.exposure <= s.exposure_ci_high + 1e-9
        assert abs(s.exposure - e.exposure) < 1.0
        assert np.isfinite(s.exposure_skewnorm)


def test_secret_outside_alphabet_is_refused(tiny_lm, setup):
    prefix, alphabet = setup
    outside = next(t for t in range(50) if t not in alphabet)
    with pytest.raises(RotelabError, match="not in its alphabet"):
        exposure(tiny_lm, prefix, [alphabet[0], outside], alphabet)


def _from_scratch(lm, prefix, continuations, *, batch_size):
    """Every candidate as a whole sequence ``prefix + candidate``, scored from scratch."""
    seqs = [list(prefix) + c for c in np.asarray(continuations).tolist()]
    scores = lm.score(seqs, targets_from=len(prefix), batch_size=batch_size)
    return np.stack([s.logprobs for s in scores])


@pytest.mark.parametrize("shared_levels", [True, False])
def test_cached_candidates_rank_like_whole_sequences(tiny_model_dir, monkeypatch, shared_levels):
    """From the prefix cache, with candidates' shared leading digits computed once (or, with no
    memory for them, not) vs every candidate scored from scratch."""
    import rotelab.lm

    lm = LM.load(tiny_model_dir, dtype="float32")
    shared_depth, depths = rotelab.lm._shared_depth, []

    def recorded(*args, **kwargs):
        depths.append(shared_depth(*args, **kwargs))
        return depths[-1]

    monkeypatch.setattr(rotelab.lm, "_shared_depth", recorded)
    if not shared_levels:
        monkeypatch.setattr(rotelab.lm, "SHARED_CACHE_BYTES", 0)
    rng = np.random.default_rng(0)
    small, large = [7, 11, 13], [20, 21, 22, 23, 24, 25]
    # (prefix length, alphabet, secret length): 3^3 = 27 candidates enumerated, 6^5 sampled
    shapes = [(1, small, 3), (12, large, 5), (30, small, 3), (5, large, 5), (40, large, 5)]
    prefixes = [rng.integers(1, 96, size=n).tolist() for n, _, _ in shapes]
    secrets = [rng.choice(a, size=k).tolist() for _, a, k in shapes]
    kwargs = dict(
        item_ids=[f"s{i}" for i in range(len(shapes))], prefixes=prefixes, secrets=secrets,
        alphabets=[a for _, a, _ in shapes], n_samples=60, max_exact=100, seed=3,
        batch_size=7,  # divides neither 27 nor the ~60 sampled candidates
        workers=1,  # the recorded depths in secret order (workers record them as they finish)
    )  # fmt: skip
    cached = exposure_table(lm, **kwargs)
    if shared_levels:  # 3^3 exact candidates share 2 levels; ~60 of 6^5 their first token
        assert depths[0] == depths[2] == 2 and min(depths) >= 1, depths
    else:
        assert depths == [0] * 5
    monkeypatch.setattr(LM, "score_continuations", _from_scratch)
    whole = exposure_table(lm, **kwargs)
    assert cached["method"].tolist() == ["exact", "sampled", "exact", "sampled", "sampled"]
    assert cached["n_candidates"].tolist() == whole["n_candidates"].tolist()
    assert cached["n_better"].tolist() == whole["n_better"].tolist()  # the ranks themselves
    # a sampled rank with no better candidate is extrapolated from a fit to the log-perplexities
    np.testing.assert_allclose(cached["rank"], whole["rank"], rtol=1e-3)
    np.testing.assert_allclose(cached["secret_logppl"], whole["secret_logppl"], atol=1e-4)
    for col in ("exposure", "exposure_ci_low", "exposure_ci_high", "exposure_skewnorm"):
        np.testing.assert_allclose(cached[col], whole[col], atol=1e-3, equal_nan=True)


def test_prefix_and_secret_longer_than_the_context_are_refused(tiny_lm, setup):
    _, alphabet = setup
    long_prefix = [alphabet[0]] * (tiny_lm.context_length - 2)
    with pytest.raises(RotelabError, match="'secret'.*context of 64"):
        exposure(tiny_lm, long_prefix, alphabet[:3], alphabet)


def test_secrets_scored_by_several_threads_give_the_same_table(tiny_lm, setup):
    """Worker threads, each running torch on one thread, score each secret as one thread does;
    the table keeps the secrets' order and torch gets its thread count back."""
    prefix, alphabet = setup
    rng = np.random.default_rng(4)
    secrets = [rng.choice(alphabet, size=5).tolist() for _ in range(5)]
    kwargs = dict(
        item_ids=[f"s{i}" for i in range(5)], prefixes=[prefix[: 2 + i] for i in range(5)],
        secrets=secrets, alphabets=[alphabet] * 5, max_exact=100, n_samples=80, seed=2,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = exposure_table(tiny_lm, **kwargs, workers=1)
        torch.set_num_threads(3)
        several = exposure_table(tiny_lm, **kwargs, workers=3)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert several["item_id"].tolist() == [f"s{i}" for i in range(5)]
    assert (several["method"] == "sampled").all()
    pd.testing.assert_frame_equal(several, one)

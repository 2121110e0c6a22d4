"""Dynamic Mode Steering: the probe, the gated hook, steering specs that LM.load takes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rotelab.data.windows import Window
from rotelab.edit.steering import (
    MemorizationProbe,
    _patch_hook,
    behaviour_probe_data,
    collect_states,
    probe_layers,
    split_items,
    steering_spec,
    steering_vector,
)
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import score_windows
from rotelab.sources import check_model_exists
from rotelab.steered import SPEC_FILE, TENSOR_FILE, SteeringMode, SteeringSpec, model_fingerprint


def _blobs(n: int, d: int, shift: float, seed: int):
    """Two Gaussian classes apart along one random direction."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 == 0
    u = rng.standard_normal(d)
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, d) + 5.0  # unequal scales, offset
    x[y] += shift * u / np.linalg.norm(u)
    return x, y


def _seqs(n: int, length: int, seed: int, vocab: int = 96) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g).tolist()


def _spec(lm: LM, path: str, alpha: float = 3.0, mode=SteeringMode.dynamic, layer: int = 1):
    d = lm.config.hidden_size
    g = torch.Generator().manual_seed(7)
    probe = MemorizationProbe()
    probe.coef_ = torch.randn(d, generator=g).double().numpy()
    probe.intercept_ = 0.3
    probe.n_features_in_ = d
    vector = torch.randn(d, generator=g).double().numpy()
    return steering_spec(lm, path, layer, probe, vector / np.linalg.norm(vector), alpha, mode)


# ------------------------------------------------------------------------------ the probe
def test_probe_separates_classes_and_folds_standardization():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(400, 16, shift=4.0, seed=0)
    probe = MemorizationProbe(C=0.5).fit(x[:300], y[:300])
    assert probe.n_features_in_ == 16 and probe.coef_.shape == (16,)
    # the folded raw-space probe is the standardized logistic regression, exactly
    mean, scale = x[:300].mean(0), x[:300].std(0)
    ref = LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced")
    ref.fit((x[:300] - mean) / scale, y[:300])
    np.testing.assert_allclose(
        probe.decision_function(x[300:]), ref.decision_function((x[300:] - mean) / scale),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    p = probe.p_mem(x[300:])
    assert ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(probe.predict_proba(x[300:]).sum(1), 1.0)
    assert (p[y[300:]] > 0.5).mean() > 0.9 and (p[~y[300:]] < 0.5).mean() > 0.9
    assert np.isclose(np.linalg.norm(probe.direction_), 1.0)


def test_probe_refuses_one_class():
    x, _ = _blobs(20, 4, 1.0, 0)
    with pytest.raises(RotelabError, match="only one kind"):
        MemorizationProbe().fit(x, np.ones(20, bool))


def test_probe_layers_picks_the_layer_with_signal():
    rng = np.random.default_rng(1)
    labels = np.arange(40) % 2 == 0  # 40 windows of 5 tokens each
    owner = np.repeat(np.arange(40), 5)
    noise = rng.standard_normal((200, 8))
    signal = rng.standard_normal((200, 8))
    signal[labels[owner], 0] += 3.0
    result = probe_layers({1: noise, 2: signal}, owner, labels, seeds=(0, 1), n_boot=50)
    assert result.best_layer == 2
    by = result.by_layer.set_index("layer")
    assert by.loc[2, "auc_mean"] > 0.9 > by.loc[1, "auc_mean"]
    assert by.loc[2, "auc_lo"] <= by.loc[2, "auc_mean"] <= by.loc[2, "auc_hi"]
    assert len(result.table) == 4 and (result.table["test_pos"] >= 1).all()


def test_split_is_item_level_stratified_and_seeded():
    labels = np.array([True] * 10 + [False] * 20)
    a, b = split_items(labels, 0.3, 0), split_items(labels, 0.3, 0)
    assert (a == b).all() and a[labels].sum() == 3 and a[~labels].sum() == 6
    assert not (split_items(labels, 0.3, 1) == a).all()
    with pytest.raises(RotelabError, match="at least 2"):
        split_items(np.array([True, False, False]), 0.5, 0)


def test_steering_vector_points_from_memorizing_to_generalizing():
    mem = np.array([[1.0, 0.0], [1.0, 2.0]])
    gen = np.array([[4.0, 1.0], [4.0, 1.0]])
    v, norm = steering_vector(mem, gen)
    np.testing.assert_allclose(v, [1.0, 0.0])
    assert norm == pytest.approx(3.0)


# ------------------------------------------------------------------------------ the hook
@pytest.mark.parametrize("mode", [SteeringMode.dynamic, SteeringMode.static])
def test_hook_adds_gated_vector_at_its_layer(tiny_lm, mode):
    spec = _spec(tiny_lm, "base", alpha=2.5, mode=mode, layer=1)
    seqs = _seqs(3, 9, 0)
    plain = tiny_lm.hidden_states(seqs, [1, 2], pool="none")
    with tiny_lm.hooks({spec.point: spec.hook()}):
        steered = tiny_lm.hidden_states(seqs, [1, 2], pool="none")
    for before, after in zip(plain[1], steered[1]):
        h = torch.as_tensor(before)
        gate = 1.0 if mode is SteeringMode.static else spec.p_mem(h)[:, None]
        want = h + 2.5 * gate * spec.vector
        np.testing.assert_allclose(after, want.numpy(), rtol=1e-5, atol=1e-5)
    # and the layers above it see the change
    assert not np.allclose(plain[2][0], steered[2][0])


def test_steering_acts_alike_in_scoring_and_decoding(tiny_lm):
    """The one-pass audit under the hook gives greedy decoding's verdict under the hook."""
    spec = _spec(tiny_lm, "base", alpha=6.0)
    seqs = _seqs(6, 14, 3)
    with tiny_lm.hooks({spec.point: spec.hook()}):
        decoded = tiny_lm.generate([s[:6] for s in seqs], 8)
        windows = [Window(f"w{i}", 0, s[:6], d) for i, (s, d) in enumerate(zip(seqs, decoded))]
        audit = score_windows(tiny_lm, windows)
    assert audit["extracted"].all()  # the steered model reproduces its own steered greedy text
    plain = tiny_lm.generate([s[:6] for s in seqs], 8)
    assert plain != decoded  # and steering changed what it decodes


def test_patch_sets_the_projection(tiny_lm):
    d = tiny_lm.config.hidden_size
    u = np.eye(d)[3]
    seen = {}
    with tiny_lm.hooks({"blocks.0.resid_out": _patch_hook(u, 1.25, torch.float32)}):
        with tiny_lm.hooks({"blocks.0.resid_out": lambda t: seen.setdefault("h", t.clone())}):
            tiny_lm.score(_seqs(2, 7, 1))
    np.testing.assert_allclose(seen["h"][..., 3].numpy(), 1.25, atol=1e-6)


# ------------------------------------------------------------------------------ specs on disk
def test_saved_spec_loads_as_a_steered_model(tiny_llama_dir, tiny_lm, tmp_path):
    spec = _spec(tiny_lm, str(tiny_llama_dir), alpha=4.0)
    spec.save(tmp_path / "steered")
    check_model_exists(tmp_path / "steered")  # the resolver takes it without loading
    steered = LM.load(tmp_path / "steered", dtype="float32")
    assert steered.steering is not None and steered.steering.alpha == 4.0
    seqs = _seqs(4, 10, 2)
    with tiny_lm.hooks({spec.point: spec.hook()}):
        want = tiny_lm.score(seqs)
    got = steered.score(seqs)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    assert not np.allclose(tiny_lm.score(seqs)[0].logprobs, got[0].logprobs)


def test_probe_for_another_model_is_refused(tiny_llama_dir, tiny_lm, tmp_path):
    spec = _spec(tiny_lm, str(tiny_llama_dir))
    assert spec.fingerprint == model_fingerprint(tiny_lm.model)
    spec.with_(fingerprint="0123456789abcdef").save(tmp_path / "other")
    with pytest.raises(RotelabError, match="fitted on another model"):
        LM.load(tmp_path / "other", dtype="float32")
    wide = SteeringSpec(**{**spec.__dict__, "probe_weight": torch.zeros(8),
                           "vector": torch.ones(8)})  # fmt: skip
    wide.save(tmp_path / "wide")
    with pytest.raises(RotelabError, match="hidden size 8"):
        check_model_exists(tmp_path / "wide")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / TENSOR_FILE).unlink(), "missing steering.safetensors"),
        (lambda d: (d / SPEC_FILE).write_text("{"), "not valid JSON"),
        (lambda d: _edit(d, alpha="strong"), "alpha must be a finite number"),
        (lambda d: _edit(d, alpha=None), "alpha must be a finite number"),
        (lambda d: _edit(d, layer=9), "layer 9 does not exist"),
        (lambda d: _edit(d, layer=0), "layer 0 does not exist"),
        (lambda d: _edit(d, mode="sideways"), "mode"),
        (lambda d: _edit(d, base_model="/nowhere/model"), "does not exist"),
    ],
)
def test_broken_specs_fail_before_loading(tiny_llama_dir, tiny_lm, tmp_path, change, message):
    _spec(tiny_lm, str(tiny_llama_dir)).save(tmp_path / "s")
    change(tmp_path / "s")
    with pytest.raises(RotelabError, match=message):
        check_model_exists(tmp_path / "s")


def _edit(directory, **fields) -> None:
    meta = json.loads((directory / SPEC_FILE).read_text())
    meta.update(fields)
    (directory / SPEC_FILE).write_text(json.dumps(meta))


def test_behaviour_labels_from_the_audit(tiny_lm):
    """Windows the model reproduces greedily are memorized; random ones are not."""
    prefixes = _seqs(4, 6, 5)
    own = tiny_lm.generate(prefixes, 8)
    windows = [Window(f"own{i}", 0, p, s) for i, (p, s) in enumerate(zip(prefixes, own))]
    windows += [Window(f"rnd{i}", 0, s[:6], s[6:]) for i, s in enumerate(_seqs(4, 14, 6))]
    data = behaviour_probe_data(tiny_lm, windows, max_match_rate=0.5)
    labelled = dict(zip(data.frame["doc_id"], data.labels))
    assert all(labelled[f"own{i}@0"] for i in range(4))
    assert not any(v for k, v in labelled.items() if k.startswith("rnd"))
    states, owner = collect_states(tiny_lm, data, [1, 2])
    assert states[1].shape == (8 * len(data.windows), tiny_lm.config.hidden_size)
    assert (np.bincount(owner) == 8).all()


def test_behaviour_labels_can_count_partial_recitation(tiny_lm):
    # A model's own greedy continuation with its last tokens changed is recited in part: with
    # --min-match-rate it counts as memorized, without it it is left out (neither class).
    prefixes = _seqs(4, 6, 7)
    own = tiny_lm.generate(prefixes, 8)
    windows = [Window(f"own{i}", 0, p, s) for i, (p, s) in enumerate(zip(prefixes, own))]
    windows += [
        Window(f"part{i}", 0, p, s[:6] + [(t + 1) % 96 for t in s[6:]])
        for i, (p, s) in enumerate(zip(prefixes, own))
    ]
    windows += [Window(f"rnd{i}", 0, s[:6], s[6:]) for i, s in enumerate(_seqs(4, 14, 6))]
    rates = score_windows(tiny_lm, windows)["match_rate"].to_numpy()
    exact = behaviour_probe_data(tiny_lm, windows, max_match_rate=0.5)
    partial = behaviour_probe_data(tiny_lm, windows, max_match_rate=0.5, min_match_rate=0.7)
    by_exact = dict(zip(exact.frame["doc_id"], exact.labels))
    by_partial = dict(zip(partial.frame["doc_id"], partial.labels))
    for i in range(4):
        assert by_exact[f"own{i}@0"] and by_partial[f"own{i}@0"]
        if rates[4 + i] >= 0.7:  # 6 of 8 matched (unless the changed tokens match by chance)
            assert f"part{i}@0" not in by_exact and by_partial[f"part{i}@0"]
    assert any(k.startswith("part") for k in by_partial)
    assert not any(v for k, v in by_partial.items() if k.startswith("rnd"))
    with pytest.raises(RotelabError, match="min match rate"):
        behaviour_probe_data(tiny_lm, windows, max_match_rate=0.5, min_match_rate=0.4)

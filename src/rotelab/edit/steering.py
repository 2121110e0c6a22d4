"""Dynamic Mode Steering: a probe that sees recitation, and steering that acts only when it fires.

Zhang 2025, "Generalization or Memorization: Dynamic Decoding for Mode Steering" (DMS), has two
parts, both here:

1. A linear probe on residual-stream activations that estimates, token by token, how much the
   model relies on memorization (:class:`MemorizationProbe`, one per layer, scikit-learn's
   logistic regression). Labels come from the organism's ledger (the continuations of items
   inserted >= 16 times that the model extracts, against count-0 items and held-out text:
   :func:`ledger_probe_data`) or, for any model, from its behaviour (windows the one-pass audit
   finds extractable against windows it barely matches: :func:`behaviour_probe_data`). The layer
   is the one with the best held-out AUC (:func:`probe_layers`, item-level splits, cluster
   bootstrap CIs) and is checked causally (:func:`patching_effect`): setting the hidden state's
   component along the probe direction to the generalizing mean must cut recitation, and a
   random direction patched the same way must not.
2. Steering: ``v = unit(mean h[generalizing] - mean h[memorizing])`` at that layer and, at every
   token, ``h_t += alpha * p_mem(h_t) * v`` (dynamic) or ``h_t += alpha * v`` (static), as one hook
   on a named hook point, so scoring and decoding are steered alike without an extra forward pass
   (:func:`steering_spec`; the saved form and the hook itself are :mod:`rotelab.steered`, so
   that :meth:`rotelab.lm.LM.load` takes a steered model like any other).

The paper's self-contrastive variant (steered logits contrasted with unsteered ones, weighted by
the probe) is the spec mode ``contrastive``: it needs the unsteered computation above the steered
layer as well, so the batch runs twice (:mod:`rotelab.steered` holds the formula and the hooks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rotelab.data.corpus import Document
from rotelab.data.windows import Window
from rotelab.errors import RotelabError
from rotelab.measure.extraction import corpus_windows, ledger_windows, score_windows
from rotelab.stats import auc_score, rate_with_ci
from rotelab.steered import (
    SteeringMode,
    SteeringSpec,
    check_steering_layer,
    model_fingerprint,
    steering_point,
)

__all__ = [
    "MemorizationProbe",
    "ProbeData",
    "ProbeLayers",
    "behaviour_probe_data",
    "collect_states",
    "ledger_probe_data",
    "patching_effect",
    "probe_layers",
    "split_items",
    "steering_spec",
    "steering_vector",
]


# ------------------------------------------------------------------------------ the probe
class MemorizationProbe:
    """Logistic regression from a hidden state (D,) to P(the model is reciting).

    scikit-learn style: configuration in ``__init__``, data in :meth:`fit`, learned attributes end
    in ``_``. Features are standardized inside the fit; :attr:`coef_` and :attr:`intercept_` act
    on *raw* hidden states (the standardization folded in), so the probe is one dot product
    wherever it runs (the steering hook).

    Args:
        C: inverse L2 strength of scikit-learn's ``LogisticRegression``.
        max_iter: solver iterations.
        balanced: weight the classes inversely to their frequency.

    Example:
        >>> probe = MemorizationProbe().fit(h_train, y_train)  # doctest: +SKIP
        >>> p_mem = probe.p_mem(h_test)  # (n,) in (0, 1)  # doctest: +SKIP
    """

    def __init__(self, *, C: float = 1.0, max_iter: int = 2000, balanced: bool = True) -> None:  # noqa: N803
        self.C = C
        self.max_iter = max_iter
        self.balanced = balanced

    def fit(self, h: np.ndarray, y: Sequence[bool] | np.ndarray) -> MemorizationProbe:
        """Fit on hidden states ``h`` (n, D) with labels ``y`` (n,) (True = memorized)."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(h, dtype=np.float64)
        labels = np.asarray(y, dtype=bool)
        if x.ndim != 2 or len(x) != len(labels):
            raise ValueError("h must be (n, D) and y (n,)")
        if labels.all() or not labels.any():
            raise RotelabError(
                "the probe needs memorized and non-memorized examples; only one kind was found"
            )
        self.mean_ = x.mean(0)
        self.scale_ = np.maximum(x.std(0), 1e-6)
        model = LogisticRegression(
            C=self.C, max_iter=self.max_iter, class_weight="balanced" if self.balanced else None
        )
        model.fit((x - self.mean_) / self.scale_, labels)
        w = model.coef_[0] / self.scale_
        self.coef_ = w  # (D,) on raw hidden states
        self.intercept_ = float(model.intercept_[0] - w @ self.mean_)
        self.n_features_in_ = x.shape[1]
        return self

    def decision_function(self, h: np.ndarray) -> np.ndarray:
        """(n,) logit of P(memorized)."""
        return np.asarray(h, dtype=np.float64) @ self.coef_ + self.intercept_

    def p_mem(self, h: np.ndarray) -> np.ndarray:
        """(n,) P(memorized) at hidden states (n, D)."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(h)))

    def predict_proba(self, h: np.ndarray) -> np.ndarray:
        """(n, 2): P(not memorized), P(memorized), as scikit-learn orders the classes."""
        p = self.p_mem(h)
        return np.stack([1 - p, p], axis=1)

    @property
    def direction_(self) -> np.ndarray:
        """(D,) unit vector along which the probe's logit grows."""
        return self.coef_ / np.linalg.norm(self.coef_)


# ------------------------------------------------------------------------------ labelled data
@dataclass
class ProbeData:
    """Continuations labelled memorized or not, with the tokens a probe looks at.

    Attributes:
        windows: prefix/suffix windows; the probe reads the hidden states at the positions that
            predict the suffix tokens (the last prefix position .. the one before the last token).
        labels: (n,) bool per window, True = memorized.
        source: ``"ledger"`` or ``"behaviour"``.
        frame: one row per window: ``doc_id, label, origin`` (and ``kind, count`` from a ledger,
            the audit's ``extracted, match_rate``).
    """

    windows: list[Window]
    labels: np.ndarray
    source: str
    frame: pd.DataFrame

    def __post_init__(self) -> None:
        if not self.labels.any() or self.labels.all():
            what = "memorized" if not self.labels.any() else "non-memorized"
            raise RotelabError(
                f"no {what} continuations to fit a probe on ({len(self.labels)} windows); "
                "give text the model partly recites and text it does not"
            )


def _heldout_windows(lm, docs: Iterable[str], prefix_len: int, suffix_len: int, limit: int):
    documents = (Document(f"heldout-{i}", text) for i, text in enumerate(docs))
    out = []
    for w in corpus_windows(documents, lm.encode, prefix_len, suffix_len, None):
        out.append(w)
        if len(out) >= limit:
            break
    return out


def ledger_probe_data(
    lm,
    ledger: pd.DataFrame,
    heldout_docs: Sequence[str],
    *,
    min_count: int = 16,
    heldout_windows: int = 96,
    heldout_shape: tuple[int, int] = (16, 48),
    batch_size: int = 32,
) -> ProbeData:
    """Labels from the organism's ledger: memorized = items inserted >= ``min_count`` times whose
    suffix the model extracts (one-pass greedy audit); not memorized = count-0 items (never
    trained on) and ``heldout_windows`` windows of held-out text (shape ``heldout_shape``).
    """
    items = ledger_windows(ledger)
    audit = score_windows(lm, items, batch_size=batch_size)
    counts = ledger["count"].to_numpy()
    extracted = audit["extracted"].to_numpy(dtype=bool)
    positive = (counts >= min_count) & extracted
    control = counts == 0
    keep = np.flatnonzero(positive | control)
    windows = [items[i] for i in keep]
    held = _heldout_windows(lm, heldout_docs, *heldout_shape, heldout_windows)
    frame = pd.DataFrame({
        "doc_id": [w.doc_id for w in windows] + [w.doc_id + f"@{w.offset}" for w in held],
        "label": np.concatenate([positive[keep], np.zeros(len(held), bool)]),
        "origin": ["ledger"] * len(windows) + ["heldout"] * len(held),
        "kind": list(ledger["kind"].to_numpy()[keep]) + ["heldout"] * len(held),
        "count": list(counts[keep]) + [-1] * len(held),
    })  # fmt: skip
    return ProbeData(windows + held, frame["label"].to_numpy(bool), "ledger", frame)


def behaviour_probe_data(
    lm,
    windows: Sequence[Window],
    *,
    max_match_rate: float = 0.5,
    min_match_rate: float | None = None,
    batch_size: int = 32,
) -> ProbeData:
    """Labels from the model's own behaviour, for a model without a ledger: memorized = windows
    whose suffix greedy decoding reproduces exactly (the one-pass audit of
    :func:`rotelab.measure.extraction.score_windows`) or, with ``min_match_rate``, whose
    teacher-forced exact-match rate is at least that (partial recitation: a small model that
    recites no window whole); not memorized = windows whose exact-match rate is at most
    ``max_match_rate`` (the ones in between are left out)."""
    if not 0 <= max_match_rate < 1:
        raise RotelabError(f"max match rate must be in [0, 1), got {max_match_rate}")
    if min_match_rate is not None and not max_match_rate < min_match_rate <= 1:
        raise RotelabError(
            f"min match rate must be in ({max_match_rate}, 1] (above the max match rate), "
            f"got {min_match_rate}"
        )
    audit = score_windows(lm, windows, batch_size=batch_size)
    extracted = audit["extracted"].to_numpy(dtype=bool)
    rate = audit["match_rate"].to_numpy()
    positive = extracted if min_match_rate is None else extracted | (rate >= min_match_rate)
    clear = rate <= max_match_rate
    keep = np.flatnonzero(positive | clear)
    frame = pd.DataFrame({
        "doc_id": [f"{windows[i].doc_id}@{windows[i].offset}" for i in keep],
        "label": positive[keep], "origin": "behaviour",
        "extracted": extracted[keep], "match_rate": rate[keep],
    })  # fmt: skip
    return ProbeData([windows[i] for i in keep], positive[keep], "behaviour", frame)


def collect_states(
    lm, data: ProbeData, layers: Sequence[int], *, batch_size: int = 32
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Hidden states at the positions that predict each window's suffix.

    Returns:
        ``(states, owner)``: per layer a (tokens, D) float32 array, and (tokens,) the index of
        the window each row belongs to (rows of one window are consecutive).
    """
    seqs = [w.tokens for w in data.windows]
    hs = lm.hidden_states(seqs, list(layers), pool="none", batch_size=batch_size)
    # position t predicts token t + 1: the suffix is predicted from len(prefix) - 1 .. len - 2
    spans = [(len(w.prefix) - 1, len(w.prefix) + len(w.suffix) - 1) for w in data.windows]
    owner = np.concatenate([np.full(b - a, i) for i, (a, b) in enumerate(spans)])
    states = {
        layer: np.concatenate([hs[layer][i][a:b] for i, (a, b) in enumerate(spans)]).astype(
            np.float32
        )
        for layer in layers
    }
    return states, owner


# ------------------------------------------------------------------------------ layers and AUC
def split_items(labels: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    """(n,) bool: which windows are held out, stratified by label (>= 1 of each class held out
    and >= 1 kept)."""
    if not 0 < test_size < 1:
        raise RotelabError(f"test size must be in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for value in (True, False):
        idx = np.flatnonzero(labels == value)
        if len(idx) < 2:
            raise RotelabError(
                f"only {len(idx)} {'memorized' if value else 'non-memorized'} continuation(s): "
                "a held-out split needs at least 2 of each"
            )
        k = min(len(idx) - 1, max(1, round(test_size * len(idx))))
        test[rng.permutation(idx)[:k]] = True
    return test


def _cluster_auc_ci(scores, owner, y_item, n_boot: int, seed: int, level: float = 0.95):
    """Percentile-bootstrap CI of the token-level AUC, resampling whole windows per class (tokens
    of one window are not independent)."""
    rng = np.random.default_rng(seed)
    by_item = {i: scores[owner == i] for i in np.unique(owner)}
    pos = [i for i in by_item if y_item[i]]
    neg = [i for i in by_item if not y_item[i]]
    values = []
    for _ in range(n_boot):
        p = np.concatenate([by_item[i] for i in rng.choice(pos, len(pos))])
        n = np.concatenate([by_item[i] for i in rng.choice(neg, len(neg))])
        values.append(auc_score(np.concatenate([p, n]), np.r_[np.ones(len(p)), np.zeros(len(n))]))
    a = (1 - level) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


@dataclass
class ProbeLayers:
    """Held-out probe quality per layer and split seed, and the layer chosen.

    Attributes:
        table: one row per (seed, layer): ``seed, layer, auc, auc_lo, auc_hi`` (cluster bootstrap
            over held-out windows), ``item_auc`` (mean p_mem per window), ``n_train, n_test``
            (tokens), ``test_pos, test_neg`` (windows).
        by_layer: one row per layer: ``layer, auc_mean, auc_lo, auc_hi`` (t interval over seeds;
            the bootstrap interval when there is one seed), ``item_auc_mean``.
        best_layer: the layer with the highest mean held-out AUC.
    """

    table: pd.DataFrame
    by_layer: pd.DataFrame
    best_layer: int


def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import t

    if len(values) < 2:
        return math.nan, math.nan
    half = t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    # an AUC lies in [0, 1]; a t interval over few seeds can reach past it
    return max(0.0, float(values.mean() - half)), min(1.0, float(values.mean() + half))


def probe_layers(
    states: dict[int, np.ndarray],
    owner: np.ndarray,
    labels: np.ndarray,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    test_size: float = 0.3,
    n_boot: int = 200,
    C: float = 1.0,  # noqa: N803
) -> ProbeLayers:
    """Fit one probe per layer on the training windows of each seed's split; AUC on the rest.

    Args:
        states, owner: from :func:`collect_states`.
        labels: (windows,) bool, True = memorized.
        seeds: one item-level split per seed (stratified by label).
        test_size: fraction of each class's windows held out.
        n_boot: cluster-bootstrap resamples for each AUC's interval (0: none).
        C: the probes' inverse regularization.
    """
    rows = []
    y_tok = labels[owner]
    for seed in seeds:
        test_items = split_items(labels, test_size, seed)
        test = test_items[owner]
        for layer, h in states.items():
            probe = MemorizationProbe(C=C).fit(h[~test], y_tok[~test])
            scores = probe.decision_function(h[test])
            auc = auc_score(scores, y_tok[test])
            lo, hi = (
                _cluster_auc_ci(scores, owner[test], labels, n_boot, seed)
                if n_boot
                else (math.nan, math.nan)
            )
            per_item = pd.Series(scores).groupby(owner[test]).mean()
            item_auc = auc_score(per_item.to_numpy(), labels[per_item.index.to_numpy()])
            rows.append({
                "seed": seed, "layer": layer, "auc": auc, "auc_lo": lo, "auc_hi": hi,
                "item_auc": item_auc, "n_train": int((~test).sum()), "n_test": int(test.sum()),
                "test_pos": int((test_items & labels).sum()),
                "test_neg": int((test_items & ~labels).sum()),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    by = []
    for layer, part in table.groupby("layer", sort=True):
        aucs = part["auc"].to_numpy()
        lo, hi = (
            _t_interval(aucs) if len(aucs) > 1 else (part["auc_lo"].iloc[0], part["auc_hi"].iloc[0])
        )
        by.append({
            "layer": int(layer), "auc_mean": float(aucs.mean()), "auc_lo": lo, "auc_hi": hi,
            "item_auc_mean": float(part["item_auc"].mean()), "seeds": len(aucs),
        })  # fmt: skip
    by_layer = pd.DataFrame(by)
    # ties go to the earliest layer: the least computation above the probe is already committed
    best = int(
        by_layer.sort_values(["auc_mean", "layer"], ascending=[False, True])["layer"].iloc[0]
    )
    return ProbeLayers(table, by_layer, best)


# ------------------------------------------------------------------------------ causal check
def _extraction(lm, windows: Sequence[Window], batch_size: int) -> dict:
    audit = score_windows(lm, windows, batch_size=batch_size)
    rate = rate_with_ci([bool(v) for v in audit["extracted"]])
    return {
        "rate": rate.rate, "ci": list(rate.ci), "k": rate.k, "n": rate.n,
        "mean_matched_prefix": float(audit["matched_prefix"].mean()),
    }  # fmt: skip


def _patch_hook(direction: np.ndarray, target: float, dtype: torch.dtype):
    u = torch.as_tensor(direction, dtype=torch.float32)

    def patch(h: torch.Tensor) -> torch.Tensor:
        d = u.to(h.device)
        proj = h.float() @ d  # (B, T)
        return h + ((target - proj)[..., None] * d).to(h.dtype)

    return patch


def patching_effect(
    lm,
    layer: int,
    probe: MemorizationProbe,
    memorized: Sequence[Window],
    h_generalizing: np.ndarray,
    *,
    h_memorizing: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Activation patching along the probe direction: does it change recitation?

    At every position of the layer, the hidden state's component along the probe's unit
    direction ``u`` is set to its mean over generalizing (non-memorized) states; the same patch
    along a random unit direction is the control; with ``h_memorizing``, the same patch along the
    class-mean difference (the steering direction) too. Recitation is the one-pass greedy
    extraction of the ``memorized`` windows.

    Returns:
        ``{"layer", "before", "probe_direction", "random_direction"[, "mean_difference"]}``,
        each extraction entry ``{"rate", "ci", "k", "n", "mean_matched_prefix"}``, plus
        ``"effect"`` (probe-patched rate minus the rate before) and ``"control_effect"``.
    """
    check_steering_layer(layer, lm.num_layers, "patching")
    point = steering_point(layer)
    u = probe.direction_
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(u.shape)
    r /= np.linalg.norm(r)
    before = _extraction(lm, memorized, batch_size)
    out = {"layer": layer, "before": before}
    directions = [("probe_direction", u), ("random_direction", r)]
    if h_memorizing is not None:
        directions.append(("mean_difference", steering_vector(h_memorizing, h_generalizing)[0]))
    for name, d in directions:
        target = float(np.mean(h_generalizing @ d))
        with lm.hooks({point: _patch_hook(d, target, lm.dtype)}):
            out[name] = _extraction(lm, memorized, batch_size)
    out["effect"] = out["probe_direction"]["rate"] - before["rate"]
    out["control_effect"] = out["random_direction"]["rate"] - before["rate"]
    return out


# ------------------------------------------------------------------------------ steering
def steering_vector(
    h_memorizing: np.ndarray, h_generalizing: np.ndarray
) -> tuple[np.ndarray, float]:
    """``(unit(mean h_gen - mean h_mem), |mean h_gen - mean h_mem|)`` from (n, D) states."""
    diff = np.asarray(h_generalizing, np.float64).mean(0) - np.asarray(
        h_memorizing, np.float64
    ).mean(0)
    norm = float(np.linalg.norm(diff))
    if not norm > 0:
        raise RotelabError("the memorizing and generalizing states have the same mean")
    return diff / norm, norm


def steering_spec(
    lm,
    base_model: str,
    layer: int,
    probe: MemorizationProbe,
    vector: np.ndarray,
    alpha: float,
    mode: SteeringMode | str = SteeringMode.dynamic,
    info: dict | None = None,
    gamma: float = 1.0,
) -> SteeringSpec:
    """The steering of ``lm`` (whose weights the spec's fingerprint records) as a
    :class:`~rotelab.steered.SteeringSpec`; apply with ``lm.steered(spec)`` (any mode)
    or save it and load the steered model with :meth:`rotelab.lm.LM.load`."""
    check_steering_layer(layer, lm.num_layers, "steering")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise RotelabError(f"alpha must be a finite number, got {alpha!r}")
    if probe.n_features_in_ != len(vector) or len(vector) != lm.config.hidden_size:
        raise RotelabError(
            f"the probe ({probe.n_features_in_} features) and vector ({len(vector)}) do not fit "
            f"this model's hidden size {lm.config.hidden_size}; they were fitted on another model"
        )
    return SteeringSpec(
        base_model=base_model, layer=layer, alpha=float(alpha), mode=SteeringMode(mode),
        probe_weight=torch.as_tensor(probe.coef_, dtype=torch.float32),
        probe_bias=probe.intercept_, vector=torch.as_tensor(vector, dtype=torch.float32),
        fingerprint=model_fingerprint(lm.model), info=dict(info or {}), gamma=gamma,
    )  # fmt: skip

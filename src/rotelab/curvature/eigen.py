"""K-FAC eigenbases, curvature-ordered weight edits and eigen-band analysis.

Merullo et al. 2025, "From Memorization to Reasoning in the Spectrum of Loss Curvature": with
(λ, U_G) = eigh(G) and (μ, U_A) = eigh(A), a weight W (out x in) is expressed in the K-FAC
eigenbasis as C = U_Gᵀ W U_A; component (i, j) has curvature λ_i μ_j. Memorized data loads on
low-curvature components, so the edit keeps the smallest set of components that holds a fraction
ρ of the total curvature mass (Σλ)(Σμ) and drops the rest:

    W' = U_G (C ⊙ M) U_Aᵀ = W - U_G (C ⊙ (1 - M)) U_Aᵀ

Because λ_i μ_j grows with λ_i and with μ_j, the kept set is a monotone staircase: for a threshold
τ, row i keeps the μ_j ≥ τ / λ_i. The kept mass is a decreasing step function of τ, found by
bisection; each evaluation is one ``searchsorted`` per row on the sorted μ, so no pair is ever
enumerated. ρ = 1 keeps every pair and returns W exactly.

Band analysis (the paper's evidence): order A's eigenvectors by eigenvalue and measure, per band
of them (top 10%, 10-25%, 25-50%, bottom 50%), the mean over tokens of ‖V_bandᵀ a‖ for a data set;
memorized data is stronger than clean text on the low-curvature bands.

The task-curvature correspondence (the paper's explanation of which tasks an edit hurts): a
task's activation strength on the components an edit at ρ removes, ‖ΔW a‖ / ‖W a‖ with
ΔW = W - W' (:func:`removed_strength`), against its accuracy drop after that edit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rotelab.curvature.kfac import KFAC
from rotelab.errors import RotelabError
from rotelab.lm import LM, length_buckets, pad_batch

__all__ = [
    "BANDS",
    "CurvatureEdit",
    "LayerEigen",
    "band_ratios",
    "band_strengths",
    "check_rho",
    "curvature_mask",
    "curvature_threshold",
    "edit_model",
    "eigenbasis",
    "removed_strength",
    "rho_sweep",
]

#: The paper's bands over A's eigenvectors, as fractions from the top (highest eigenvalue).
BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0))


def check_rho(rho: float) -> float:
    """ρ must lie in (0, 1]."""
    try:
        value = float(rho)
    except (TypeError, ValueError) as exc:
        raise RotelabError(f"rho must be a number in (0, 1], not {rho!r}") from exc
    if not 0.0 < value <= 1.0 or math.isnan(value):
        raise RotelabError(
            f"rho must be in (0, 1] (the fraction of curvature mass to keep), got {rho}"
        )
    return value


def eigenbasis(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, tiny negatives from rounding clamped to 0) and eigenvectors.

    Args:
        factor: a symmetric PSD matrix (n, n).

    Returns:
        values (n,) float64 descending, vectors (n, n) float64 with ``vectors[:, k]`` the k-th.
    """
    sym = factor.detach().to(torch.float64)
    sym = (sym + sym.T) / 2  # fp32 accumulation can leave it asymmetric by an ulp
    values, vectors = torch.linalg.eigh(sym)
    return values.clamp_min(0.0).flip(0), vectors.flip(1)


def _kept_counts(lam: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
    """For each λ_i, how many of the (descending) μ_j satisfy λ_i μ_j ≥ τ, i.e. μ_j ≥ τ/λ_i."""
    counts = np.zeros(len(lam), dtype=np.int64)
    pos = lam > 0
    # count of μ ≥ t = position of -t in ascending -μ, right side (ties kept)
    counts[pos] = np.searchsorted(-mu, -(tau / lam[pos]), side="right")
    return counts


def curvature_threshold(lam: np.ndarray, mu: np.ndarray, rho: float) -> float:
    """The largest τ whose staircase {(i, j): λ_i μ_j ≥ τ} holds ≥ ρ of the curvature mass.

    Args:
        lam: (m,) eigenvalues of G, descending, ≥ 0.
        mu: (n,) eigenvalues of A, descending, ≥ 0.
        rho: fraction of the mass (Σλ)(Σμ) to keep, in (0, 1].

    Returns:
        τ ≥ 0; 0 means every pair is kept.
    """
    rho = check_rho(rho)
    lam = np.asarray(lam, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(mu)])  # prefix[k] = Σ of the k largest μ
    total = lam.sum() * mu.sum()
    if rho >= 1.0 or total <= 0:
        return 0.0
    target = rho * total

    def mass(tau: float) -> float:
        return float(lam @ prefix[_kept_counts(lam, mu, tau)])

    top = lam[0] * mu[0]
    positive = mu[mu > 0]
    lo = lam[lam > 0][-1] * positive[-1] * 0.5  # below every positive product: keeps all of them
    hi = top * 2.0  # above every product: keeps nothing
    if mass(lo) < target:  # rounding at ρ ≈ 1: keep everything
        return 0.0
    # Bisection in log space on the invariant mass(lo) ≥ target > mass(hi); it ends when lo and
    # hi are adjacent floats, so the staircase at lo is the smallest one reaching the target.
    for _ in range(400):
        mid = math.sqrt(lo * hi)
        if not lo < mid < hi:
            mid = lo + (hi - lo) / 2
            if not lo < mid < hi:
                break
        if mass(mid) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def curvature_mask(lam: np.ndarray, mu: np.ndarray, rho: float) -> np.ndarray:
    """Boolean (m, n) mask of the kept eigen-pairs (rows follow λ, columns μ, both descending)."""
    lam = np.asarray(lam, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    tau = curvature_threshold(lam, mu, rho)
    if tau == 0.0:
        return np.ones((len(lam), len(mu)), dtype=bool)
    counts = _kept_counts(lam, mu, tau)
    return np.arange(len(mu))[None, :] < counts[:, None]


@dataclass
class LayerEigen:
    """The K-FAC eigenbasis of one layer (float64, eigenvalues descending)."""

    name: str
    lam: torch.Tensor  # (out,) eigenvalues of G
    u_g: torch.Tensor  # (out, out)
    mu: torch.Tensor  # (in,) eigenvalues of A
    u_a: torch.Tensor  # (in, in)


class CurvatureEdit:
    """Curvature-ordered weight edit; eigenbases computed once in :meth:`fit`, reused per ρ.

    Example:
        >>> edit = CurvatureEdit().fit(kfac)  # doctest: +SKIP
        >>> edited = edit.apply(lm, rho=0.6)  # a new LM; ``lm`` is unchanged  # doctest: +SKIP
        >>> edit.kept_  # per-layer kept pairs and mass of the last apply  # doctest: +SKIP

    Attributes (after :meth:`fit`):
        eigen_: layer name → :class:`LayerEigen`.
        kfac_: the factors it was fitted on (for the model check).
    """

    def fit(self, factors: KFAC) -> CurvatureEdit:
        """Eigendecompose A and G of every layer (A shared between layers is decomposed once)."""
        factors._check_fitted()
        by_a: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.eigen_: dict[str, LayerEigen] = {}
        for name, (a, g) in factors.factors_.items():
            if id(a) not in by_a:
                by_a[id(a)] = eigenbasis(a)
            mu, u_a = by_a[id(a)]
            lam, u_g = eigenbasis(g)
            self.eigen_[name] = LayerEigen(name, lam, u_g, mu, u_a)
        self.kfac_ = factors
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "eigen_"):
            raise RotelabError("CurvatureEdit is not fitted; call fit(factors) first")

    def edited_weight(
        self, weight: torch.Tensor, name: str, rho: float
    ) -> tuple[torch.Tensor, dict]:
        """W' for one layer and what was kept.

        Args:
            weight: (out, in) weight of layer ``name``.
            name: the layer.
            rho: fraction of curvature mass to keep.

        Returns:
            (W' (out, in) in the weight's dtype, record of kept pairs and mass).
        """
        self._check_fitted()
        e = self.eigen_[name]
        lam, mu = e.lam.numpy(), e.mu.numpy()
        mask = curvature_mask(lam, mu, rho)
        w = weight.detach().to(torch.float64).cpu()
        total = float(lam.sum() * mu.sum())
        kept_mass = float((np.outer(lam, mu) * mask).sum())
        record = {
            "layer": name,
            "rho": float(rho),
            "kept_pairs": float(mask.mean()),
            "kept_mass": kept_mass / total if total > 0 else 1.0,
        }
        if mask.all():
            record["dropped_weight_norm"] = 0.0
            return weight.detach().clone(), record
        c = e.u_g.T @ w @ e.u_a  # (out, in) in the eigenbasis
        dropped = e.u_g @ (c * torch.from_numpy(~mask)) @ e.u_a.T
        record["dropped_weight_norm"] = float(dropped.norm() / w.norm().clamp_min(1e-300))
        return (w - dropped).to(weight.dtype).to(weight.device), record

    def apply(
        self, lm: LM, rho: float | Mapping[str, float], *, layers: Sequence[str] | None = None
    ) -> LM:
        """A new :class:`LM` with the edited weights; ``lm`` is never modified.

        Args:
            lm: the model the factors were collected on (refused otherwise).
            rho: fraction of curvature mass to keep per layer, in (0, 1]; or layer name → ρ
                (those layers only: a ρ per projection and block).
            layers: edit only these of the fitted layers (default: all of them, or the
                mapping's).

        Sets ``kept_``: a DataFrame (layer, rho, kept_pairs, kept_mass, dropped_weight_norm).
        """
        self._check_fitted()
        if isinstance(rho, Mapping):
            per_layer = {n: check_rho(r) for n, r in rho.items()}
            names = list(per_layer) if layers is None else list(layers)
            label = "per-layer"
        else:
            value = check_rho(rho)
            names = list(self.eigen_) if layers is None else list(layers)
            per_layer = dict.fromkeys(names, value)
            label = f"{value:g}"
        self.kfac_.check_model(lm)
        unknown = [n for n in names if n not in self.eigen_ or n not in per_layer]
        if unknown:
            raise RotelabError(f"no K-FAC factors or rho for layer {unknown[0]}")
        model = copy.deepcopy(lm.model)
        new = LM.from_model(model, lm.tokenizer, name=f"{lm.name}+kfac(rho={label})")
        by_name = {layer.name: layer for layer in new.linear_layers()}
        records = []
        for name in names:
            target = by_name[name]
            w, record = self.edited_weight(target.weight, name, per_layer[name])
            target.set_weight(w)
            records.append(record)
        self.kept_ = pd.DataFrame(records)
        return new


def edit_model(lm: LM, factors: KFAC, rho: float, *, layers: Sequence[str] | None = None) -> LM:
    """One curvature edit: a new model keeping ρ of each layer's curvature mass (see module doc)."""
    return CurvatureEdit().fit(factors).apply(lm, rho, layers=layers)


def rho_sweep(
    lm: LM, factors: KFAC | CurvatureEdit, rhos: Iterable[float]
) -> Iterator[tuple[float, LM, pd.DataFrame]]:
    """Edited models for several ρ, eigendecomposing once; yields (ρ, model, kept table)."""
    rhos = [check_rho(r) for r in rhos]
    edit = factors if isinstance(factors, CurvatureEdit) else CurvatureEdit().fit(factors)
    for rho in rhos:
        new = edit.apply(lm, rho)
        yield rho, new, edit.kept_


# ------------------------------------------------------------------------------ band analysis
def _band_slices(n: int, bands: Sequence[tuple[float, float]]) -> list[slice]:
    out = []
    for lo, hi in bands:
        if not 0.0 <= lo < hi <= 1.0:
            raise RotelabError(f"band ({lo}, {hi}) must satisfy 0 <= lo < hi <= 1")
        out.append(slice(int(round(lo * n)), max(int(round(hi * n)), int(round(lo * n)) + 1)))
    return out


@torch.inference_mode()
def band_strengths(
    lm: LM,
    factors: KFAC | CurvatureEdit,
    sequences: Iterable,
    *,
    bands: Sequence[tuple[float, float]] = BANDS,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Mean over tokens of ‖V_bandᵀ a‖ per layer input and band of A's eigenvectors.

    Args:
        lm: the model the factors come from.
        factors: K-FAC factors (or a fitted :class:`CurvatureEdit`, reusing its eigenbases).
        sequences: token id lists or windows; every non-padding token's layer input counts.
        bands: fractions of A's eigenvectors from the top (highest eigenvalue = highest curvature).
        batch_size: sequences per forward pass.

    Returns:
        One row per (input, band): ``layer`` (the layers reading that input, joined by ``+``),
        ``band`` (e.g. ``"0-10%"``), ``strength``, ``tokens``. Higher = the data loads more on
        those directions (no better/worse direction: it is a description).
    """
    from rotelab.curvature.kfac import _as_sequences

    edit = factors if isinstance(factors, CurvatureEdit) else CurvatureEdit().fit(factors)
    edit._check_fitted()
    kfac = edit.kfac_
    kfac.check_model(lm)
    groups: dict[str, list[str]] = {}
    for name in kfac.factors_:
        groups.setdefault(kfac.a_groups_.get(name, name), []).append(name)
    seqs = [s for s in _as_sequences(sequences) if len(s) >= 1]
    if not seqs:
        raise RotelabError("no sequences to measure band strengths on")
    sums = {leader: torch.zeros(len(bands), dtype=torch.float64) for leader in groups}
    slices = {leader: _band_slices(edit.eigen_[leader].mu.numel(), bands) for leader in groups}
    bases = {leader: edit.eigen_[leader].u_a.to(torch.float32) for leader in groups}
    state: dict[str, torch.Tensor] = {}

    def observe(leader: str):
        def fn(x: torch.Tensor) -> None:
            rows = x[state["mask"]].float().cpu()  # (n, in)
            proj = rows @ bases[leader]  # (n, in) coordinates in A's eigenbasis, descending
            for b, sl in enumerate(slices[leader]):
                sums[leader][b] += proj[:, sl].norm(dim=1).double().sum()

        return fn

    n_tokens = 0
    with lm.hooks({f"{leader}.input": observe(leader) for leader in groups}):
        for batch in length_buckets([len(s) for s in seqs], batch_size):
            ids, mask = pad_batch([seqs[i] for i in batch], lm.pad_id, device=lm.device)
            state["mask"] = mask.bool()
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
            n_tokens += int(mask.sum())
    rows = []
    for leader, members in groups.items():
        for b, (lo, hi) in enumerate(bands):
            rows.append({
                "layer": "+".join(members),
                "band": f"{lo * 100:g}-{hi * 100:g}%",
                "strength": float(sums[leader][b] / n_tokens),
                "tokens": n_tokens,
            })  # fmt: skip
    return pd.DataFrame(rows)


def band_ratios(
    lm: LM,
    factors: KFAC | CurvatureEdit,
    datasets: Mapping[str, Iterable],
    *,
    reference: str,
    bands: Sequence[tuple[float, float]] = BANDS,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Band strengths of several data sets and their ratio to a reference data set.

    Args:
        lm: the model.
        factors: K-FAC factors or a fitted :class:`CurvatureEdit`.
        datasets: name → sequences (e.g. ``{"memorized": ..., "clean": ..., "probes": ...}``).
        reference: the name whose strengths are the denominators (e.g. ``"clean"``).

    Returns:
        Rows (layer, band, dataset, strength, tokens, ratio) with ``ratio`` = strength of the
        data set / strength of the reference on the same layer and band (1 for the reference).
    """
    if reference not in datasets:
        raise RotelabError(f"reference data set {reference!r} is not among {sorted(datasets)}")
    edit = factors if isinstance(factors, CurvatureEdit) else CurvatureEdit().fit(factors)
    frames = []
    for name, seqs in datasets.items():
        frame = band_strengths(lm, edit, seqs, bands=bands, batch_size=batch_size)
        frames.append(frame.assign(dataset=name))
    table = pd.concat(frames, ignore_index=True)
    ref = table[table["dataset"] == reference].set_index(["layer", "band"])["strength"]
    table["ratio"] = [
        s / ref[(layer, band)]
        for layer, band, s in zip(table["layer"], table["band"], table["strength"])
    ]
    return table[["layer", "band", "dataset", "strength", "tokens", "ratio"]]


# ------------------------------------------------------------------ task-curvature correspondence
@torch.inference_mode()
def removed_strength(
    lm: LM,
    factors: KFAC | CurvatureEdit,
    rho: float | Mapping[str, float],
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """How much of each sequence's computation an edit at ρ removes: per sequence, the mean over
    its scored positions and the edited layers of ‖ΔW a‖ / ‖W a‖, with a the layer's input and
    ΔW = W - W' what :meth:`CurvatureEdit.apply` drops.

    Args:
        lm: the unedited model the factors come from.
        factors: K-FAC factors or a fitted :class:`CurvatureEdit`.
        rho: ρ of the edit, or layer name → ρ (those layers only).
        sequences: token ids, e.g. prompt + answer.
        starts: per sequence, the first scored token (the answer's first token); the inputs at
            the positions that predict tokens ``starts[i]`` onward count.
        batch_size: sequences per forward pass.

    Returns:
        (len(sequences),) float64; 0 where nothing is removed.
    """
    edit = factors if isinstance(factors, CurvatureEdit) else CurvatureEdit().fit(factors)
    edit._check_fitted()
    edit.kfac_.check_model(lm)
    if len(sequences) != len(starts):
        raise RotelabError("removed_strength needs one start per sequence")
    for seq, start in zip(sequences, starts):
        if not 1 <= start < len(seq):
            raise RotelabError(f"start {start} must point inside a sequence of {len(seq)} tokens")
    per_layer = (
        {n: check_rho(r) for n, r in rho.items()}
        if isinstance(rho, Mapping)
        else dict.fromkeys(edit.eigen_, check_rho(rho))
    )
    by_name = {layer.name: layer for layer in lm.linear_layers()}
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, r in per_layer.items():
        w = by_name[name].weight.detach()
        kept, _ = edit.edited_weight(w, name, r)
        weights[name] = (w.float().cpu(), (w.double().cpu() - kept.double().cpu()).float())
    sums = np.zeros(len(sequences))
    state: dict = {}

    def observe(name: str):
        def fn(x: torch.Tensor) -> None:
            w, dw = weights[name]
            rows = x[state["mask"]].float().cpu()  # (n, in), the scored positions only
            full = (rows @ w.T).norm(dim=1).clamp_min(1e-12)
            ratio = ((rows @ dw.T).norm(dim=1) / full).double().numpy()
            np.add.at(sums, state["owner"], ratio)

        return fn

    with lm.hooks({f"{name}.input": observe(name) for name in weights}):
        for batch in length_buckets([len(s) for s in sequences], batch_size):
            ids, mask = pad_batch([list(sequences[i]) for i in batch], lm.pad_id, device=lm.device)
            scored = torch.zeros_like(mask, dtype=torch.bool)
            owner = []
            for row, i in enumerate(batch):
                lo, hi = starts[i] - 1, len(sequences[i]) - 1
                scored[row, lo:hi] = True  # pad_batch pads on the right
                owner.extend([i] * (hi - lo))
            state["mask"], state["owner"] = scored, np.asarray(owner)
            lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    counts = np.array([(len(s) - st) * len(weights) for s, st in zip(sequences, starts)])
    return sums / counts

"""Matrix-based-entropy regularizers and Gated Phase Transition (GAPT) training (Yu 2025,
"Memorization-Compression Cycles Improve Generalization"; its code: mod_gpt).

The representation entropy of a step is MBE, the Rényi-2 matrix-based entropy of patches of
``patch`` consecutive tokens (8 in the paper) of the residual stream leaving each block
(:func:`rotelab.measure.entropy.patch_entropy`), averaged over the patches and then over the
blocks. It is taken from the training step's own forward pass (forward hooks on the blocks), so
it costs the MBE and its backward, never a second forward pass.

- :class:`MBETerm` adds ``weight * MBE`` to every step's loss (``weight = 0``: it only measures,
  which a CE-only run uses to log the alignment signal).
- :class:`GAPT` adds it only in the compression phase, switched by :class:`PhaseGate` with the
  paper's rules: phase 1 (memorization, loss = CE) moves to phase 2 after ``p_m`` steps without a
  relative CE gain above ``ce_gain`` (0.01); phase 2 (compression, loss = CE + w·MBE) moves back
  when CE rises more than ``ce_spike`` (10%) above its minimum, or when MBE has not improved by
  ``mbe_gain`` relative for ``p_a`` steps. The paper gates on evaluation losses; here the gate
  reads the training batches' CE and MBE through an exponential moving average (``smooth``, 0.9
  by default; 0 reads them raw), so one easy batch does not set the minimum that a spike is
  measured against.
- The alignment signal (the paper's cycle): on every ``align_every``-th step,
  ``cos(∇CE, ∇MBE)`` over the parameters both losses reach (the "shared" parameters: the
  embeddings and every block; the final norm only reaches CE), from two extra backward passes
  through the step's graph. A descent step on CE moves along −∇CE, so with a positive cosine
  learning also compresses (MBE falls) and with a negative one it expands the representation;
  the paper's memorization-compression cycle shows as sign changes of this cosine.

Every term keeps a per-step log (:attr:`MBETerm.steps`: step, phase, CE, MBE where computed, the
weight applied), its alignment rows and, for GAPT, the phase transitions with their reason.

Example:
    >>> gapt = GAPT(weight=0.1, p_m=20, p_a=20, steps=480)
    >>> train(model, batches, cfg, terms=[gapt])  # doctest: +SKIP
    >>> pd.DataFrame(gapt.transitions)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import transformer_blocks
from rotelab.measure.entropy import PATCH, patch_entropy
from rotelab.train.terms import LossTerm, StepState

__all__ = [
    "GAPT",
    "MBETerm",
    "PhaseGate",
    "SMOOTH_WINDOW",
    "check_patch",
    "cycle_test",
    "gradient_alignment",
    "mean_block_mbe",
    "sign_changes",
    "smoothed",
]

MEMORIZE, COMPRESS = 1, 2


#: Window of the centred rolling mean behind the smoothed sign-change count.
SMOOTH_WINDOW = 5


def sign_changes(values: Sequence[float]) -> int:
    """Sign changes along a series, zeros and NaNs skipped."""
    signs = [math.copysign(1, v) for v in values if v == v and v != 0]
    return sum(a != b for a, b in zip(signs, signs[1:]))


def smoothed(values: Sequence[float], window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Centred rolling mean of a series over ``window`` points (fewer at the ends), NaNs
    skipped: the series whose sign changes the smoothed count counts."""
    return pd.Series(values, dtype=float).rolling(window, center=True, min_periods=1).mean().values


def cycle_test(
    values: Sequence[float], *, window: int = SMOOTH_WINDOW, n_perm: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Whether a series of cosines changes sign more slowly than noise would.

    The smoothed count (sign changes of :func:`smoothed`) of the series in its order is compared
    with the same count on ``n_perm`` random orders of the same values: noise has no order to
    lose, so a real slow cycle gives fewer smoothed changes than most shuffles. Returns
    ``raw``, ``smoothed``, the shuffles' mean ``null_mean`` and its 2.5-97.5% range
    ``null_range``, ``p`` (the fraction of shuffles with at most as many changes; one-sided) and
    ``cycle``: at least two smoothed changes AND ``p < 0.05``.
    """
    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) < 3:
        return {"raw": sign_changes(v.tolist()), "smoothed": None, "null_mean": None,
                "null_range": None, "p": None, "cycle": False}  # fmt: skip
    obs = sign_changes(smoothed(v, window).tolist())
    rng = np.random.default_rng(seed)
    null = np.array([sign_changes(smoothed(rng.permutation(v), window).tolist())
                     for _ in range(n_perm)])  # fmt: skip
    p = float((null <= obs).mean())
    return {
        "raw": sign_changes(v.tolist()), "smoothed": int(obs), "null_mean": float(null.mean()),
        "null_range": [float(np.percentile(null, 2.5)), float(np.percentile(null, 97.5))],
        "p": p, "cycle": bool(obs >= 2 and p < 0.05),
    }  # fmt: skip


def check_patch(patch: int, length: int | None = None, *, what: str = "the sequence") -> None:
    """A patch of at least 2 tokens (one token has entropy 0 whatever the model does) that tiles
    ``length`` tokens exactly (tokens past the last whole patch would be left unregularized)."""
    if patch < 2:
        raise RotelabError(f"the patch must be >= 2 tokens (one token's MBE is 0), got {patch}")
    if length is not None and (length < patch or length % patch):
        raise RotelabError(
            f"a patch of {patch} tokens does not divide {what} of {length} tokens; "
            f"use a patch that divides {length} (the paper: 8)"
        )


def mean_block_mbe(hidden: Sequence[torch.Tensor], patch: int = PATCH) -> torch.Tensor:
    """Mean over blocks of the mean MBE over all patches: ``hidden`` is one (batch, seq, dim)
    tensor per block. Differentiable; float32 at least (float64 stays float64)."""
    return torch.stack([patch_entropy(h, patch).mean() for h in hidden]).mean()


def gradient_alignment(
    a: torch.Tensor, b: torch.Tensor, params: Sequence[torch.Tensor]
) -> dict[str, float]:
    """``cos(∇a, ∇b)`` over the parameters both scalars depend on, and both gradients' norms.

    The graph is kept (the step's backward still runs). Returns ``cos`` (NaN when either
    gradient is zero there), ``a_grad_norm``, ``b_grad_norm`` and ``shared`` (parameters used).
    """
    ga = torch.autograd.grad(a, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(b, params, retain_graph=True, allow_unused=True)
    pairs = [(x, y) for x, y in zip(ga, gb) if x is not None and y is not None]
    if not pairs:
        return {"cos": math.nan, "a_grad_norm": 0.0, "b_grad_norm": 0.0, "shared": 0}
    dot = sum((x.double() * y.double()).sum() for x, y in pairs)
    na = torch.sqrt(sum(x.double().square().sum() for x, _ in pairs))
    nb = torch.sqrt(sum(y.double().square().sum() for _, y in pairs))
    cos = float(dot / (na * nb)) if na > 0 and nb > 0 else math.nan
    return {"cos": cos, "a_grad_norm": float(na), "b_grad_norm": float(nb), "shared": len(pairs)}


class PhaseGate:
    """GAPT's two-phase state machine (pure Python: feed it each step's CE and MBE).

    Args:
        p_m: plateau patience of the memorization phase: steps without a relative CE gain above
            ``ce_gain`` (against the CE at the last gain) before compression starts.
        p_a: patience of the compression phase: steps without a relative MBE gain above
            ``mbe_gain`` before memorization resumes.
        ce_gain, mbe_gain: relative gains that count as improving, in (0, 1).
        ce_spike: compression stops when CE exceeds ``(1 + ce_spike)`` times its minimum (> 0).
        smooth: EMA factor in [0, 1) applied to CE and MBE before the rules (0: raw).
        steps: the run's length; a patience that cannot elapse within it is refused.

    Raises:
        RotelabError: a rule that can never trigger or always triggers (patience < 1 or >= the
            run, gains outside (0, 1), a spike <= 0 or infinite, smoothing outside [0, 1)).
    """

    def __init__(
        self,
        p_m: int,
        p_a: int,
        *,
        ce_gain: float = 0.01,
        ce_spike: float = 0.10,
        mbe_gain: float = 0.01,
        smooth: float = 0.9,
        steps: int | None = None,
    ) -> None:
        for name, p in (("p_m", p_m), ("p_a", p_a)):
            if int(p) != p or p < 1:
                raise RotelabError(f"GAPT's patience {name} must be a whole number >= 1, got {p}")
            if steps is not None and p >= steps:
                raise RotelabError(
                    f"GAPT's patience {name}={p} is not shorter than the run's {steps} steps: "
                    "that phase rule can never trigger"
                )
        for name, g in (("ce_gain", ce_gain), ("mbe_gain", mbe_gain)):
            if not 0 < g < 1:
                raise RotelabError(
                    f"GAPT's {name} must be in (0, 1), got {g}: a relative gain outside it "
                    "always or never counts, so its rule never or always triggers"
                )
        if not (0 < ce_spike < math.inf):
            raise RotelabError(
                f"GAPT's ce_spike must be > 0 and finite, got {ce_spike}: the CE-spike rule "
                "would always or never trigger"
            )
        if not 0 <= smooth < 1:
            raise RotelabError(f"GAPT's smoothing must be in [0, 1), got {smooth}")
        self.p_m, self.p_a = int(p_m), int(p_a)
        self.ce_gain, self.ce_spike, self.mbe_gain = ce_gain, ce_spike, mbe_gain
        self.smooth = smooth
        self.phase = MEMORIZE
        self.ce: float | None = None  # smoothed CE
        self.mbe: float | None = None  # smoothed MBE (compression phase only)
        self.ce_min = math.inf
        self.ce_ref = math.inf  # CE at the last relative gain (memorization phase)
        self.mbe_ref = math.inf  # MBE at the last relative gain (compression phase)
        self.stall = 0  # steps since the last gain of the current phase

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else self.smooth * old + (1 - self.smooth) * new

    def update(self, ce: float, mbe: float | None = None) -> str | None:
        """Take one step's CE (and MBE, needed in the compression phase); return the reason
        when the phase changes for the next step (``"ce_plateau"``, ``"ce_spike"``,
        ``"mbe_plateau"``), else ``None``. :attr:`phase` is the phase of the next step."""
        self.ce = self._ema(self.ce, float(ce))
        self.ce_min = min(self.ce_min, self.ce)
        if self.phase == MEMORIZE:
            if self.ce < self.ce_ref * (1 - self.ce_gain):
                self.ce_ref, self.stall = self.ce, 0
            else:
                self.stall += 1
            if self.stall >= self.p_m:
                self.phase, self.stall, self.mbe, self.mbe_ref = COMPRESS, 0, None, math.inf
                return "ce_plateau"
            return None
        if mbe is None:
            raise ValueError("the compression phase needs each step's MBE")
        if self.ce > (1 + self.ce_spike) * self.ce_min:
            self._memorize()
            return "ce_spike"
        self.mbe = self._ema(self.mbe, float(mbe))
        if self.mbe < self.mbe_ref * (1 - self.mbe_gain):
            self.mbe_ref, self.stall = self.mbe, 0
        else:
            self.stall += 1
        if self.stall >= self.p_a:
            self._memorize()
            return "mbe_plateau"
        return None

    def _memorize(self) -> None:
        # CE's plateau is measured afresh from here: the phase just ended moved it.
        self.phase, self.stall, self.ce_ref = MEMORIZE, 0, self.ce


class MBETerm(LossTerm):
    """``weight * MBE`` added to every step's loss (MBE: :func:`mean_block_mbe` of the blocks'
    outputs in the step's forward pass), with the CE/MBE gradient alignment logged.

    Args:
        weight: λ >= 0; 0 only measures (MBE on logged steps, and the alignment).
        patch: tokens per patch (>= 2; must divide the training sequence length).
        blocks: block indices; ``None``: all.
        align_every: compute ``cos(∇CE, ∇MBE)`` every this many steps (two extra backward
            passes each); ``None``: on the trainer's logged steps; 0: never.
    """

    name = "mbe"

    def __init__(
        self,
        weight: float,
        *,
        patch: int = PATCH,
        blocks: Sequence[int] | None = None,
        align_every: int | None = None,
    ) -> None:
        if not (weight >= 0 and math.isfinite(weight)):
            raise RotelabError(f"the MBE weight (lambda) must be >= 0 and finite, got {weight}")
        check_patch(patch)
        if align_every is not None and align_every < 0:
            raise RotelabError(f"align_every must be >= 0, got {align_every}")
        self.weight = float(weight)
        self.patch = patch
        self.blocks = None if blocks is None else [int(b) for b in blocks]
        self.align_every = align_every
        self.steps: list[dict[str, Any]] = []
        self.alignment: list[dict[str, Any]] = []
        self._captured: list[torch.Tensor | None] = []
        self._handles: list[Any] = []
        self._last: dict[str, Any] = {}

    # ----------------------------------------------------------------- hooks
    def attach(self, model: torch.nn.Module) -> None:
        blocks = transformer_blocks(model)
        if not blocks:
            raise RotelabError("the MBE regularizer found no transformer blocks in the model")
        chosen = list(range(len(blocks))) if self.blocks is None else self.blocks
        bad = [b for b in chosen if not 0 <= b < len(blocks)]
        if bad or not chosen:
            raise RotelabError(
                f"MBE blocks {bad or chosen} are outside the model's blocks 0..{len(blocks) - 1}"
            )
        self._captured = [None] * len(chosen)
        for j, b in enumerate(chosen):
            self._handles.append(blocks[b].register_forward_hook(self._keep(j)))

    def _keep(self, j: int):
        def hook(module, args, output) -> None:
            self._captured[j] = output[0] if isinstance(output, tuple) else output

        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._captured = [None] * len(self._captured)

    def before_forward(self, step: int) -> None:
        self._captured = [None] * len(self._captured)

    # ----------------------------------------------------------------- the loss
    def active(self) -> bool:
        """Whether the next step's loss gets ``weight * MBE``."""
        return self.weight > 0

    @property
    def phase(self) -> int:
        return COMPRESS if self.active() else MEMORIZE

    def _aligns(self, state: StepState) -> bool:
        if self.align_every is None:
            return state.logged
        return self.align_every > 0 and state.step % self.align_every == 0

    def mbe(self, state: StepState) -> torch.Tensor:
        """This step's MBE, from the hidden states its forward pass left in the hooks."""
        if any(h is None for h in self._captured):
            raise RuntimeError("the MBE hooks saw no forward pass this step (attach first)")
        length = state.batch.shape[1] - 1
        if state.step == 0 or length % self.patch:
            check_patch(self.patch, length, what="the training sequence")
        return mean_block_mbe(self._captured, self.patch)

    def loss(self, state: StepState) -> torch.Tensor | None:
        active, phase = self.active(), self.phase
        aligns = self._aligns(state)
        need = active or aligns or state.logged or self._gate_needs_mbe()
        mbe = self.mbe(state) if need else None
        row: dict[str, Any] = {
            "step": state.step, "phase": phase, "ce": float(state.ce.detach()),
            "mbe": float(mbe.detach()) if mbe is not None else math.nan,
            "weight": self.weight if active else 0.0,
        }  # fmt: skip
        self._last = {f"{self.name}": row["mbe"], f"{self.name}_phase": phase}
        if aligns and mbe is not None:
            params = [p for p in state.model.parameters() if p.requires_grad]
            al = gradient_alignment(state.ce, mbe, params)
            self.alignment.append({
                "step": state.step, "phase": phase, "cos": al["cos"],
                "ce_grad_norm": al["a_grad_norm"], "mbe_grad_norm": al["b_grad_norm"],
                "shared_params": al["shared"], "ce": row["ce"], "mbe": row["mbe"],
            })  # fmt: skip
            self._last[f"{self.name}_align_cos"] = al["cos"]
        self.steps.append(row)
        self._after(row)
        return self.weight * mbe if active and mbe is not None else None

    def _gate_needs_mbe(self) -> bool:
        return False

    def _after(self, row: dict[str, Any]) -> None:
        """Called with each step's row (the gate updates here)."""

    def record(self, state: StepState) -> dict[str, Any]:
        return dict(self._last)


class GAPT(MBETerm):
    """Gated Phase Transition: ``weight * MBE`` only in the compression phase of a
    :class:`PhaseGate` (see the module docstring for the rules).

    Args:
        weight: λ of the compression phase, > 0.
        p_m, p_a, ce_gain, ce_spike, mbe_gain, smooth, steps: the gate's (:class:`PhaseGate`).
        patch, blocks, align_every: as :class:`MBETerm`.

    Attributes:
        transitions: one dict per phase change: ``step`` (the last step of the old phase),
            ``from``, ``to``, ``reason``.
    """

    name = "gapt"

    def __init__(
        self,
        weight: float,
        *,
        p_m: int,
        p_a: int,
        ce_gain: float = 0.01,
        ce_spike: float = 0.10,
        mbe_gain: float = 0.01,
        smooth: float = 0.9,
        steps: int | None = None,
        patch: int = PATCH,
        blocks: Sequence[int] | None = None,
        align_every: int | None = None,
    ) -> None:
        super().__init__(weight, patch=patch, blocks=blocks, align_every=align_every)
        if self.weight == 0:
            raise RotelabError("GAPT's weight (lambda) is 0: its compression phase is CE only")
        self.gate = PhaseGate(
            p_m, p_a, ce_gain=ce_gain, ce_spike=ce_spike, mbe_gain=mbe_gain, smooth=smooth,
            steps=steps,
        )  # fmt: skip
        self.transitions: list[dict[str, Any]] = []

    def active(self) -> bool:
        return self.gate.phase == COMPRESS

    def _gate_needs_mbe(self) -> bool:
        return self.gate.phase == COMPRESS

    def _after(self, row: dict[str, Any]) -> None:
        before = self.gate.phase
        reason = self.gate.update(row["ce"], None if math.isnan(row["mbe"]) else row["mbe"])
        if reason is not None:
            self.transitions.append(
                {"step": row["step"], "from": before, "to": self.gate.phase, "reason": reason}
            )

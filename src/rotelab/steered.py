"""A steered model (core): a base model plus a probe-gated steering vector, as a small directory.

Dynamic Mode Steering (Zhang 2025, "Generalization or Memorization: Dynamic Decoding for Mode
Steering") adds to the residual stream at one layer, at every token,

    h_t <- h_t + alpha * p_mem(h_t) * v,    p_mem(h) = sigmoid(w . h + b),

where ``(w, b)`` is a linear probe for "the model is reciting" and ``v`` a unit vector from the
memorizing towards the generalizing states. *Static* steering is the same with ``p_mem = 1``.
The paper's *self-contrastive* variant (mode ``contrastive``) contrasts the steered logits with
the unsteered ones, weighted by the probe. PAPERS.md gives no formula for it (the method section
is not public in full), so we use the contrastive-decoding form

    logits = l_u + gamma * p_mem(h_t) * (l_s - l_u),

with ``l_u`` the unsteered logits, ``l_s`` the logits under static steering (``h += alpha * v``),
``p_mem`` read from the unsteered state at the steered layer and ``gamma`` (default 1: an
interpolation; > 1 extrapolates away from the unsteered mode). It needs the unsteered computation
above the layer as well: the batch runs twice in one forward (rows doubled at the model's input,
the second half steered, the halves combined after the final norm, where the LM head is still
linear, so the combination is exact in logits; models with a logit soft-cap are refused).
The probe and the vector are fitted by :mod:`rotelab.edit.steering`; this module only reads,
checks, writes and applies the result, so that :meth:`rotelab.lm.LM.load` (and therefore every
command that takes ``--model``) accepts a steered model like any other. The steering is one hook
on a named hook point, in place for scoring and decoding alike: no extra forward pass.

A spec directory holds two files:

- ``steering.json``: ``{"format": "rotelab-steering", "version": 1, "base_model": str,
  "layer": int (1..num_layers: the stream after block layer-1), "alpha": float,
  "mode": "dynamic" | "static" | "contrastive", "gamma": float (optional, default 1),
  "fingerprint": str, "hidden_size": int, "info": {...}}``
- ``steering.safetensors``: ``probe_weight`` (D,), ``probe_bias`` (1,), ``vector`` (D,), float32,
  the probe acting on the raw hidden state (any standardization folded in).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rotelab.errors import RotelabError

__all__ = [
    "SPEC_FILE",
    "TENSOR_FILE",
    "SteeringMode",
    "SteeringSpec",
    "check_steering_layer",
    "is_steering_dir",
    "model_fingerprint",
    "steering_point",
]

SPEC_FILE = "steering.json"
TENSOR_FILE = "steering.safetensors"
_FORMAT = "rotelab-steering"


class SteeringMode(str, Enum):
    """How each token is steered: by the probe (``dynamic``), always (``static``), or by
    contrasting statically steered with unsteered logits, weighted by the probe
    (``contrastive``)."""

    dynamic = "dynamic"
    static = "static"
    contrastive = "contrastive"


def is_steering_dir(path: str | os.PathLike) -> bool:
    """A directory holding a steering spec (``steering.json``)."""
    return (Path(path).expanduser() / SPEC_FILE).is_file()


def steering_point(layer: int) -> str:
    """The hook point of residual-stream layer ``layer`` (1 = after block 0), as
    :meth:`rotelab.lm.LM.hidden_states` counts layers."""
    return f"blocks.{layer - 1}.resid_out"


def check_steering_layer(layer: int, num_layers: int, where: str) -> None:
    """Refuse a layer the model does not have (steerable: 1..num_layers)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers:
        raise RotelabError(
            f"{where}: layer {layer!r} does not exist; this model has residual-stream layers "
            f"1..{num_layers} (layer l is the stream after block l-1)"
        )


def model_fingerprint(model: nn.Module) -> str:
    """A short id of a model's weights that survives a change of dtype or device.

    The signs of the first 256 input-embedding entries (rounding to bf16 keeps a sign), with the
    embedding's shape: two trainings from different seeds differ, a reload in another precision
    does not. Used to refuse a probe fitted on another model.
    """
    emb = model.get_input_embeddings().weight.detach()
    signs = (emb.flatten()[:256].float().cpu() > 0).to(torch.uint8).numpy().tobytes()
    return hashlib.sha1(repr(tuple(emb.shape)).encode() + signs).hexdigest()[:16]


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RotelabError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class SteeringSpec:
    """What a steered model adds to its base model (see the module docstring).

    Attributes:
        base_model: what :meth:`rotelab.lm.LM.load` loads underneath (a directory, ``.gguf``,
            named model or hub id).
        layer: residual-stream layer steered, 1..num_layers.
        alpha: steering strength (in hidden-state units: ``v`` is a unit vector).
        mode: dynamic (gated by the probe), static (``p_mem = 1``) or contrastive.
        probe_weight, probe_bias: the probe on raw hidden states: (D,) and a float.
        vector: (D,) unit steering direction.
        fingerprint: :func:`model_fingerprint` of the model the probe was fitted on.
        info: free-form provenance (probe AUC, layer table, ...), kept in the JSON.
        gamma: the contrastive mode's weight (``logits = l_u + gamma * p_mem * (l_s - l_u)``);
            unused by the other modes.
    """

    base_model: str
    layer: int
    alpha: float
    mode: SteeringMode
    probe_weight: torch.Tensor
    probe_bias: float
    vector: torch.Tensor
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    gamma: float = 1.0

    def __post_init__(self) -> None:
        self.mode = SteeringMode(self.mode)
        self.alpha = _number(self.alpha, "alpha", "steering")
        self.gamma = _number(self.gamma, "gamma", "steering")
        self.probe_weight = self.probe_weight.detach().float().flatten().cpu()
        self.vector = self.vector.detach().float().flatten().cpu()

    @property
    def hidden_size(self) -> int:
        return int(self.vector.numel())

    @property
    def point(self) -> str:
        """The hook point the steering sits on."""
        return steering_point(self.layer)

    def p_mem(self, h: torch.Tensor) -> torch.Tensor:
        """(...,) probe probability of memorization at hidden states (..., D)."""
        w = self.probe_weight.to(h.device)
        return torch.sigmoid(h.float() @ w + self.probe_bias)

    def hook(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The hook function: ``h + alpha * p_mem(h) * v`` (``p_mem = 1`` when static).

        Not for the contrastive mode, which needs more than one hook point: use :meth:`install`.
        """
        if self.mode is SteeringMode.contrastive:
            raise RotelabError("contrastive steering is installed with SteeringSpec.install")
        cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        alpha, bias, static = self.alpha, self.probe_bias, self.mode is SteeringMode.static

        def steer(h: torch.Tensor) -> torch.Tensor:
            if h.device not in cache:
                cache[h.device] = (self.probe_weight.to(h.device), self.vector.to(h.device))
            w, v = cache[h.device]
            if static:
                return h + (alpha * v).to(h.dtype)
            # (B, T) gate from the unsteered state; the product stays fp32 for the sigmoid
            gate = torch.sigmoid(
                torch.addmv(h.new_full((), bias).float(), h.flatten(0, -2).float(), w)
            )
            return h + (alpha * gate.view(*h.shape[:-1], 1) * v).to(h.dtype)

        return steer

    def install(self, model: nn.Module, register: Callable[[dict[str, Callable]], list]) -> list:
        """Install the steering on ``model``; returns handles whose ``remove()`` undoes it.

        Args:
            model: the base model (a transformers causal LM, its body at ``model.base_model``).
            register: registers ``{hook point: function}`` (:meth:`rotelab.lm.LM._register`).

        Raises:
            RotelabError: contrastive mode on a model whose logits are soft-capped (not linear in
                the final hidden state, so the combination there would not be the formula's).
        """
        if self.mode is not SteeringMode.contrastive:
            return register({self.point: self.hook()})
        config = getattr(model, "config", None)
        if getattr(config, "final_logit_softcapping", None):
            raise RotelabError(
                "contrastive steering needs logits linear in the final hidden state; this model "
                "soft-caps its logits (use mode dynamic or static)"
            )
        return _Contrast(self).install(model.base_model, register)

    def with_(self, **changes: Any) -> SteeringSpec:
        """A copy with some fields changed (another alpha or mode)."""
        fields = {**self.__dict__, **changes}
        return SteeringSpec(**fields)

    # ---------------------------------------------------------------- files
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``steering.json`` and ``steering.safetensors`` into ``directory`` (made if
        needed; the caller makes the write atomic, e.g. with :class:`rotelab.runs.OutputDir`)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "probe_weight": self.probe_weight.contiguous(),
                "probe_bias": torch.tensor([self.probe_bias], dtype=torch.float32),
                "vector": self.vector.contiguous(),
            },
            str(out / TENSOR_FILE),
        )
        meta = {
            "format": _FORMAT, "version": 1, "base_model": self.base_model, "layer": self.layer,
            "alpha": self.alpha, "mode": self.mode.value, "fingerprint": self.fingerprint,
            "hidden_size": self.hidden_size, "info": self.info, "gamma": self.gamma,
        }  # fmt: skip
        (out / SPEC_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return out

    @classmethod
    def read(cls, directory: str | os.PathLike) -> SteeringSpec:
        """Read and check a spec directory without loading any model.

        Raises:
            RotelabError: a missing or unreadable file, a field of the wrong type (alpha not a
                number, a layer that is not a positive integer), tensors of the wrong shape, or
                a base model that is itself a steering spec or a missing local path.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory).expanduser()
        where = f"steering spec {path}"
        for name in (SPEC_FILE, TENSOR_FILE):
            if not (path / name).is_file():
                raise RotelabError(
                    f"{where} is missing {name}; save the steered model again (rotelab steer)"
                )
        try:
            meta = json.loads((path / SPEC_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RotelabError(f"{where}: {SPEC_FILE} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise RotelabError(f"{where}: {SPEC_FILE} is not a rotelab steering spec")
        missing = [
            k for k in ("base_model", "layer", "alpha", "mode", "fingerprint") if k not in meta
        ]
        if missing:
            raise RotelabError(f"{where}: {SPEC_FILE} lacks {', '.join(missing)}")
        alpha = _number(meta["alpha"], "alpha", where)
        gamma = _number(meta.get("gamma", 1.0), "gamma", where)
        layer = meta["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
            raise RotelabError(f"{where}: layer {layer!r} does not exist (layers count from 1)")
        try:
            mode = SteeringMode(meta["mode"])
        except ValueError:
            raise RotelabError(
                f"{where}: mode {meta['mode']!r} is not one of dynamic, static, contrastive"
            ) from None
        try:
            tensors = load_file(str(path / TENSOR_FILE))
        except (SafetensorError, OSError) as exc:
            raise RotelabError(f"{where}: {TENSOR_FILE} is corrupt ({exc})") from None
        need = {"probe_weight", "probe_bias", "vector"}
        if not need <= set(tensors):
            raise RotelabError(f"{where}: {TENSOR_FILE} lacks {sorted(need - set(tensors))}")
        w, b, v = tensors["probe_weight"], tensors["probe_bias"], tensors["vector"]
        if w.ndim != 1 or v.shape != w.shape or b.numel() != 1:
            raise RotelabError(
                f"{where}: {TENSOR_FILE} holds a probe of shape {tuple(w.shape)} and a vector of "
                f"shape {tuple(v.shape)}; both must be (hidden,)"
            )
        if not (torch.isfinite(w).all() and torch.isfinite(v).all() and torch.isfinite(b).all()):
            raise RotelabError(f"{where}: {TENSOR_FILE} holds values that are not finite")
        base = str(meta["base_model"])
        base_path = Path(base).expanduser()
        if not base_path.is_absolute() and (path / base).exists():
            base = str((path / base).resolve())  # relative to the spec, so the pair can move
            base_path = Path(base)
        if is_steering_dir(base_path):
            raise RotelabError(f"{where}: its base model {base} is itself a steering spec")
        if base.startswith((".", "/", "~")) and not base_path.exists():
            raise RotelabError(f"{where}: its base model {base} does not exist")
        return cls(
            base_model=base, layer=layer, alpha=alpha, mode=mode, probe_weight=w,
            probe_bias=float(b.flatten()[0]), vector=v, fingerprint=str(meta["fingerprint"]),
            info=meta.get("info") or {}, gamma=gamma,
        )  # fmt: skip

    def check_base_config(self, where: str) -> None:
        """Layer and hidden size against a local base directory's ``config.json`` (no load)."""
        config = Path(self.base_model).expanduser() / "config.json"
        if not config.is_file():
            return
        try:
            cfg = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # the model loader names a broken config itself
        layers = next((cfg[k] for k in ("num_hidden_layers", "n_layer") if k in cfg), None)
        hidden = next((cfg[k] for k in ("hidden_size", "n_embd", "d_model") if k in cfg), None)
        if isinstance(layers, int):
            check_steering_layer(self.layer, layers, where)
        if isinstance(hidden, int) and hidden != self.hidden_size:
            raise RotelabError(
                f"{where}: its probe is for hidden size {self.hidden_size}, but the base model "
                f"{self.base_model} has {hidden}; the probe was fitted on another model"
            )

    def check_model(self, model: nn.Module, num_layers: int, where: str) -> None:
        """The loaded base model is the one the probe was fitted on, and has the layer."""
        check_steering_layer(self.layer, num_layers, where)
        got = model_fingerprint(model)
        if got != self.fingerprint:
            raise RotelabError(
                f"{where}: the probe was fitted on another model (fingerprint {self.fingerprint}, "
                f"{self.base_model} has {got}); fit the probe on this model (rotelab probe)"
            )


#: Keyword inputs of a model body whose first dimension is the batch (doubled for the contrast).
_BATCH_KWARGS = ("input_ids", "attention_mask", "position_ids", "inputs_embeds")


class _Handle:
    """Removes a list of hook handles, and the body's doubled-batch marker, in one call."""

    def __init__(self, body: nn.Module, handles: list) -> None:
        self.body, self.handles = body, handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if getattr(self.body, "_rotelab_doubled", 0) > 0:
            self.body._rotelab_doubled -= 1


class _Contrast:
    """The self-contrastive steering of one spec, as three hooks (see the module docstring).

    Rows are doubled at the body's input ``[x; x]`` (a KV cache then holds both halves, so
    decoding with a cache works unchanged), the steered layer reads ``p_mem`` from the first
    (unsteered) half and adds ``alpha * v`` to the second, and the body's output keeps
    ``u + gamma * p_mem * (s - u)`` of the final-norm states ``u`` (first half) and ``s``.
    Code that gathers cache rows itself must not run on a doubled body: the body carries
    ``_rotelab_doubled > 0`` while installed (:meth:`rotelab.lm.LM.score_continuations` checks).
    """

    def __init__(self, spec: SteeringSpec) -> None:
        self.spec = spec
        self.gate: torch.Tensor | None = None  # (B, T) p_mem of the current forward

    def install(self, body: nn.Module, register: Callable[[dict[str, Callable]], list]) -> list:
        handles = [body.register_forward_pre_hook(self._double, with_kwargs=True)]
        try:
            handles += register({self.spec.point: self._steer})
            handles.append(body.register_forward_hook(self._combine))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        body._rotelab_doubled = getattr(body, "_rotelab_doubled", 0) + 1
        return [_Handle(body, handles)]

    def _double(self, module, args, kwargs):
        if args:  # input_ids given positionally
            kwargs = {**kwargs, "input_ids": args[0]}
            args = args[1:]
        new = dict(kwargs)
        for key in _BATCH_KWARGS:
            t = kwargs.get(key)
            if isinstance(t, torch.Tensor) and t.ndim >= 2:
                new[key] = torch.cat([t, t])
        return args, new

    def _steer(self, h: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        n = h.shape[0] // 2
        u = h[:n]
        w = spec.probe_weight.to(h.device)
        self.gate = torch.sigmoid(u.float() @ w + spec.probe_bias)  # (B, T), unsteered state
        steered = h[n:] + (spec.alpha * spec.vector.to(h.device)).to(h.dtype)
        return torch.cat([u, steered])

    def _combine(self, module, args, output):
        h = output.last_hidden_state
        n = h.shape[0] // 2
        gate = self.gate
        self.gate = None
        if gate is None:
            raise RuntimeError("contrastive steering: the steered layer did not run")
        u, s = h[:n], h[n:]
        weight = (self.spec.gamma * gate[:, -u.shape[1] :]).unsqueeze(-1)
        output.last_hidden_state = (u.float() + weight * (s.float() - u.float())).to(h.dtype)
        return output

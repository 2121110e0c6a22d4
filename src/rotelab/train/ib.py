"""Information-bottleneck fine-tuning (IB-FT): a variational adapter on a middle hidden state.

Wang et al. 2025 ("Breaking Memorization Barriers in LLM Code Fine-Tuning via Information
Bottleneck") fine-tune with a penalty that compresses the hidden representation, so features the
base model memorized (spurious for the new task) are squeezed out and the fine-tuning signal can
build general ones. On the hidden state h (batch, seq, hidden) leaving a middle block:

    mu = W_mu h,  log sigma^2 = clamp(W_v h, -4, 4),  z = mu + sigma * eps,  h_bar = W_up z
    KL    = -1/2 * mean(1 + log sigma^2 - mu^2 - sigma^2)
    CE_ib = CE(lm_head(h_bar), next tokens)
    loss  = CE + alpha * (KL + beta * CE_ib),   alpha = 0.2, beta = 0.01

The adapter only shapes the training signal: the model's own forward pass is not changed (the
hook observes h, it does not replace it), so the fine-tuned model is an ordinary model, saved and
measured like any other, and the adapter is dropped afterwards. ``lm_head`` is applied to h_bar as
it is, as in the paper's formula (no final norm; the adapter learns the scale).

:class:`InformationBottleneck` plugs into :func:`rotelab.train.train` unchanged: attach it to a
model (the adapter becomes a submodule, so the trainer's optimizer trains it with the model, and
a hook on ``blocks.{layer}.resid_out`` keeps h), then pass it as ``extra_loss``, which adds
``alpha * (KL + beta * CE_ib)`` to the trainer's CE. It works on any causal LM that
:meth:`rotelab.lm.LM.hooks` finds blocks in, LoRA-wrapped (peft) models included.

Example:
    >>> ib = InformationBottleneck(IBConfig(alpha=0.2, beta=0.01))  # doctest: +SKIP
    >>> with ib.attach(model):  # doctest: +SKIP
    ...     log = train(model, batches, TrainConfig(steps=200), extra_loss=ib)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.train.trainer import causal_lm_loss

__all__ = ["IBConfig", "InformationBottleneck", "VariationalAdapter", "gaussian_kl"]

#: The attribute the adapter is registered under while attached.
ADAPTER = "ib_adapter"


@dataclass(frozen=True)
class IBConfig:
    """IB-FT settings: the paper's ``alpha`` and ``beta``; ``layer`` (the block whose output is
    compressed; ``None``: the middle one, ``num_layers // 2 - 1``); ``bottleneck`` (z's size;
    ``None``: hidden // 2, our choice, the paper's notes do not fix it); the log-variance clamp."""

    alpha: float = 0.2
    beta: float = 0.01
    layer: int | None = None
    bottleneck: int | None = None
    logvar_clamp: float = 4.0

    def check(self) -> IBConfig:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise RotelabError(f"--ib-{name} must be a number >= 0, got {value}")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise RotelabError(f"the IB bottleneck size must be >= 1, got {self.bottleneck}")
        if not self.logvar_clamp > 0:
            raise RotelabError(f"the log-variance clamp must be > 0, got {self.logvar_clamp}")
        return self


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element, averaged:
    -1/2 mean(1 + logvar - mu^2 - e^logvar)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


class VariationalAdapter(nn.Module):
    """h (..., hidden) -> (h_bar (..., hidden), KL): the reparameterized Gaussian bottleneck."""

    def __init__(self, hidden: int, bottleneck: int, logvar_clamp: float = 4.0) -> None:
        super().__init__()
        self.w_mu = nn.Linear(hidden, bottleneck)
        self.w_v = nn.Linear(hidden, bottleneck)
        self.w_up = nn.Linear(bottleneck, hidden)
        self.logvar_clamp = logvar_clamp

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.w_mu(h)  # (B, T, K)
        logvar = self.w_v(h).clamp(-self.logvar_clamp, self.logvar_clamp)
        # sampled while training; the mean in eval mode, so evaluation is deterministic
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu
        return self.w_up(z), gaussian_kl(mu.float(), logvar.float())


class InformationBottleneck:
    """IB-FT's extra loss: ``ib(model, batch, logits) -> alpha * (KL + beta * CE_ib)``.

    Use inside :meth:`attach`; :attr:`last` holds the latest ``kl`` and ``ce_ib`` (floats) for
    training curves.
    """

    def __init__(self, config: IBConfig = IBConfig()) -> None:
        self.config = config.check()
        self.adapter: VariationalAdapter | None = None
        self.layer: int | None = None
        self.last: dict[str, float] = {}
        self._h: torch.Tensor | None = None

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[InformationBottleneck]:
        """Register the adapter on ``model`` and keep its middle hidden state on every forward
        pass for the ``with`` block; both are removed at its end (also on an exception)."""
        if hasattr(model, ADAPTER):
            raise RotelabError("an information bottleneck is already attached to this model")
        training = model.training
        lm = LM.from_model(model, None)
        model.train(training)  # wrapping puts a model in eval mode; keep the caller's mode
        blocks = lm.num_layers
        layer = blocks // 2 - 1 if self.config.layer is None else self.config.layer
        if not 0 <= layer < blocks:
            raise RotelabError(f"IB layer {layer} is outside the model's blocks 0..{blocks - 1}")
        hidden = int(model.get_output_embeddings().weight.shape[1])
        param = next(model.parameters())
        adapter = VariationalAdapter(
            hidden, self.config.bottleneck or max(1, hidden // 2), self.config.logvar_clamp
        ).to(device=param.device, dtype=torch.float32)
        adapter.train(training)
        self.adapter, self.layer = adapter, layer
        model.add_module(ADAPTER, adapter)

        def keep(h: torch.Tensor) -> None:
            self._h = h

        try:
            with lm.hooks({f"blocks.{layer}.resid_out": keep}):
                yield self
        finally:
            delattr(model, ADAPTER)
            self._h = None

    def __call__(self, model: nn.Module, batch: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``alpha * (KL + beta * CE_ib)`` for the forward pass that just produced ``logits``
        from ``batch[:, :-1]`` (the trainer's ``extra_loss`` signature)."""
        if self.adapter is None or self._h is None:
            raise RuntimeError("attach the bottleneck and run the model before its loss")
        h, self._h = self._h, None
        h_bar, kl = self.adapter(h.float())
        head = model.get_output_embeddings()
        ce_ib = causal_lm_loss(head(h_bar.to(head.weight.dtype)), batch)
        self.last = {"kl": float(kl.detach()), "ce_ib": float(ce_ib.detach())}
        return self.config.alpha * (kl + self.config.beta * ce_ib)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The whole IB-FT objective of one ``(B, T + 1)`` batch, outside the trainer:
        ``CE + alpha * (KL + beta * CE_ib)`` and its parts."""
        logits = model(input_ids=batch[:, :-1]).logits
        ce = causal_lm_loss(logits, batch)
        extra = self(model, batch, logits)
        return ce + extra, {"ce": float(ce.detach()), **self.last}

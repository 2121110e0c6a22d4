"""Loss terms: how :func:`rotelab.train.train` composes regularizers with the LM loss.

A :class:`LossTerm` is attached to the model before the first step (e.g. to hook its blocks, so
what it needs is captured in the training step's own forward pass), asked each step for a tensor
to add to the loss (or ``None``: nothing this step), gives values for the step's log record, and
is detached after the last step, also on an error. Terms are independent: each sees the same
:class:`StepState` (the step, the batch, the logits, the LM loss), and their tensors are summed
with the LM loss. With no term the trainer runs exactly as without this module.

Example:
    >>> class L2(LossTerm):
    ...     name = "l2"
    ...     def loss(self, state):
    ...         return 1e-4 * sum(p.square().sum() for p in state.model.parameters())
    >>> train(model, batches, cfg, terms=[L2()])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LossTerm", "StepState"]


@dataclass
class StepState:
    """One training step as a loss term sees it.

    Attributes:
        step: the step index (0-based).
        model: the model being trained (in train mode).
        batch: the ``(batch, seq + 1)`` tokens; inputs are ``batch[:, :-1]``.
        logits: the forward pass's ``(batch, seq, vocab)`` logits.
        ce: the LM loss (mean next-token cross-entropy), a scalar tensor with its graph.
        logged: whether this step is written to the training log.
    """

    step: int
    model: torch.nn.Module
    batch: torch.Tensor
    logits: torch.Tensor
    ce: torch.Tensor
    logged: bool


class LossTerm:
    """Base class of a training-time loss term; subclasses override what they need."""

    #: Prefix of the term's values in the log record.
    name: str = "term"

    def attach(self, model: torch.nn.Module) -> None:
        """Called once before the first step (register hooks here)."""

    def detach(self) -> None:
        """Called once after the last step, also when training fails (remove hooks here)."""

    def before_forward(self, step: int) -> None:
        """Called before each step's forward pass (e.g. to clear what hooks captured)."""

    def loss(self, state: StepState) -> torch.Tensor | None:
        """The tensor added to this step's loss, or ``None`` for nothing."""
        return None

    def record(self, state: StepState) -> dict[str, Any]:
        """Values for the log record of a logged step (keys should start with :attr:`name`)."""
        return {}

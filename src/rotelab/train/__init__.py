"""Training: a generic causal-LM trainer and Hubble-style insertion schedules."""

from __future__ import annotations

from rotelab.train.insertion import Placement, insertion_schedule, packed_batches, phase_steps
from rotelab.train.trainer import TrainConfig, causal_lm_loss, cosine_lr, train

__all__ = [
    "Placement",
    "TrainConfig",
    "causal_lm_loss",
    "cosine_lr",
    "insertion_schedule",
    "packed_batches",
    "phase_steps",
    "train",
]

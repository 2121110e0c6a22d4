"""Training: a generic causal-LM trainer, composable loss terms (MBE, GAPT) and Hubble-style
insertion schedules."""

from __future__ import annotations

from rotelab.train.gapt import GAPT, MBETerm, PhaseGate
from rotelab.train.insertion import Placement, insertion_schedule, packed_batches, phase_steps
from rotelab.train.scratch import ScratchConfig, train_with_insertions
from rotelab.train.suppress import SuppressConfig, SuppressMethod, suppress, unlikelihood
from rotelab.train.terms import LossTerm, StepState
from rotelab.train.trainer import TrainConfig, causal_lm_loss, cosine_lr, llama_config, train

__all__ = [
    "GAPT",
    "LossTerm",
    "MBETerm",
    "PhaseGate",
    "StepState",
    "Placement",
    "ScratchConfig",
    "TrainConfig",
    "causal_lm_loss",
    "cosine_lr",
    "insertion_schedule",
    "llama_config",
    "packed_batches",
    "phase_steps",
    "train",
    "train_with_insertions",
    "SuppressConfig",
    "SuppressMethod",
    "suppress",
    "unlikelihood",
]

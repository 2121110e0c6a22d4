"""Recommender memory at a fixed serving cost: VISTA (Chen et al. 2025, Meta), its baselines
(full target attention over the whole history, DIN-style; last-N truncation), lifelong-user
data and the summary cache. See :mod:`rotelab.recsys.model` for the method and the choices made
where the paper's notes are silent."""

from rotelab.recsys.cache import SummaryCache, dequantize, quantize
from rotelab.recsys.data import (
    Batch,
    InteractionLog,
    SyntheticSpec,
    SyntheticWorld,
    read_candidates,
    read_log,
)
from rotelab.recsys.model import (
    FullAttention,
    LastN,
    ModelConfig,
    QuasiLinearSummarizer,
    TargetAttention,
    Vista,
    build_model,
    model_version,
)
from rotelab.recsys.train import (
    Folded,
    auc,
    fit,
    fold_batch,
    normalized_entropy,
    score_batch,
    score_long,
    tail,
)

__all__ = [
    "Batch",
    "Folded",
    "FullAttention",
    "InteractionLog",
    "LastN",
    "ModelConfig",
    "QuasiLinearSummarizer",
    "SummaryCache",
    "SyntheticSpec",
    "SyntheticWorld",
    "TargetAttention",
    "Vista",
    "auc",
    "build_model",
    "dequantize",
    "fit",
    "fold_batch",
    "model_version",
    "normalized_entropy",
    "quantize",
    "read_candidates",
    "read_log",
    "score_batch",
    "score_long",
    "tail",
]

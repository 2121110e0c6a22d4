"""Measurements of memorization: extraction, similarity, reconstruction, rates with intervals.

The function whose name equals its module (``exposure``) is imported from that module
(``from rotelab.measure.exposure import exposure``), so ``rotelab.measure.exposure`` stays the
module.
"""

from rotelab.measure.blind import BlindBaseline
from rotelab.measure.exposure import exposure_table
from rotelab.measure.extraction import (
    ExtractConfig,
    free_running,
    ledger_windows,
    score_windows,
    verify_windows,
)
from rotelab.measure.fields import BIO_FIELDS, PromptStyle, extract_fields, field_prompts
from rotelab.measure.mia import (
    MIAText,
    SpanMode,
    WordSubstitution,
    attack_metrics,
    likelihood_scores,
)
from rotelab.measure.passk import PassCounts, pass_at_k, pass_at_k_table, sample_completions
from rotelab.measure.reconstruction import ReconstructConfig, reconstruct_tokens
from rotelab.measure.similarity import register_similarity, similarity_scores
from rotelab.stats import (
    CIMethod,
    Rate,
    breakdown,
    breakdown_dict,
    clopper_pearson,
    rate_with_ci,
    wilson_interval,
)

__all__ = [
    "BlindBaseline",
    "MIAText",
    "SpanMode",
    "WordSubstitution",
    "attack_metrics",
    "exposure_table",
    "likelihood_scores",
    "CIMethod",
    "ExtractConfig",
    "Rate",
    "ReconstructConfig",
    "breakdown",
    "breakdown_dict",
    "clopper_pearson",
    "free_running",
    "ledger_windows",
    "rate_with_ci",
    "reconstruct_tokens",
    "register_similarity",
    "score_windows",
    "similarity_scores",
    "verify_windows",
    "wilson_interval",
    "PassCounts",
    "pass_at_k",
    "pass_at_k_table",
    "sample_completions",
    "BIO_FIELDS",
    "PromptStyle",
    "extract_fields",
    "field_prompts",
]

"""Loss curvature of linear layers: K-FAC factors, their eigenbases, curvature-ordered edits."""

from rotelab.curvature.eigen import (
    BANDS,
    CurvatureEdit,
    LayerEigen,
    band_ratios,
    band_strengths,
    check_rho,
    curvature_mask,
    curvature_threshold,
    edit_model,
    eigenbasis,
    rho_sweep,
)
from rotelab.curvature.kfac import (
    DEFAULT_TOKENS,
    FACTORS_FILE,
    KFAC,
    Labels,
    check_selection,
    model_fingerprint,
    packed_sequences,
    parse_blocks,
    select_layers,
)

__all__ = [
    "BANDS",
    "DEFAULT_TOKENS",
    "FACTORS_FILE",
    "KFAC",
    "CurvatureEdit",
    "LayerEigen",
    "Labels",
    "band_ratios",
    "band_strengths",
    "check_rho",
    "check_selection",
    "curvature_mask",
    "curvature_threshold",
    "edit_model",
    "eigenbasis",
    "model_fingerprint",
    "packed_sequences",
    "parse_blocks",
    "rho_sweep",
    "select_layers",
]

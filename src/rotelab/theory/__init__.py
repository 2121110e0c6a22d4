"""Theory of memorization: robust-memorization parameter bounds (Kim, Moon and Yun 2025), the
epsilon-separated datasets they speak of, sound verifiers (IBP, CROWN and alpha-CROWN, branch
and bound, exact MILP) and the certified search for the smallest robust-memorizing ReLU
networks."""

from rotelab.theory.bab import bab_certify
from rotelab.theory.data import (
    SeparatedData,
    check_digit_labels,
    digits,
    epsilon,
    load_points,
    synthetic,
)
from rotelab.theory.robust import (
    UPPER_CONSTANT,
    Regime,
    check_problem,
    check_rho,
    lower_bound,
    non_robust_order,
    upper_bound,
    upper_regime,
)
from rotelab.theory.search import (
    Architecture,
    SearchConfig,
    architectures,
    certify,
    minimal_network,
    train_robust,
)
from rotelab.theory.verify import (
    MilpResult,
    Norm,
    crown_margins,
    ibp_margins,
    layers_of,
    milp_certify,
    mlp,
    param_count,
    pgd,
)

__all__ = [
    "UPPER_CONSTANT",
    "Architecture",
    "MilpResult",
    "Norm",
    "Regime",
    "SearchConfig",
    "SeparatedData",
    "architectures",
    "bab_certify",
    "certify",
    "check_digit_labels",
    "check_problem",
    "check_rho",
    "crown_margins",
    "digits",
    "epsilon",
    "ibp_margins",
    "layers_of",
    "load_points",
    "lower_bound",
    "milp_certify",
    "minimal_network",
    "mlp",
    "non_robust_order",
    "param_count",
    "pgd",
    "synthetic",
    "train_robust",
    "upper_bound",
    "upper_regime",
]

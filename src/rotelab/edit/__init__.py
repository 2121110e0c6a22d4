"""Weight edits that remove memorization; each returns or writes a new model, never in place."""

from rotelab.edit.balanced_subnet import BalancedSubnet
from rotelab.edit.curvature_edit import EDIT_RECORD, cached_factors, kfac_edit, parse_rhos

__all__ = [
    "BalancedSubnet",
    "EDIT_RECORD",
    "cached_factors",
    "kfac_edit",
    "parse_rhos",
]

"""Weight edits that remove memorization; each returns a new model, never edits in place.

The commands that write the edited models are in :mod:`rotelab.pipelines` (``edit``,
``unlearn``).
"""

from rotelab.edit.balanced_subnet import BalancedSubnet
from rotelab.edit.curvature_edit import EDIT_RECORD, RhoConfig, kfac_edits, parse_rhos

__all__ = [
    "BalancedSubnet",
    "EDIT_RECORD",
    "RhoConfig",
    "kfac_edits",
    "parse_rhos",
]

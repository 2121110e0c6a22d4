"""Edits that remove memorization: weight edits return a new model, never edit in place;
inference-time steering (DMS) is a probe and a vector on a hook point.

The commands that write the edited models are in :mod:`rotelab.pipelines` (``edit``,
``unlearn``).
"""

from rotelab.edit.balanced_subnet import BalancedSubnet
from rotelab.edit.curvature_edit import EDIT_RECORD, RhoConfig, kfac_edits, parse_rhos
from rotelab.edit.steering import MemorizationProbe, steering_spec

__all__ = [
    "BalancedSubnet",
    "MemorizationProbe",
    "EDIT_RECORD",
    "RhoConfig",
    "kfac_edits",
    "parse_rhos",
    "steering_spec",
]

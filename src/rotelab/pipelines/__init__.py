"""Pipelines: methods composed into one run (before/after comparison, the demo, ...).

The run functions are imported from their modules (``from rotelab.pipelines.compare import
compare``, ``from rotelab.pipelines.demo import demo``), so the package attributes stay modules.
"""

from rotelab.pipelines.compare import METRICS, TASKS, format_table
from rotelab.pipelines.demo import DemoConfig

__all__ = ["METRICS", "TASKS", "DemoConfig", "format_table"]

"""Pipelines: methods composed into one run (before/after comparison, the demo, ...)."""

from rotelab.pipelines.compare import METRICS, TASKS, compare, format_table
from rotelab.pipelines.demo import DemoConfig, demo

__all__ = ["METRICS", "TASKS", "DemoConfig", "compare", "demo", "format_table"]

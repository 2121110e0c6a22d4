"""Pipelines: methods composed into one run (before/after comparison, ...)."""

from rotelab.pipelines.compare import METRICS, TASKS, compare, format_table

__all__ = ["METRICS", "TASKS", "compare", "format_table"]

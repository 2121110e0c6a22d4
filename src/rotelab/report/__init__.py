"""Self-contained HTML reports for run directories: inline CSS, embedded plots, no network."""

from __future__ import annotations

from rotelab.report.html import Headline, Section, render_report, write_report

__all__ = ["Headline", "Section", "render_report", "write_report"]

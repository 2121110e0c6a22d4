"""Fixtures the command pipelines' tests share."""

from __future__ import annotations

import pytest
from cli_helpers import TEXT


@pytest.fixture
def corpus(tmp_path):
    """``tmp_path/text.txt``: the small shared text corpus (:data:`cli_helpers.TEXT`)."""
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path

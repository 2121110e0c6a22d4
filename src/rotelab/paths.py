"""Where rotelab keeps what it builds once: organisms, converted models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["rotelab_home"]


def rotelab_home() -> Path:
    """``$ROTELAB_HOME``, default ``~/.cache/rotelab``."""
    return Path(os.environ.get("ROTELAB_HOME", Path.home() / ".cache" / "rotelab")).expanduser()

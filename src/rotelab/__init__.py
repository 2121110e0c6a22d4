"""rotelab: measure, explain and remove memorization in neural networks."""

from __future__ import annotations

from rotelab.errors import RotelabError

__version__ = "0.1.0"

__all__ = ["RotelabError", "__version__"]

"""The one exception type for user mistakes.

The CLI turns a :class:`RotelabError` into one red line and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

__all__ = ["RotelabError"]


class RotelabError(Exception):
    """A problem with the user's input or environment, with an actionable message."""

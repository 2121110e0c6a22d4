"""Registries (core): what methods offer by name, so a new one is one registered function.

In the spirit of lm-evaluation-harness's metric registry. A :class:`Registry` maps names to
entries; methods register into the instances below when their module is imported, and commands,
summaries and the report read them back, so ``--help``, the summary columns and the report follow
what is registered without a list of their own.

- :data:`ATTACKS`: membership-inference attacks (:mod:`rotelab.measure.mia`).
- :data:`SIMILARITY`: similarity metrics of free-running text (:mod:`rotelab.measure.similarity`).
- :data:`METRICS`: every reported metric's direction (higher is better or not), the one place
  directions are kept; ``direction("auc")`` answers for any registered name.

Example:
    >>> from rotelab.registry import Registry
    >>> toys = Registry("toy")
    >>> @toys.register("double", note="twice")
    ... def double(x):
    ...     return 2 * x
    >>> toys["double"].fn(3), toys["double"].meta["note"], toys.names()
    (6, 'twice', ['double'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rotelab.errors import RotelabError

__all__ = [
    "ATTACKS",
    "METRICS",
    "SIMILARITY",
    "Entry",
    "Registry",
    "direction",
    "metric_entry",
    "register_metric",
]


@dataclass(frozen=True)
class Entry:
    """One registered thing: its ``name``, the callable and what the registrant said of it."""

    name: str
    fn: Callable[..., Any] | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.meta[key]
        except KeyError:
            raise AttributeError(key) from None


class Registry:
    """Names to :class:`Entry` objects, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: register the function under ``name`` with ``meta``; returns it unchanged."""

        def deco(fn: Callable) -> Callable:
            self.add(name, fn, **meta)
            return fn

        return deco

    def add(self, name: str, fn: Callable | None = None, **meta: Any) -> Entry:
        if not name or name != name.strip() or "," in name:
            raise ValueError(f"bad {self.kind} name {name!r}")
        if name in self._entries and self._entries[name].fn is not fn:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name, fn, dict(meta))
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a toy take it out again)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise RotelabError(f"unknown {self.kind} {name!r}; registered: {self.help()}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, **where: Any) -> list[str]:
        """Registered names, optionally only those whose meta has the given values."""
        return [e.name for e in self if all(e.meta.get(k) == v for k, v in where.items())]

    def help(self) -> str:
        """The names as one comma list, for ``--help`` texts and error messages."""
        return ",".join(self._entries)

    def parse(self, text: str | None, *, flag: str) -> list[str] | None:
        """A comma list of names (``--attacks loss,zlib``), each checked; ``None`` stays
        ``None``."""
        if text is None:
            return None
        names = [t.strip() for t in text.split(",") if t.strip()]
        if not names:
            raise RotelabError(f"{flag} is empty; give one or more of {self.help()}")
        unknown = [n for n in names if n not in self._entries]
        if unknown:
            raise RotelabError(
                f"unknown {self.kind} {', '.join(map(repr, unknown))} in {flag}; "
                f"registered: {self.help()}"
            )
        return names


ATTACKS = Registry("attack")
SIMILARITY = Registry("similarity metric")
METRICS = Registry("metric")


def register_metric(
    name: str, *, higher_is_better: bool, description: str = "", scope: str = ""
) -> None:
    """Record a reported metric's direction (idempotent for the same direction).

    ``scope`` is the point of view a name is reported in when one name means two things: compare
    reports ``strict`` as an extraction *rate* a removal should lower (``scope="compare"``), the
    similarity metrics report ``strict`` as a window's closeness to the true text
    (``scope="similarity"``). :func:`direction` looks a name up in its scope, then unscoped.
    """
    key = f"{scope}.{name}" if scope else name
    if key in METRICS and METRICS[key].higher_is_better != higher_is_better:
        raise ValueError(f"metric {key!r} registered with both directions")
    METRICS.add(key, None, higher_is_better=higher_is_better, description=description)


def direction(name: str, scope: str = "") -> bool:
    """Whether a higher value of metric ``name`` is better (a one-line error if unregistered)."""
    if scope and f"{scope}.{name}" in METRICS:
        return METRICS[f"{scope}.{name}"].higher_is_better
    return METRICS[name].higher_is_better


def metric_entry(name: str, scope: str = "") -> Entry:
    """The registered entry of ``name`` (in ``scope``, then unscoped)."""
    return METRICS[f"{scope}.{name}"] if f"{scope}.{name}" in METRICS else METRICS[name]

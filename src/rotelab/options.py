"""The options every command shares, one dataclass each (core).

``LoadOptions`` says how a model is loaded, ``RunOptions`` where and how a run is written, and
``CorpusOptions`` how corpus files are read. The CLI builds them once from the shared flags
(``--device --dtype --allow-pickle``, ``--out --resume --force --seed --quiet``, ``--field
--errors --format``); the pipelines and the Python API take them as they are. Each has a
``check()`` that fails with one line before any work is done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rotelab.errors import RotelabError

__all__ = ["CorpusOptions", "LoadOptions", "RunOptions"]


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded: ``device`` (auto, cpu, cuda[:N]), ``dtype`` (auto, float32,
    bfloat16, float16) and whether pickle checkpoints may be loaded (they run code)."""

    device: str = "auto"
    dtype: str = "auto"
    allow_pickle: bool = False

    def check(self) -> LoadOptions:
        """One line, before any work, for a device or dtype this machine cannot give."""
        from rotelab.lm import check_load_options

        check_load_options(self.device, self.dtype)
        return self


@dataclass(frozen=True)
class RunOptions:
    """Where a run is written and how: ``out`` (default ``runs/<command>-<time>``), ``resume`` an
    interrupted run there, ``force`` replacing an earlier run, the ``seed``, ``progress`` bars."""

    out: str | os.PathLike | None = None
    resume: bool = False
    force: bool = False
    seed: int = 0
    progress: bool = True

    def check(self) -> RunOptions:
        if not 0 <= self.seed < 2**32:
            raise RotelabError(f"--seed must be in 0 .. 2^32 - 1, got {self.seed}")
        if self.resume and self.force:
            raise RotelabError("use either --resume or --force, not both")
        if self.out is not None and not str(self.out).strip():
            raise RotelabError("--out is empty; pass a directory")
        return self

    def one_seed(self, config_seed: int) -> int:
        """The run's seed, given in a method's config or here (refused if the two differ)."""
        if config_seed and self.seed and config_seed != self.seed:
            raise RotelabError(
                f"two seeds: {config_seed} in the config and {self.seed} in the run options"
            )
        return config_seed or self.seed


@dataclass(frozen=True)
class CorpusOptions:
    """How corpus files are read: the text ``field`` of JSONL/Parquet records, ``errors``
    (strict or replace) and the file ``format`` (auto, text, jsonl, parquet)."""

    field: str = "text"
    errors: str = "strict"
    format: str = "auto"

    def check(self) -> CorpusOptions:
        from rotelab.data.corpus import check_read_options

        check_read_options(self.errors, self.format)
        if not self.field:
            raise RotelabError("--field is empty; name the text field of the records")
        return self

    def read_kwargs(self) -> dict:
        """Keyword arguments for :func:`rotelab.data.corpus.read_corpus`."""
        return {"field": self.field, "errors": self.errors, "corpus_format": self.format}

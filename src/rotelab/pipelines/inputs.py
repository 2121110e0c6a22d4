"""One resolver for what a command reads: ``--model``, ``--data`` and the organism defaults.

Every pipeline resolves and checks its inputs here *before* any model is loaded or the default
organism is built (that takes minutes): a missing file, a bad option or a model that has no
default data is one line at once, not after the work. Only this module decides that a missing
``--model`` means the organism.

Example:
    >>> model = resolve_model(None)            # the default organism, not built yet
    >>> model.is_organism, model.label
    (True, 'organism')
    >>> org = model.organism()  # builds (or loads from the cache) now  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rotelab.data.corpus import CorpusScan, scan_corpus
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import CorpusOptions, LoadOptions
from rotelab.organism import COUNTS, Organism, default_organism
from rotelab.sources import check_model_exists
from rotelab.stats import check_group_by

__all__ = [
    "DataInput",
    "ModelInput",
    "check_min_count",
    "is_organism_dir",
    "load_model",
    "read_tasks",
    "resolve_corpus",
    "resolve_data",
    "resolve_model",
    "window_file_reading",
]

#: What ``--model`` may say to mean the default organism (besides leaving it out).
ORGANISM = "organism"


def is_organism_dir(path: str | os.PathLike) -> bool:
    """A directory holding an organism (``spec.json`` and ``ledger.parquet``)."""
    path = Path(path)
    return (path / "spec.json").is_file() and (path / "ledger.parquet").is_file()


@dataclass
class ModelInput:
    """A resolved ``--model``: checked, not loaded.

    Attributes:
        given: what the user passed (``None`` when left out).
        source: what :meth:`LM.load` gets (``None`` for the default organism until it is built).
        label: the model's name in summaries and tables.
        is_organism: the model is an organism (the default one or an organism directory), so the
            organism's ledger, probes and text are the default data.
    """

    given: str | os.PathLike | LM | None
    source: str | None
    label: str
    is_organism: bool
    _organism: Organism | None = field(default=None, repr=False)
    _lm: LM | None = field(default=None, repr=False)

    @property
    def is_default_organism(self) -> bool:
        return self.is_organism and self.source is None

    def organism(self) -> Organism | None:
        """The organism this model is (built on first use for the default), else ``None``."""
        if self.is_organism and self._organism is None:
            self._organism = default_organism()
            self.source = str(self._organism.path)
        return self._organism

    def path(self) -> Path | None:
        """The model's local directory (the default organism is built first), if it has one."""
        if self._lm is not None:
            return None
        self.organism()
        p = Path(self.source).expanduser() if self.source else None
        return p if p is not None and p.is_dir() else None

    def load(self, options: LoadOptions = LoadOptions()) -> LM:
        """The model as an :class:`LM` (an ``LM`` passed in is returned as it is)."""
        if self._lm is not None:
            return self._lm
        self.organism()
        lm = LM.load(
            self.source, device=options.device, dtype=options.dtype,
            allow_pickle=options.allow_pickle,
        )  # fmt: skip
        if self.is_organism:
            lm.name = self.label if self.given is not None else ORGANISM
        return lm


def resolve_model(model: str | os.PathLike | LM | None) -> ModelInput:
    """Check a ``--model`` without loading it (nor building the organism).

    ``None`` or ``"organism"`` is the default organism; a directory holding an organism is that
    organism; an :class:`LM` is taken as it is; anything else must be an existing directory or
    ``.gguf`` file, a named model (``smollm2``) or shaped like a hub id.
    """
    if isinstance(model, LM):
        return ModelInput(model, None, model.name, False, _lm=model)
    if model is None or str(model) == ORGANISM:
        return ModelInput(model, None, ORGANISM, True)
    text = str(model)
    if is_organism_dir(text):
        return ModelInput(model, text, text, True, _organism=Organism(text))
    check_model_exists(text)
    return ModelInput(model, text, text, False)


@dataclass(frozen=True)
class DataInput:
    """A resolved corpus argument: its path (``None``: the organism's data) and what the one
    streaming pass found (``None`` for the organism's data)."""

    path: Path | None
    scan: CorpusScan | None = None


def resolve_corpus(
    data: str | os.PathLike | None,
    corpus: CorpusOptions = CorpusOptions(),
    *,
    model: ModelInput | None = None,
    flag: str = "--data",
    default: str = "the organism's data",
    group_by: Sequence[str] = (),
) -> DataInput:
    """Check a corpus argument before any work, with one streaming pass over the whole corpus.

    ``None`` is allowed only when ``model`` is an organism (its data is the default; pass
    ``model=None`` where no default depends on the model); otherwise the error says what to pass.
    Given data is read once (:func:`~rotelab.data.corpus.scan_corpus`): a bad byte, line or field
    anywhere fails now, with the reader's one line, before a run directory exists. ``group_by``
    columns (``a+b`` for joint groups) must be scalar fields every document has; the scan's
    ``fields`` let a command check groups over the columns its rows add.
    """
    corpus.check()
    if data is None:
        if model is not None and not model.is_organism:
            raise RotelabError(
                f"{model.label} is not an organism, so it has no default data; pass {flag} "
                f"(a text, JSONL or Parquet file or a directory of them) instead of {default}"
            )
        return DataInput(None)
    scan = scan_corpus(data, **corpus.read_kwargs())
    if not scan.characters:
        what = f"only {scan.documents} empty documents" if scan.documents else "it is empty"
        raise RotelabError(f"{flag} {data} holds no text ({what}); pass a corpus with text")
    check_group_by(group_by, scan.fields)
    return DataInput(Path(data).expanduser(), scan)


def resolve_data(
    data: str | os.PathLike | None,
    corpus: CorpusOptions = CorpusOptions(),
    **kwargs,
) -> Path | None:
    """:func:`resolve_corpus`'s path: what commands that need no more than the check take."""
    return resolve_corpus(data, corpus, **kwargs).path


def check_min_count(model: ModelInput, min_count: int, *, flag: str = "--min-count") -> None:
    """Some item of the organism ``model`` is inserted at least ``min_count`` times.

    Read from the organism's ledger; for the default organism, not built yet, from the counts
    every organism inserts (:data:`rotelab.organism.COUNTS`), so no build precedes the refusal.
    """
    if model.is_default_organism:
        top = max(COUNTS)
    else:
        top = int(model.organism().ledger["count"].max())
    if min_count > top:
        raise RotelabError(
            f"{flag} {min_count}: no item of the organism is inserted more than {top} times; "
            f"use at most {top}"
        )


def read_tasks(path: str | os.PathLike) -> pd.DataFrame:
    """A tasks JSONL (``prompt``, ``answer``, ``task``, optional ``id``) as probe rows (the
    columns of an organism's probes), every line checked."""
    path = Path(path)
    if not path.is_file():
        raise RotelabError(f"tasks file {path} does not exist (give a JSONL file)")
    rows = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RotelabError(f"{path} line {n} is not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise RotelabError(f"{path} line {n} is not a JSON object")
            for key in ("prompt", "answer", "task"):
                if not isinstance(row.get(key), str) or not row[key]:
                    raise RotelabError(
                        f"{path} line {n} has no {key!r} (each line needs non-empty prompt, "
                        "answer and task strings)"
                    )
            rows.append({
                "probe_id": str(row.get("id", f"{row['task']}-{n}")), "task": row["task"],
                "subtask": row["task"], "prompt": row["prompt"], "answer": row["answer"],
            })  # fmt: skip
    if not rows:
        raise RotelabError(f"{path} holds no task items")
    return pd.DataFrame(rows)


def window_file_reading(path, corpus: CorpusOptions) -> CorpusOptions:
    """How a file of windows is read (``compare --forget``, ``bands --data``): records with
    ``prefix`` and ``suffix`` fields (a JSONL file whose first record has both, or a Parquet file
    with both columns) as windows, the suffix being the text and the prefix in its metadata;
    anything else as the corpus options say."""
    path = Path(path).expanduser()
    if not path.is_file():
        return corpus
    fields: set[str] = set()
    try:
        with path.open("rb") as f:
            head = f.read(4)
        if head == b"PAR1":
            import pyarrow.parquet as pq

            fields = set(pq.read_schema(path).names)
        else:
            with path.open(encoding="utf-8", errors="replace") as f:
                first = next((line for line in f if line.strip()), "")
            record = json.loads(first) if first.lstrip().startswith("{") else {}
            fields = set(record) if isinstance(record, dict) else set()
    except (OSError, ValueError):
        return corpus  # the reader's own check says what is wrong with the file
    if {"prefix", "suffix"} <= fields:
        return dataclasses.replace(corpus, field="suffix")
    return corpus


def load_model(model: str | os.PathLike | LM | None, options: LoadOptions = LoadOptions()) -> LM:
    """:func:`resolve_model` and load: the default organism when ``model`` is ``None``."""
    return resolve_model(model).load(options)

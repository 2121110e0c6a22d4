"""Corpus readers: text, JSONL and Parquet files, and directories of them.

A file's format comes from its extension (``.txt``, ``.jsonl``, ``.parquet``) or, failing that,
from its content: LICENSE files, books, logs and source code rarely end in ``.txt``. Every reader
yields :class:`Document` objects with a stable ``doc_id`` (file name plus line or row), so each
result row can be traced back to the exact text it came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from rotelab.errors import RotelabError

__all__ = [
    "CorpusFormat",
    "CorpusScan",
    "Document",
    "read_corpus",
    "scan_corpus",
    "SUPPORTED_SUFFIXES",
]

# Enough to see a NUL byte in any binary format's header without reading a large file twice.
_SNIFF_BYTES = 8192


class CorpusFormat(str, Enum):
    """How to read a corpus file: ``auto`` (extension, then content) or one format forced."""

    AUTO = "auto"
    TEXT = "text"
    JSONL = "jsonl"
    PARQUET = "parquet"


# Formats known by name. These are also the only files a directory contributes: a directory also
# holds READMEs, scripts and caches that are not corpus.
_BY_SUFFIX = {
    ".txt": CorpusFormat.TEXT,
    ".jsonl": CorpusFormat.JSONL,
    ".parquet": CorpusFormat.PARQUET,
}
SUPPORTED_SUFFIXES = tuple(_BY_SUFFIX)


@dataclass
class Document:
    """One text with its provenance and any metadata columns (duplication count, source, ...)."""

    doc_id: str
    text: str
    meta: dict = field(default_factory=dict)


def read_corpus(
    path: str | os.PathLike,
    *,
    field: str = "text",
    errors: str = "strict",
    id_field: str | None = None,
    corpus_format: str | CorpusFormat = CorpusFormat.AUTO,
) -> Iterator[Document]:
    """Yield the documents of a file or of the corpus files under a directory (sorted).

    Args:
        path: a text file (one document), a JSONL file (one document per line), a Parquet file
            (one document per row) or a directory; a directory contributes the files under it
            (recursively) named ``*.txt``, ``*.jsonl`` or ``*.parquet``.
        field: the text field of JSONL records and Parquet rows.
        errors: ``"strict"`` fails on undecodable bytes naming file and offset; ``"replace"``
            substitutes U+FFFD.
        id_field: a field holding document ids (default: ``<file>:<line or row>``).
        corpus_format: ``auto`` reads ``.txt`` as text, ``.jsonl`` as JSONL and ``.parquet`` as
            Parquet; any other file is Parquet if it starts with ``PAR1``, JSONL if its first
            non-empty line is a JSON object, else text. ``text``, ``jsonl`` or ``parquet`` reads
            every file that way. Binary files (a NUL byte near the start) are refused.

    Other JSONL/Parquet fields are kept in :attr:`Document.meta`.

    Example:
        >>> docs = list(read_corpus("/usr/share/common-licenses/Apache-2.0"))  # doctest: +SKIP
        >>> docs[0].doc_id
        'Apache-2.0'
    """
    fmt = check_read_options(errors, corpus_format)
    root = Path(path).expanduser()
    if not root.exists():
        raise RotelabError(f"data path {root} does not exist")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
        if not files:
            raise RotelabError(
                f"{root} holds no {', '.join(SUPPORTED_SUFFIXES)} files (a directory contributes "
                "only those); point --data at a corpus file or rename the files"
            )
        base = root
    else:
        files, base = [root], root.parent
    return _read_files(files, base, fmt, field, errors, id_field)


def _read_files(files, base, fmt, field, errors, id_field) -> Iterator[Document]:
    # A generator of its own, so that read_corpus checks its arguments when called, not when
    # the first document is asked for (after a run directory may already exist).
    for file in files:
        name = file.relative_to(base).as_posix()
        kind = _file_format(file) if fmt is CorpusFormat.AUTO else fmt
        if kind is CorpusFormat.TEXT:
            yield Document(name, _read_text(file, errors))
        elif kind is CorpusFormat.JSONL:
            yield from _read_jsonl(file, name, field, errors, id_field)
        else:
            yield from _read_parquet(file, name, field, id_field)


_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class CorpusScan:
    """What one streaming pass over a corpus found (see :func:`scan_corpus`)."""

    documents: int
    characters: int
    #: metadata fields every document has with a scalar value (JSONL keys, Parquet columns): the
    #: ones a result row keeps, so the ones a command can group by
    fields: frozenset[str]


def scan_corpus(
    path: str | os.PathLike,
    *,
    field: str = "text",
    errors: str = "strict",
    id_field: str | None = None,
    corpus_format: str | CorpusFormat = CorpusFormat.AUTO,
) -> CorpusScan:
    """Read the whole corpus once, streaming, and fail with the reader's one-line error on the
    first bad byte, line or field: the pre-pass commands run before a run directory exists, so a
    broken line near the end of a file is reported before any work, not after it."""
    documents = characters = 0
    fields: set[str] | None = None
    for doc in read_corpus(
        path, field=field, errors=errors, id_field=id_field, corpus_format=corpus_format
    ):
        documents += 1
        characters += len(doc.text)
        keys = {k for k, v in doc.meta.items() if v is None or isinstance(v, _SCALARS)}
        fields = keys if fields is None else fields & keys
    return CorpusScan(documents, characters, frozenset(fields or ()))


def check_read_options(errors: str, corpus_format: str | CorpusFormat) -> CorpusFormat:
    """Check ``errors`` and the format (one line each) and return the format."""
    if errors not in {"strict", "replace"}:
        raise RotelabError(f"errors must be strict or replace, not {errors!r}")
    return _parse_format(corpus_format)


def _parse_format(value: str | CorpusFormat) -> CorpusFormat:
    try:
        return CorpusFormat(value)
    except ValueError:
        choices = ", ".join(f.value for f in CorpusFormat)
        raise RotelabError(f"unknown --format {value!r}; use {choices}") from None


def _file_format(file: Path) -> CorpusFormat:
    """A file's format from its extension, else from its first bytes and first non-empty line."""
    if file.suffix in _BY_SUFFIX:
        return _BY_SUFFIX[file.suffix]
    with open(file, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
        if head.startswith(b"PAR1"):
            return CorpusFormat.PARQUET
        _refuse_binary(file, head)
        fh.seek(0)
        for raw in fh:
            line = raw.strip()
            if line:
                try:
                    record = json.loads(line.decode("utf-8", errors="replace"))
                except json.JSONDecodeError:
                    return CorpusFormat.TEXT
                return CorpusFormat.JSONL if isinstance(record, dict) else CorpusFormat.TEXT
    return CorpusFormat.TEXT


def _refuse_binary(file: Path, head: bytes) -> None:
    nul = head.find(b"\0")
    if nul >= 0:
        raise RotelabError(
            f"{file}: a binary file (NUL byte at offset {nul}), not text, JSONL or Parquet; "
            "leave it out of --data"
        )


def _read_text(file: Path, errors: str) -> str:
    data = file.read_bytes()
    _refuse_binary(file, data[:_SNIFF_BYTES])
    return _decode(file, data, errors, 0)


def _decode(file: Path, data: bytes, errors: str, base_offset: int) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise RotelabError(
            f"{file}: bytes at offset {base_offset + exc.start} are not valid UTF-8 (a binary "
            "file?); fix the file, leave it out of --data, or pass --errors replace"
        ) from None


def _read_jsonl(file, name, field, errors, id_field) -> Iterator[Document]:
    offset = 0
    with open(file, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(file, raw, errors, offset).strip()
            offset += len(raw)
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RotelabError(f"{file}: line {lineno} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise RotelabError(f"{file}: line {lineno} is not a JSON object")
            if field not in record:
                keys = _names(sorted(record)) or "none"
                raise RotelabError(
                    f"{file}: line {lineno} has no field {field!r} (fields: {keys}); "
                    "choose one with --field"
                )
            text = record.pop(field)
            if not isinstance(text, str):
                raise RotelabError(f"{file}: line {lineno}: field {field!r} is not a string")
            doc_id = (
                str(record.pop(id_field)) if id_field and id_field in record else f"{name}:{lineno}"
            )
            yield Document(doc_id, text, record)


def _names(keys) -> str:
    """Field names for a one-line message (a name that is not printable is shown quoted)."""
    return ", ".join(k if k.isprintable() else repr(k) for k in map(str, keys))


def _read_parquet(file, name, field, id_field) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise RotelabError(f"{file}: not a readable Parquet file ({exc})") from None
    columns = pf.schema_arrow.names
    if field not in columns:
        raise RotelabError(
            f"{file}: no column {field!r} (columns: {_names(columns)}); choose one with --field"
        )
    row = 0
    for batch in pf.iter_batches():
        for record in batch.to_pylist():
            text = record.pop(field)
            doc_id = (
                str(record.pop(id_field)) if id_field and id_field in record else f"{name}:{row}"
            )
            row += 1
            if text is None:
                continue
            yield Document(doc_id, str(text), record)

"""Corpus readers: ``.txt``, ``.jsonl``, ``.parquet`` files and directories of them.

Every reader yields :class:`Document` objects with a stable ``doc_id`` (file name plus line or row),
so each result row can be traced back to the exact text it came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rotelab.errors import RotelabError

__all__ = ["Document", "read_corpus", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")


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
) -> Iterator[Document]:
    """Yield the documents of a file or of every supported file under a directory (sorted).

    Args:
        path: a ``.txt`` file (one document), a ``.jsonl`` file (one document per line), a
            ``.parquet`` file (one document per row) or a directory of them.
        field: the text field of JSONL records and Parquet rows.
        errors: ``"strict"`` fails on undecodable bytes naming file and offset; ``"replace"``
            substitutes U+FFFD.
        id_field: a field holding document ids (default: ``<file>:<line or row>``).

    Other JSONL/Parquet fields are kept in :attr:`Document.meta`.
    """
    if errors not in {"strict", "replace"}:
        raise RotelabError(f"errors must be strict or replace, not {errors!r}")
    root = Path(path).expanduser()
    if not root.exists():
        raise RotelabError(f"data path {root} does not exist")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
        if not files:
            raise RotelabError(
                f"{root} holds no {', '.join(SUPPORTED_SUFFIXES)} files; point --data at a corpus"
            )
        base = root
    else:
        if root.suffix not in SUPPORTED_SUFFIXES:
            raise RotelabError(
                f"{root}: unsupported file type {root.suffix or '(none)'}; "
                f"use {', '.join(SUPPORTED_SUFFIXES)}"
            )
        files, base = [root], root.parent
    for file in files:
        name = file.relative_to(base).as_posix()
        if file.suffix == ".txt":
            yield Document(name, _decode(file, file.read_bytes(), errors, 0))
        elif file.suffix == ".jsonl":
            yield from _read_jsonl(file, name, field, errors, id_field)
        else:
            yield from _read_parquet(file, name, field, id_field)


def _decode(file: Path, data: bytes, errors: str, base_offset: int) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise RotelabError(
            f"{file}: bytes at offset {base_offset + exc.start} are not valid UTF-8; "
            "fix the file or pass --errors replace"
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
                keys = ", ".join(sorted(record)) or "none"
                raise RotelabError(
                    f"{file}: line {lineno} has no field {field!r} (fields: {keys}); "
                    "choose one with --field"
                )
            text = record.pop(field)
            if not isinstance(text, str):
                raise RotelabError(f"{file}: line {lineno}: field {field!r} is not a string")
            doc_id = str(record.pop(id_field)) if id_field and id_field in record else f"{name}:{lineno}"
            yield Document(doc_id, text, record)


def _read_parquet(file, name, field, id_field) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise RotelabError(f"{file}: not a readable Parquet file ({exc})") from None
    columns = pf.schema_arrow.names
    if field not in columns:
        raise RotelabError(
            f"{file}: no column {field!r} (columns: {', '.join(columns)}); choose one with --field"
        )
    row = 0
    for batch in pf.iter_batches():
        for record in batch.to_pylist():
            text = record.pop(field)
            doc_id = str(record.pop(id_field)) if id_field and id_field in record else f"{name}:{row}"
            row += 1
            if text is None:
                continue
            yield Document(doc_id, str(text), record)

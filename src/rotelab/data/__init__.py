"""Corpora and token windows with provenance (core)."""

from rotelab.data.corpus import SUPPORTED_SUFFIXES, CorpusFormat, Document, read_corpus
from rotelab.data.windows import (
    Window,
    Windows,
    check_window_shape,
    iter_windows,
    stream_chunks,
    window_offsets,
)

__all__ = [
    "CorpusFormat",
    "SUPPORTED_SUFFIXES",
    "Document",
    "Window",
    "Windows",
    "check_window_shape",
    "iter_windows",
    "read_corpus",
    "stream_chunks",
    "window_offsets",
]

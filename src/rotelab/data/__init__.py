"""Corpora, token windows with provenance, and the organism's synthetic world."""

from rotelab.data.corpus import SUPPORTED_SUFFIXES, Document, read_corpus
from rotelab.data.windows import Window, Windows, check_window_shape, iter_windows, window_offsets

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Document",
    "Window",
    "Windows",
    "check_window_shape",
    "iter_windows",
    "read_corpus",
    "window_offsets",
]

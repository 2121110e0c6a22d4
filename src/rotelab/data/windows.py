"""Token windows with provenance: (prefix, suffix) pairs cut from documents in token space.

A window is cut once from a document's token ids and never decoded and re-encoded, so the prefix a
model sees is exactly the training text. Each window carries its document id and token offset, plus
the document's metadata (duplication count, source, ...), so results can be grouped and traced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd

from rotelab.data.corpus import Document
from rotelab.errors import RotelabError

__all__ = [
    "Window",
    "Windows",
    "check_window_shape",
    "iter_windows",
    "stream_chunks",
    "window_offsets",
]


@dataclass
class Window:
    doc_id: str
    offset: int  # token offset of the prefix's first token in the document
    prefix: list[int]
    suffix: list[int]
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> list[int]:
        return [*self.prefix, *self.suffix]


def check_window_shape(
    prefix_len: int, suffix_len: int, stride: int | None, context_length: int | None
) -> None:
    """Refuse window settings that cannot work, with the fix in the message."""
    if prefix_len < 1:
        raise RotelabError(f"prefix length must be >= 1, got {prefix_len}")
    if suffix_len < 1:
        raise RotelabError(f"suffix length must be >= 1, got {suffix_len}")
    if stride is not None and stride <= 0:
        raise RotelabError(f"stride must be > 0, got {stride}")
    if context_length is not None and prefix_len + suffix_len > context_length:
        raise RotelabError(
            f"prefix ({prefix_len}) plus suffix ({suffix_len}) is {prefix_len + suffix_len} "
            f"tokens, longer than the model's context of {context_length}; shorten them"
        )


def window_offsets(n_tokens: int, prefix_len: int, suffix_len: int, stride: int) -> range:
    """Start offsets of every whole window in a document of ``n_tokens`` tokens."""
    return range(0, max(0, n_tokens - prefix_len - suffix_len + 1), stride)


def iter_windows(
    docs: Iterable[Document],
    encode: Callable[[str], list[int]],
    prefix_len: int,
    suffix_len: int,
    stride: int | None = None,
    *,
    context_length: int | None = None,
) -> Iterator[Window]:
    """Stream windows from documents (memory stays bounded by one document).

    ``stride`` defaults to ``prefix_len + suffix_len`` (windows do not overlap).
    """
    check_window_shape(prefix_len, suffix_len, stride, context_length)
    step = stride or prefix_len + suffix_len
    for doc in docs:
        ids = encode(doc.text)
        for off in window_offsets(len(ids), prefix_len, suffix_len, step):
            yield Window(
                doc.doc_id,
                off,
                ids[off : off + prefix_len],
                ids[off + prefix_len : off + prefix_len + suffix_len],
                dict(doc.meta),
            )


class Windows(Sequence[Window]):
    """An indexed collection of windows; see :func:`iter_windows` for a stream."""

    def __init__(self, windows: Iterable[Window]) -> None:
        self._items = list(windows)

    @classmethod
    def from_documents(
        cls,
        docs: Iterable[Document],
        encode: Callable[[str], list[int]],
        prefix_len: int,
        suffix_len: int,
        stride: int | None = None,
        *,
        context_length: int | None = None,
    ) -> Windows:
        docs = list(docs)
        if not docs:
            raise RotelabError("the corpus is empty: no documents were found")
        wins = cls(
            iter_windows(
                docs, encode, prefix_len, suffix_len, stride, context_length=context_length
            )
        )
        if not wins:
            raise RotelabError(
                f"no windows: every document is shorter than prefix+suffix "
                f"({prefix_len + suffix_len} tokens); use shorter windows"
            )
        return wins

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Windows(self._items[index])
        return self._items[index]

    def __iter__(self) -> Iterator[Window]:
        return iter(self._items)

    def sequences(self) -> list[list[int]]:
        return [w.tokens for w in self._items]

    def to_frame(self) -> pd.DataFrame:
        """One row per window: doc_id, offset, prefix/suffix lengths and metadata columns."""
        rows = [
            {
                "doc_id": w.doc_id,
                "offset": w.offset,
                "prefix_len": len(w.prefix),
                "suffix_len": len(w.suffix),
                **w.meta,
            }
            for w in self._items
        ]
        return pd.DataFrame(rows)


def stream_chunks(
    docs: Iterable[str],
    encode: Callable[[str], list[int]],
    separator: int | None,
    *,
    max_tokens: int,
    length: int,
) -> list[list[int]]:
    """Documents joined by ``separator`` (end-of-text), cut at ``max_tokens``, in ``length`` chunks.

    This is the token stream perplexity is measured on: documents are packed as in training,
    so every token is predicted from real context. Chunks of a single token are dropped.
    """
    stream: list[int] = []
    for doc in docs:
        stream += encode(doc)
        if separator is not None:
            stream.append(separator)
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    chunks = (stream[i : i + length] for i in range(0, len(stream), length))
    return [c for c in chunks if len(c) > 1]

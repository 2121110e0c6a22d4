"""rotelab.data.windows: windows are cut in token space and carry provenance."""

from __future__ import annotations

import pytest

from rotelab.data import Document, Windows, iter_windows, stream_chunks, window_offsets
from rotelab.errors import RotelabError


def _encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_windows_carry_doc_id_offset_and_meta():
    docs = [Document("d0", "abcdefghij", {"count": 4}), Document("d1", "xyz", {})]
    wins = Windows.from_documents(docs, _encode, prefix_len=3, suffix_len=2, stride=4)
    assert [(w.doc_id, w.offset) for w in wins] == [("d0", 0), ("d0", 4)]
    first = wins[0]
    assert first.prefix == _encode("abc") and first.suffix == _encode("de")
    assert wins[1].prefix == _encode("efg") and wins[1].suffix == _encode("hi")
    frame = wins.to_frame()
    assert list(frame["count"]) == [4, 4]
    assert list(frame["prefix_len"]) == [3, 3]


def test_default_stride_is_non_overlapping_and_last_window_is_whole():
    assert list(window_offsets(10, 3, 2, 5)) == [0, 5]
    assert list(window_offsets(9, 3, 2, 5)) == [0]
    assert list(window_offsets(4, 3, 2, 5)) == []
    wins = list(iter_windows([Document("d", "abcdefghij")], _encode, 3, 2))
    assert [w.offset for w in wins] == [0, 5]


def test_windows_never_reencode_the_prefix():
    calls = []

    def encode(text):
        calls.append(text)
        return _encode(text)

    list(iter_windows([Document("d", "abcdefgh")], encode, 2, 2, 1))
    assert calls == ["abcdefgh"]


@pytest.mark.parametrize(
    ("prefix", "suffix", "stride", "ctx", "message"),
    [
        (3, 2, 0, None, "stride must be > 0"),
        (3, 2, -1, None, "stride must be > 0"),
        (0, 2, None, None, "prefix length"),
        (3, 0, None, None, "suffix length"),
        (40, 30, None, 64, "longer than the model's context of 64"),
    ],
)
def test_bad_window_settings(prefix, suffix, stride, ctx, message):
    with pytest.raises(RotelabError, match=message):
        Windows.from_documents(
            [Document("d", "a" * 100)], _encode, prefix, suffix, stride, context_length=ctx
        )


def test_empty_corpus_and_too_short_documents():
    with pytest.raises(RotelabError, match="corpus is empty"):
        Windows.from_documents([], _encode, 2, 2)
    with pytest.raises(RotelabError, match="shorter than prefix\\+suffix"):
        Windows.from_documents([Document("d", "abc")], _encode, 2, 2)


def test_stream_chunks_pack_documents_with_separator_and_cap():
    chunks = stream_chunks(["ab", "cde", "fgh"], _encode, 0, max_tokens=7, length=3)
    assert chunks == [[97, 98, 0], [99, 100, 101], [0]][:2]
    assert stream_chunks(["abcd"], _encode, None, max_tokens=100, length=3) == [[97, 98, 99]]

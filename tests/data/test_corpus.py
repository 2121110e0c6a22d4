"""rotelab.data.corpus: each reader, provenance, and each bad-input case."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest

from rotelab.data import read_corpus
from rotelab.errors import RotelabError


def test_reads_txt_jsonl_parquet_and_directories(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "first", "source": "x"})
        + "\n\n"
        + json.dumps({"text": "second"})
        + "\n"
    )
    pd.DataFrame({"body": ["p0", "p1"], "count": [4, 16]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("nope")
    docs = list(itertools.islice(read_corpus(tmp_path, field="text"), 3))
    assert [(d.doc_id, d.text) for d in docs] == [
        ("a.txt", "hello world"),
        ("b.jsonl:1", "first"),
        ("b.jsonl:3", "second"),
    ]
    assert docs[1].meta == {"source": "x"}
    rows = list(read_corpus(tmp_path / "c.parquet", field="body"))
    assert [(d.doc_id, d.text, d.meta["count"]) for d in rows] == [
        ("c.parquet:0", "p0", 4),
        ("c.parquet:1", "p1", 16),
    ]


def test_id_field_is_used_as_document_id(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "doc-7", "text": "t"}) + "\n")
    assert next(read_corpus(tmp_path / "d.jsonl", id_field="id")).doc_id == "doc-7"


def test_undecodable_bytes_name_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(RotelabError, match=r"bad.txt: bytes at offset 3 .*--errors replace"):
        list(read_corpus(bad))
    assert next(read_corpus(bad, errors="replace")).text == "abc\ufffddef"


def test_undecodable_jsonl_offset_counts_earlier_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(RotelabError, match="offset 25"):
        list(read_corpus(bad))


def test_malformed_jsonl_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(RotelabError, match="line 2 is not valid JSON"):
        list(read_corpus(bad))


def test_missing_jsonl_field_names_field_and_fix(tmp_path):
    bad = tmp_path / "f.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(RotelabError, match=r"line 1 has no field 'text' \(fields: body\).*--field"):
        list(read_corpus(bad))


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(RotelabError, match="does not exist"):
        list(read_corpus(tmp_path / "nope"))
    with pytest.raises(RotelabError, match="holds no"):
        list(read_corpus(tmp_path))
    with pytest.raises(RotelabError, match="unknown --format 'csv'"):
        read_corpus(tmp_path, corpus_format="csv")  # when called, before any document is read


LICENSE = "Apache License\nVersion 2.0, January 2004\n\nTERMS AND CONDITIONS\n"


@pytest.mark.parametrize("name", ["LICENSE", "Apache-2.0", "server.log", "notes.md"])
def test_text_file_with_any_name_is_one_document(tmp_path, name):
    (tmp_path / name).write_text(LICENSE)
    assert [(d.doc_id, d.text) for d in read_corpus(tmp_path / name)] == [(name, LICENSE)]


def test_jsonl_and_parquet_are_sniffed_by_content(tmp_path):
    log = tmp_path / "events.log"
    log.write_text(
        "\n" + json.dumps({"text": "a", "source": "s"}) + "\n" + json.dumps({"text": "b"})
    )
    docs = [(d.doc_id, d.text) for d in read_corpus(log)]
    assert docs == [("events.log:2", "a"), ("events.log:3", "b")]
    pd.DataFrame({"text": ["p0", "p1"]}).to_parquet(tmp_path / "rows.bin")
    assert [d.text for d in read_corpus(tmp_path / "rows.bin")] == ["p0", "p1"]


def test_a_json_array_or_scalar_first_line_is_text(tmp_path):
    f = tmp_path / "data"
    f.write_text('[1, 2]\n{"text": "x"}\n')
    assert [d.text for d in read_corpus(f)] == ['[1, 2]\n{"text": "x"}\n']


def test_format_forces_how_files_are_read(tmp_path):
    f = tmp_path / "records.log"
    f.write_text(json.dumps({"text": "a"}) + "\n")
    assert [d.text for d in read_corpus(f, corpus_format="text")] == [f.read_text()]
    # .txt is read as text in auto mode even when it looks like JSONL; --format jsonl overrides it
    t = tmp_path / "records.txt"
    t.write_text(f.read_text())
    assert [d.text for d in read_corpus(t)] == [t.read_text()]
    assert [d.text for d in read_corpus(t, corpus_format="jsonl")] == ["a"]


def test_binary_file_is_refused_with_one_line_naming_it(tmp_path):
    blob = tmp_path / "model.ckpt"
    blob.write_bytes(b"\x89HDF\r\n\x1a\n\0\0\x01binary")
    for fmt in ("auto", "text"):
        with pytest.raises(RotelabError) as info:
            list(read_corpus(blob, corpus_format=fmt))
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"{blob}: a binary file (NUL byte at offset 8)")


def test_undecodable_file_without_extension_names_it(tmp_path):
    bad = tmp_path / "README"
    bad.write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(RotelabError, match=r"README: bytes at offset 3 .*--errors replace"):
        list(read_corpus(bad))


def test_directory_reads_only_corpus_named_files(tmp_path):
    (tmp_path / "a.txt").write_text("kept")
    (tmp_path / "LICENSE").write_text("left out")
    (tmp_path / "blob.bin").write_bytes(b"\0\0")
    assert [d.doc_id for d in read_corpus(tmp_path)] == ["a.txt"]

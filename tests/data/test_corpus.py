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
        json.dumps({"text": "first", "source": "x"}) + "\n\n" + json.dumps({"text": "second"}) + "\n"
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
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(RotelabError, match="unsupported file type"):
        list(read_corpus(tmp_path / "x.csv"))

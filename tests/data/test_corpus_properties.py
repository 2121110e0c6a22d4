"""Property-based tests of the corpus readers (hypothesis): whatever bytes, JSON or text a user
points --data at, the only outcomes are documents or one RotelabError line, never a traceback."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotelab.data.corpus import read_corpus, scan_corpus
from rotelab.errors import RotelabError

SETTINGS = settings(
    max_examples=int(os.environ.get("ROTELAB_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SUFFIXES = ["", ".txt", ".jsonl", ".parquet", ".0", ".log"]
FORMATS = ["auto", "text", "jsonl", "parquet"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)


def _outcome(path, **kw):
    """('ok', documents) or ('error', one line); any other exception fails the test."""
    try:
        docs = list(read_corpus(path, **kw))
    except RotelabError as exc:
        text = str(exc)
        assert text and "\n" not in text, text
        return "error", text
    assert all(isinstance(d.text, str) and isinstance(d.doc_id, str) for d in docs)
    return "ok", docs


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES),
       fmt=st.sampled_from(FORMATS), errors=st.sampled_from(["strict", "replace"]))  # fmt: skip
def test_random_bytes_read_or_fail_with_one_line(tmp_path_factory, data, suffix, fmt, errors):
    path = tmp_path_factory.mktemp("b") / f"corpus{suffix}"
    path.write_bytes(data)
    kind, result = _outcome(path, corpus_format=fmt, errors=errors)
    if kind == "ok":  # the pre-pass agrees with the reader on every file it accepts
        assert scan_corpus(path, corpus_format=fmt, errors=errors).documents == len(result)
    else:
        with pytest.raises(RotelabError):
            scan_corpus(path, corpus_format=fmt, errors=errors)


@SETTINGS
@given(records=st.lists(json_values, max_size=6), field=st.sampled_from(["text", "body"]))
def test_random_json_lines_read_or_fail_with_one_line(tmp_path_factory, records, field):
    path = tmp_path_factory.mktemp("j") / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    kind, result = _outcome(path, field=field)
    good = all(isinstance(r, dict) and isinstance(r.get(field), str) for r in records)
    assert (kind == "ok") == good, result
    if good:
        assert [d.text for d in result] == [r[field] for r in records]


@SETTINGS
@given(
    text=st.text(
        alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        max_size=300,
    )
)
def test_any_text_file_is_one_document_exactly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "LICENSE"
    path.write_bytes(text.encode("utf-8"))
    try:
        head = json.loads(text.strip().splitlines()[0]) if text.strip() else None
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict):  # sniffed as JSONL by content: not this property's case
        return
    kind, result = _outcome(path, corpus_format="auto")
    assert kind == "ok" and [d.text for d in result] == [text]

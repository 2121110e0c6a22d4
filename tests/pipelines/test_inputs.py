"""The one resolver of --model/--data (rotelab.pipelines.inputs): checks without loading a model
or building the organism, and the whole corpus read once before any work."""

from __future__ import annotations

import json

import pytest

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import CorpusOptions
from rotelab.pipelines.inputs import resolve_corpus, resolve_data, resolve_model
from rotelab.stats import check_group_by


def test_the_default_organism_is_resolved_not_built(no_organism):
    for given in (None, "organism"):
        model = resolve_model(given)
        assert model.is_organism and model.is_default_organism and model.label == "organism"
    with pytest.raises(AssertionError, match="was built"):
        model.organism()  # only asking for it builds it


def test_an_organism_directory_is_that_organism(no_organism, tiny_organism):
    model = resolve_model(tiny_organism.path)
    assert model.is_organism and not model.is_default_organism
    assert model.organism().path == tiny_organism.path
    assert model.path() == tiny_organism.path


def test_a_plain_model_is_not_an_organism_and_has_no_default_data(no_organism, tiny_llama_dir):
    model = resolve_model(tiny_llama_dir)
    assert not model.is_organism and model.organism() is None
    with pytest.raises(RotelabError, match="not an organism.*pass --data"):
        resolve_data(None, model=model)
    with pytest.raises(RotelabError, match="pass --forget"):
        resolve_data(None, model=model, flag="--forget")


@pytest.mark.parametrize("given", ["/nonexistent/model", "./missing-dir", "x.gguf"])
def test_a_missing_model_path_is_one_line(no_organism, given):
    with pytest.raises(RotelabError) as err:
        resolve_model(given)
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)


def test_lm_load_never_picks_the_organism_itself(no_organism):
    with pytest.raises(RotelabError, match="default_organism"):
        LM.load(None)


def test_a_bad_line_at_the_end_of_the_corpus_fails_before_any_work(tmp_path):
    data = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": f"document {i}", "source": "web"}) for i in range(500)]
    data.write_text("\n".join(lines + ["{broken"]) + "\n")
    with pytest.raises(RotelabError, match="line 501 is not valid JSON"):
        resolve_data(data)
    with pytest.raises(RotelabError, match="does not exist"):
        resolve_data(tmp_path / "nope.txt")
    with pytest.raises(RotelabError, match="unknown --format"):
        resolve_data(data, CorpusOptions(format="csv"))


def test_group_by_columns_are_checked_against_every_document(tmp_path):
    data = tmp_path / "c.jsonl"
    rows = [{"text": "a", "source": "web", "year": 1}, {"text": "b", "source": "book"}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert resolve_data(data, group_by=["source"]) == data
    with pytest.raises(RotelabError, match="cannot group by year: no such metadata column"):
        resolve_data(data, group_by=["source+year"])  # not every document has a year
    scan = resolve_corpus(data).scan
    assert scan.documents == 2 and scan.fields == {"source"}
    nested = tmp_path / "n.jsonl"  # a field no row keeps (not a scalar) is not a group
    nested.write_text(json.dumps({"text": "a", "tags": ["x"], "source": "web"}))
    assert resolve_corpus(nested).scan.fields == {"source"}
    check_group_by(["count+kind"], ["count", "kind", "phase"])
    with pytest.raises(RotelabError, match=r"\(available: count, kind\)"):
        check_group_by(["nope"], ["count", "kind"])

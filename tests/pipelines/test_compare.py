"""compare: same windows for every model, the summary schema, CIs, the plot, resume, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.errors import RotelabError
from rotelab.pipelines.compare import (
    TASKS,
    _model_specs,
    _perplexity_summary,
    compare,
    format_table,
)


@pytest.fixture(scope="session")
def damaged_model(tiny_organism, tmp_path_factory):
    """The organism with every MLP down projection zeroed: a model that lost much of its memory."""
    lm = tiny_organism.lm()
    for layer in lm.mlp_layers():
        if layer.name.endswith("down_proj"):
            layer.set_weight(layer.weight * 0)
    return lm.save(tmp_path_factory.mktemp("damaged"))


def test_perplexity_pools_tokens_and_brackets_the_value():
    rows = pd.DataFrame({"tokens": [10, 30], "nll": [10 * 1.0, 30 * 2.0]})
    s = _perplexity_summary(rows, seed=0)
    value, (lo, hi) = s["perplexity"], s["perplexity_ci"]
    assert value == pytest.approx(math.exp(70 / 40)) and s["heldout_tokens"] == 40
    assert lo <= value <= hi
    assert lo >= math.exp(1.0) - 1e-9 and hi <= math.exp(2.0) + 1e-9


def test_model_labels_must_differ_and_bad_paths_fail(tmp_path):
    for name in "ABC":
        (tmp_path / name).mkdir()
    specs = _model_specs([str(tmp_path / "A"), f"edit={tmp_path / 'A'}", f"x-2={tmp_path / 'B'}"])
    assert [s[0] for s in specs] == ["A", "edit", "x-2"]
    for models in (
        [f"x={tmp_path / 'A'}", f"x={tmp_path / 'B'}", f"x-2={tmp_path / 'C'}"],
        [str(tmp_path / "A"), f"A={tmp_path / 'B'}"],  # a path's name is its label
    ):
        with pytest.raises(RotelabError, match="two models are labelled"):
            _model_specs(models)
    with pytest.raises(RotelabError, match="does not exist"):
        _model_specs([str(tmp_path / "missing")])


def test_cli_refuses_duplicate_labels_with_one_line(tmp_path):
    from rotelab.cli import app

    for name in "ABC":
        (tmp_path / name).mkdir()
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", "--models", f"x={tmp_path / 'A'}",
                                   f"x={tmp_path / 'B'}", f"x-2={tmp_path / 'C'}", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 2
    assert res.output.strip() == (
        "error: two models are labelled 'x'; give each a label of its own (LABEL=PATH)"
    )
    assert not out.exists()


@pytest.mark.slow
def test_compare_two_models_same_windows_schema_plot_and_resume(
    tiny_organism, damaged_model, tmp_path
):
    out = tmp_path / "cmp"
    models = [f"base={tiny_organism.path}", f"damaged={damaged_model}"]
    path, summary = compare(models, out, heldout_tokens=1500)
    assert summary["order"] == ["base", "damaged"] and summary["baseline"] == "base"
    n_items = len(tiny_organism.ledger)
    items = pd.read_parquet(out / "results" / "items")
    # Same windows: every model saw exactly the ledger's items.
    for label in ("base", "damaged"):
        ids = items.loc[items["model"] == label, "item_id"].tolist()
        assert ids == tiny_organism.ledger["item_id"].tolist()
    assert len(items) == 2 * n_items
    assert (out / "compare.png").stat().st_size > 5000
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["order"] == ["base", "damaged"]
    for label in ("base", "damaged"):
        m = summary["models"][label]
        ex = m["extraction"]
        assert ex["strict"]["n"] == summary["n_memorized_items"]
        assert ex["strict"]["rate"] <= ex["loose"]["rate"]  # strict implies loose
        for r in (ex["strict"], ex["loose"]):
            assert r["ci"][0] <= r["rate"] <= r["ci"][1]
        for r in m["tasks"].values():
            assert r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        assert m["extraction_rate"] == ex["strict"]["rate"]
        assert set(m["tasks"]) == set(TASKS)
        assert set(m["extraction_by_count"]) == {"0", "1", "4", "16", "64"}
        assert m["perplexity_ci"][0] <= m["perplexity"] <= m["perplexity_ci"][1]
    base, dmg = summary["models"]["base"], summary["models"]["damaged"]
    # The organism memorized its 16x/64x items far above its never-seen controls.
    assert base["extraction"]["strict"]["rate"] > base["extraction_by_count"]["0"]["strict"]["rate"]
    assert dmg["extraction"]["strict"]["rate"] < base["extraction"]["strict"]["rate"]
    assert dmg["perplexity"] > base["perplexity"]
    assert all(v in (0.0, None) for v in base["relative_change"].values())
    rel = dmg["relative_change"]["perplexity"]
    assert rel == pytest.approx(dmg["perplexity"] / base["perplexity"] - 1)
    table = pd.read_parquet(out / "results" / "models")
    assert table["model"].tolist() == ["base", "damaged"]
    assert "damaged" in format_table(summary)

    # Resume reuses every part: the same summary without recomputing.
    items_mtime = sorted(p.stat().st_mtime_ns for p in (out / "results" / "items").iterdir())
    _, again = compare(models, out, heldout_tokens=1500, resume=True)
    assert (
        sorted(p.stat().st_mtime_ns for p in (out / "results" / "items").iterdir()) == items_mtime
    )
    assert again["models"]["damaged"]["extraction"] == dmg["extraction"]


def test_cli_models_a_b_and_single_model_and_bad_path(tiny_organism, tmp_path):
    from rotelab.cli import app

    runner = CliRunner()
    out = tmp_path / "one"
    res = runner.invoke(
        app,
        ["compare", "--models", str(tiny_organism.path), "--out", str(out), "--heldout-tokens",
         "600", "--json", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["order"] == [tiny_organism.path.name]
    assert np.isfinite(summary["models"][tiny_organism.path.name]["perplexity"])

    bad = tmp_path / "bad"
    res = runner.invoke(
        app,
        ["compare", "--models", str(tiny_organism.path), str(tmp_path / "nope"), "--out", str(bad)],
    )
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output
    assert not bad.exists()


def test_models_that_are_not_organisms_need_one(tiny_llama_dir, tmp_path):
    with pytest.raises(RotelabError, match="--organism"):
        compare([str(tiny_llama_dir)], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_model_with_another_tokenizer_is_refused(tiny_organism, tiny_llama_dir, tmp_path):
    with pytest.raises(RotelabError, match="tokenizer"):
        compare([str(tiny_llama_dir)], tmp_path / "y", organism=tiny_organism.path)
    assert not (tmp_path / "y").exists()

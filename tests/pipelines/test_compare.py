"""compare: same windows for every model, the summary schema, CIs, the plot, resume, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.errors import RotelabError
from rotelab.measure.quality import perplexity
from rotelab.options import LoadOptions, RunOptions
from rotelab.organism import PLANTED_TASKS
from rotelab.pipelines.compare import (
    METRICS,
    TASKS,
    _model_specs,
    _perplexity_summary,
    compare,
    format_table,
)
from rotelab.registry import direction


def _run(out, **kw) -> RunOptions:
    return RunOptions(out=out, progress=False, **kw)


@pytest.fixture
def no_default_organism(monkeypatch):
    """Fail the test if the default organism is built (or loaded from the cache)."""

    def refuse(*args, **kwargs):
        pytest.fail("the default organism was built before the inputs were checked")

    monkeypatch.setattr("rotelab.pipelines.inputs.default_organism", refuse)


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
    models = [f"x={tmp_path / 'A'}", f"x={tmp_path / 'B'}", f"x-2={tmp_path / 'C'}"]
    res = CliRunner().invoke(app, ["compare", "--models", *models, "-o", str(out)])
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
    path, summary = compare(models, heldout_tokens=1500, run=_run(out))
    assert summary["order"] == ["base", "damaged"] and summary["baseline"] == "base"
    assert "base" not in summary  # the baseline's label is written once, as "baseline"
    assert summary["metrics"] == METRICS
    assert all(
        m["higher_is_better"] is direction(k, "compare") for k, m in summary["metrics"].items()
    )
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
        for t in PLANTED_TASKS:  # the memorized answer is counted beside the right one
            planted = m["tasks"][t]
            assert planted["memorized_answer"]["n"] == planted["n"] > 0
            assert (
                "prefers_answer" in planted and "memorized_answer" not in m["tasks"]["arithmetic"]
            )
        assert set(m["extraction_by_count"]) == {"0", "1", "4", "16", "64"}
        assert m["perplexity_ci"][0] <= m["perplexity"] <= m["perplexity_ci"][1]
    base, dmg = summary["models"]["base"], summary["models"]["damaged"]
    # The organism memorized its 16x/64x items far above its never-seen controls.
    assert base["extraction"]["strict"]["rate"] > base["extraction_by_count"]["0"]["strict"]["rate"]
    assert dmg["extraction"]["strict"]["rate"] < base["extraction"]["strict"]["rate"]
    assert dmg["perplexity"] > base["perplexity"]
    # The same perplexity as measure.quality's on the same held-out budget (one definition).
    ppl = perplexity(tiny_organism.lm(), tiny_organism.heldout_docs(), max_tokens=1500)
    assert base["perplexity"] == pytest.approx(ppl.value, rel=1e-12)
    assert base["heldout_tokens"] == ppl.tokens.sum()
    assert all(v in (0.0, None) for v in base["relative_change"].values())
    rel = dmg["relative_change"]["perplexity"]
    assert rel == pytest.approx(dmg["perplexity"] / base["perplexity"] - 1)
    table = pd.read_parquet(out / "results" / "models")
    assert table["model"].tolist() == ["base", "damaged"]
    assert "damaged" in format_table(summary)

    # Resume reuses every part: the same summary without recomputing.
    items_mtime = sorted(p.stat().st_mtime_ns for p in (out / "results" / "items").iterdir())
    _, again = compare(models, heldout_tokens=1500, run=_run(out, resume=True))
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
        compare([str(tiny_llama_dir)], run=_run(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_a_model_with_another_tokenizer_is_refused_before_any_model_loads(
    tiny_organism, tiny_llama_dir, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded before the tokenizers were checked")

    monkeypatch.setattr("rotelab.lm.LM.load", refuse)
    with pytest.raises(RotelabError, match="tokenizer"):
        compare(
            [str(tiny_organism.path), str(tiny_llama_dir)], organism=tiny_organism.path,
            run=_run(tmp_path / "y"),
        )  # fmt: skip
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"heldout_tokens": 1}, "held-out tokens"),
        ({"min_count": -1}, "min count"),
        ({"loose_threshold": 0}, "loose threshold"),
        ({"batch_size": 0}, "batch size"),
        ({"run": RunOptions(resume=True, force=True)}, "either --resume or --force"),
        ({"load": LoadOptions(dtype="float8")}, "float8"),
        ({"models": []}, "at least one model"),
        ({"models": ["organism", "organism"]}, "two models are labelled"),
    ],
)
def test_bad_arguments_fail_before_the_organism_is_built(
    no_default_organism, tmp_path, kwargs, message
):
    out = tmp_path / "cmp"
    kwargs = {"models": ["organism"], "run": _run(out), **kwargs}
    with pytest.raises(RotelabError, match=message):
        compare(kwargs.pop("models"), **kwargs)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_occupied_output_fails_before_the_organism_is_built(no_default_organism, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RotelabError, match="already exists and is not a rotelab run"):
        compare(["organism"], run=_run(out))
    with pytest.raises(RotelabError, match="not an organism directory"):
        compare(["organism"], organism=tmp_path, run=_run(tmp_path / "other"))
    assert (out / "notes.txt").read_text() == "mine" and not (tmp_path / "other").exists()


def test_cli_checks_arguments_before_the_organism_is_built(no_default_organism, tmp_path):
    from rotelab.cli import app

    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", "--batch-size", "0", "-o", str(out)])
    assert res.exit_code == 2
    assert res.output.strip() == "error: batch size must be >= 1, not 0"
    assert not out.exists()


def test_the_report_takes_directions_from_the_summary_the_registry_wrote():
    from rotelab.report.html import before_after_rows
    from rotelab.summaries import CompareSummary

    def block(strict, ppl, acc):
        return {"extraction_rate": strict, "perplexity": ppl,
                "tasks": {t: {"accuracy": acc} for t in TASKS}}  # fmt: skip

    summary = {"baseline": "a", "order": ["a", "b"], "metrics": METRICS, "min_count": 16,
               "models": {"a": block(0.9, 4.0, 0.5), "b": block(0.1, 4.4, 0.4)}}  # fmt: skip
    typed = CompareSummary.from_dict
    rows = before_after_rows(typed(summary)).set_index("metric")["higher_is_better"].to_dict()
    assert rows["extraction"] == direction("strict", "compare") == False  # noqa: E712
    assert rows["perplexity"] == direction("perplexity") == False  # noqa: E712
    assert all(rows[t] == direction(t, "compare") == True for t in TASKS)  # noqa: E712
    # A direction recorded differently in the summary is followed, not overridden.
    flipped = {**METRICS, "arithmetic": {**METRICS["arithmetic"], "higher_is_better": False}}
    rows = before_after_rows(typed({**summary, "metrics": flipped})).set_index("metric")
    assert not rows.loc["arithmetic", "higher_is_better"]


# ------------------------------------------------------------------------------ your own sets
def test_extraction_strength_from_one_pass():
    from rotelab.pipelines.compare import extraction_strength

    assert extraction_strength(np.array([True, True, True])) == 1.0
    assert extraction_strength(np.array([True, False, True, True, True])) == pytest.approx(0.6)
    assert extraction_strength(np.array([True, True, False])) == 0.0


def test_one_pass_then_decoding_the_deviating_windows_equals_decoding_all(
    tiny_organism, damaged_model
):
    from rotelab.lm import LM
    from rotelab.measure.extraction import ledger_windows
    from rotelab.pipelines.compare import greedy_continuations

    windows = ledger_windows(tiny_organism.ledger)
    for lm in (tiny_organism.lm(), LM.load(damaged_model, dtype="float32")):
        fast, matches = greedy_continuations(lm, windows, 16, False)
        full, _ = greedy_continuations(lm, windows, 16, False, decode_all=True)
        assert fast == full
        assert any(m.all() for m in matches) or lm.name != tiny_organism.lm().name


@pytest.fixture
def own_sets(tmp_path):
    from cli_helpers import TEXT

    words = TEXT.split()
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(
        json.dumps({"prefix": " ".join(words[i : i + 8]), "suffix": " " + " ".join(
            words[i + 8 : i + 14])}) + "\n" for i in range(0, 60, 12)
    ))  # fmt: skip
    retain = tmp_path / "retain.txt"
    retain.write_text(" ".join(reversed(words)))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"prompt": "The cat", "answer": " sat", "task": "recall"}\n'
        '{"prompt": "one two", "answer": " three", "task": "count", "id": "c"}\n'
    )
    return forget, retain, tasks


def test_any_models_on_your_own_forget_retain_and_tasks(
    tiny_llama_dir, tiny_model_dir, own_sets, tmp_path, no_default_organism
):
    forget, retain, tasks = own_sets
    out, summary = compare(
        [f"a={tiny_llama_dir}", f"b={tiny_model_dir}"], forget=forget, retain=retain,
        tasks=tasks, heldout_tokens=200, run=_run(tmp_path / "cmp"),
    )  # fmt: skip
    assert summary["organism"] is None and summary["forget"] == str(forget)
    assert summary["n_memorized_items"] == 5  # one window per prefix/suffix record
    for label in ("a", "b"):
        model = summary["models"][label]
        assert set(model["tasks"]) == {"recall", "count"}
        assert 0 <= model["extraction"]["extraction_strength"]["mean"] <= 1
        assert 0 <= model["extraction"]["exact_match"]["mean"] <= 1
        assert "extraction_by_count" not in model
    assert set(summary["metrics"]) >= {"recall", "count", "exact_match", "extraction_strength"}
    assert summary["metrics"]["extraction_strength"]["higher_is_better"] is False
    items = pd.read_parquet(out / "results" / "items")
    assert (items.groupby("model").size() == 5).all()
    assert "recall" in format_table(summary)


def test_a_forget_corpus_is_cut_into_windows(tiny_llama_dir, own_sets, tmp_path):
    _, retain, tasks = own_sets
    _, summary = compare(
        [str(tiny_llama_dir)], forget=retain, retain=retain, tasks=tasks, prefix_len=8,
        suffix_len=4, forget_windows=3, heldout_tokens=100, run=_run(tmp_path / "cmp"),
    )  # fmt: skip
    assert summary["n_memorized_items"] == 3


def test_own_sets_bad_input_and_overlap_warning(tiny_llama_dir, own_sets, tmp_path, capsys):
    forget, retain, tasks = own_sets
    with pytest.raises(RotelabError, match="give --retain, --tasks too"):
        compare([str(tiny_llama_dir)], forget=forget, run=_run(tmp_path / "x"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n')
    with pytest.raises(RotelabError, match="has no 'task'"):
        compare([str(tiny_llama_dir)], forget=forget, retain=retain, tasks=bad,
                run=_run(tmp_path / "x"))  # fmt: skip
    with pytest.raises(RotelabError, match="--forget-windows must be >= 1"):
        compare([str(tiny_llama_dir)], forget=forget, retain=retain, tasks=tasks,
                forget_windows=0, run=_run(tmp_path / "x"))  # fmt: skip
    assert not (tmp_path / "x").exists()
    overlapping = tmp_path / "retain2.txt"
    overlapping.write_text(forget.read_text())  # holds every suffix verbatim
    compare([str(tiny_llama_dir)], forget=forget, retain=overlapping, tasks=tasks,
            heldout_tokens=100, run=_run(tmp_path / "y"))  # fmt: skip
    assert "5 of 5 forget texts also appear in the retain set" in capsys.readouterr().err


def test_organism_items_with_your_own_tasks(tiny_organism, own_sets, tmp_path):
    _, _, tasks = own_sets
    _, summary = compare(
        [str(tiny_organism.path)], tasks=tasks, heldout_tokens=500, run=_run(tmp_path / "cmp")
    )
    model = summary["models"][summary["baseline"]]
    assert set(model["tasks"]) == {"recall", "count"} and "extraction_by_count" in model
    assert summary["n_memorized_items"] == int((tiny_organism.ledger["count"] >= 16).sum())


def test_no_decode_keeps_the_exact_verdicts_and_leaves_out_free_running_ones(
    tiny_llama_dir, own_sets, tmp_path
):
    forget, retain, tasks = own_sets
    runs = {}
    for decode in (True, False):
        _, runs[decode] = compare(
            [str(tiny_llama_dir)], forget=forget, retain=retain, tasks=tasks, heldout_tokens=100,
            decode=decode, run=_run(tmp_path / f"cmp-{decode}"),
        )  # fmt: skip
    full, exact = (runs[d]["models"][runs[d]["baseline"]]["extraction"] for d in (True, False))
    for key in ("strict",):
        assert exact[key]["rate"] == full[key]["rate"] and exact[key]["n"] == full[key]["n"]
    for key in ("exact_match", "extraction_strength"):
        assert exact[key]["mean"] == pytest.approx(full[key]["mean"])
    assert math.isnan(exact["loose"]["rate"]) and exact["loose"]["n"] == 0
    assert math.isnan(exact["norm_distance"]["mean"]) and not math.isnan(full["loose"]["rate"])

"""Reconstruction: a memorized document comes back whole; chunks, diff, long documents."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.lm import LM
from rotelab.measure.reconstruction import ReconstructConfig, document_columns, reconstruct_tokens
from rotelab.measure.similarity import register_similarity
from rotelab.options import RunOptions
from rotelab.pipelines.reconstruct import reconstruct
from rotelab.registry import METRICS, SIMILARITY

runner = CliRunner()


def test_memorized_document_is_reconstructed_exactly(tiny_lm):
    from rotelab.measure.similarity import similarity_scores

    rng = np.random.default_rng(0)
    prefix = rng.integers(1, 90, 10).tolist()
    # The model's own greedy continuation is, for this model, a perfectly memorized passage.
    memorized = prefix + tiny_lm.generate([prefix], 40)[0]
    corrupted = memorized[:30] + [(t + 1) % 90 for t in memorized[30:]]
    gen = reconstruct_tokens(tiny_lm, [memorized[:10]], [len(memorized)])[0]
    assert gen == memorized[10:]
    good, bad = similarity_scores(gen, memorized[10:]), similarity_scores(gen, corrupted[10:])
    assert good["strict"] and good["jaccard"] == 1.0 and good["levenshtein"] == 0.0
    assert not bad["strict"] and bad["levenshtein"] == 0.5 and bad["rouge_l"] < 1.0


def test_reconstruction_runs_past_the_context(tiny_lm):
    ctx = tiny_lm.context_length  # 64
    gen = reconstruct_tokens(tiny_lm, [[5, 6, 7]], [ctx * 2 + 5])[0]
    assert len(gen) == ctx * 2 + 2


def test_cli_reports_overall_and_per_chunk_similarity(tiny_llama_dir, tiny_lm, tmp_path):
    texts = {"short": "the cat sat on the mat. a dog ran to the park and the bird sang.",
             "long": "the bird sang and the dog ran to the park. " * 6}  # fmt: skip
    data = tmp_path / "docs.jsonl"
    with open(data, "w") as f:
        for name, text in texts.items():
            f.write(json.dumps({"text": text, "name": name}) + "\n")
    out = tmp_path / "run"
    res = runner.invoke(app, ["reconstruct", "--model", str(tiny_llama_dir), "--data", str(data),
                              "--prefix-len", "10", "--chunk-len", "8", "--group-by", "name",
                              "--out", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    docs = pd.read_parquet(out / "results" / "documents").set_index("name")
    chunks = pd.read_parquet(out / "results" / "chunks")
    for name, text in texts.items():
        ids = tiny_lm.encode(text)
        want = reconstruct_tokens(tiny_lm, [ids[:10]], [len(ids)])[0]
        row = docs.loc[name]
        assert list(row["generated"]) == want
        mine = chunks[chunks["doc_id"] == row["doc_id"]]
        assert len(mine) == -(-(len(ids) - 10) // 8)
        # per-chunk strictness agrees with the token-by-token comparison
        ref = ids[10:]
        for c in mine.itertuples():
            assert c.strict == (
                want[c.chunk * 8 : c.chunk * 8 + 8] == ref[c.chunk * 8 : c.chunk * 8 + 8]
            )
    assert list(docs.reset_index().columns) == ["name", *document_columns([])]
    assert summary["documents"] == 2 and set(summary["by_group"]["name"]) == {"long", "short"}
    assert summary["strict"] == int(docs["strict"].sum())
    assert len(list((out / "diffs").glob("*.html"))) == 2


def test_cli_rejects_prefix_longer_than_every_document(tiny_llama_dir, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("the cat")
    res = runner.invoke(app, ["reconstruct", "--model", str(tiny_llama_dir), "--data", str(data),
                              "--prefix-len", "50", "--out", str(tmp_path / "x")])  # fmt: skip
    assert res.exit_code == 2 and "prefix" in res.output
    assert not (tmp_path / "x").exists()


def test_cli_rejects_zero_batch_size_before_any_work(tmp_path):
    # the model path does not exist: a batch size check that ran after loading would say so
    data = tmp_path / "d.txt"
    data.write_text("the cat sat on the mat")
    res = runner.invoke(app, ["reconstruct", "--model", str(tmp_path / "nope"), "--data", str(data),
                              "--batch-size", "0", "--out", str(tmp_path / "x")])  # fmt: skip
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: --batch-size must be >= 1, got 0"]
    assert not (tmp_path / "x").exists()


def test_resuming_a_finished_run_reads_it_back_at_its_path(tiny_llama_dir, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("the bird sang and the dog ran to the park. " * 6)
    cfg = ReconstructConfig(prefix_len=10)
    path, _ = reconstruct(str(tiny_llama_dir), data, config=cfg, run=RunOptions(tmp_path / "run"))
    written = (path / "summary.json").stat().st_mtime_ns
    again, summary = reconstruct(str(tiny_llama_dir), data, config=cfg,
                                 run=RunOptions(tmp_path / "run", resume=True))  # fmt: skip
    assert again == path == tmp_path / "run"
    assert summary == json.loads((path / "summary.json").read_text())
    assert (path / "summary.json").stat().st_mtime_ns == written  # nothing recomputed


# ------------------------------------------------------------------------------ inputs first
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the default organism is built or any model loaded."""
    import rotelab.pipelines.inputs as inputs

    def refuse(*args, **kwargs):
        raise AssertionError("an organism was built or a model loaded")

    monkeypatch.setattr(inputs, "default_organism", refuse)
    monkeypatch.setattr(LM, "load", refuse)


def _fails(args, message, out):
    res = runner.invoke(app, ["reconstruct", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def test_missing_data_without_model_fails_before_the_organism(no_work, tmp_path):
    _fails(["--data", str(tmp_path / "nonexistent.txt")], "does not exist", tmp_path / "o")


def test_group_by_unknown_column_fails_before_any_work(no_work, tiny_llama_dir, tmp_path):
    _fails(["--group-by", "colour"], "cannot group by colour", tmp_path / "o")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "the cat sat", "name": "a"}) + "\n")
    _fails(["--model", str(tiny_llama_dir), "--data", str(data), "--group-by", "colour"],
           "cannot group by colour", tmp_path / "o")  # fmt: skip


def test_non_organism_model_without_data_says_what_to_pass(no_work, tiny_llama_dir, tmp_path):
    _fails(["--model", str(tiny_llama_dir)], "pass --data", tmp_path / "o")


def test_a_registered_metric_reaches_rows_chunks_and_summary(tiny_llama_dir, tmp_path):
    @register_similarity("toy_len", level="text", higher_is_better=False)
    def toy_len(generated: str, reference: str) -> float:
        """Difference in length of the decoded texts."""
        return float(abs(len(generated) - len(reference)))

    try:
        data = tmp_path / "d.jsonl"
        with open(data, "w") as f:
            for i, text in enumerate(["the bird sang and the dog ran. " * 4, "a cat sat. " * 9]):
                f.write(json.dumps({"text": text, "name": f"n{i}"}) + "\n")
        cfg = ReconstructConfig(prefix_len=6, chunk_len=8)
        path, summary = reconstruct(str(tiny_llama_dir), data, config=cfg, group_by=["name"],
                                    run=RunOptions(tmp_path / "run"))  # fmt: skip
    finally:
        SIMILARITY.remove("toy_len")
        METRICS.remove("toy_len")
    docs = pd.read_parquet(path / "results" / "documents")
    chunks = pd.read_parquet(path / "results" / "chunks")
    assert "toy_len" in chunks.columns and (docs["toy_len"] >= 0).all()
    assert summary["mean_toy_len"] == docs["toy_len"].mean()
    assert summary["median_toy_len"] == docs["toy_len"].median()
    assert summary["higher_is_better"]["toy_len"] is False
    assert summary["by_group"]["name"]["n1"]["mean_toy_len"] == docs["toy_len"].iloc[1]


@pytest.mark.slow
def test_default_reconstructs_the_organism_passages(tiny_organism, tmp_path, monkeypatch):
    import rotelab.pipelines.inputs as inputs

    monkeypatch.setattr(inputs, "default_organism", lambda *a, **k: tiny_organism)
    path, summary = reconstruct(config=ReconstructConfig(prefix_len=16, max_docs=4),
                                run=RunOptions(tmp_path / "run"))  # fmt: skip
    led = tiny_organism.ledger
    assert summary["documents"] == 4 and summary["model"] == str(tiny_organism.path)
    assert summary["data"] == f"organism passages ({tiny_organism.path})"
    docs = pd.read_parquet(path / "results" / "documents")
    passages = led[led["kind"] == "passage"].head(4)
    assert docs["doc_id"].tolist() == passages["item_id"].tolist()
    counts = {str(c) for c in passages["count"]}
    assert set(summary["by_group"]["count"]) == counts

"""`rotelab recsys train|serve|bench` (rotelab.pipelines.recsys): the run directory's numbers equal
what its own tables recompute, serving from a copied cache alone gives the cache's scores, and a
cache of another model is refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.pipelines.recsys import load_vista
from rotelab.recsys import SummaryCache, auc, model_version

TINY = ["--users", "96", "--length", "80", "--eval-users", "12", "--eval-lengths", "80,600",
        "--epochs", "1", "--dim", "16", "--tokens", "4", "--last-n", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("recsys") / "run"
    res = CliRunner().invoke(app, ["recsys", "train", *TINY, "--seeds", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "bucket" in res.output and str(out) in res.output
    return out


def test_train_writes_what_its_tables_recompute(trained):
    summary = json.loads((trained / "summary.json").read_text())
    metrics = pd.read_parquet(trained / "results" / "metrics")
    scores = pd.read_parquet(trained / "results" / "scores")
    assert [b["bucket"] for b in summary["buckets"]] == ["80", "600"]
    assert len(metrics) == 2 * 3 * 2 * 2  # seeds x models x buckets x subsets
    for b in summary["buckets"]:
        for kind in ("vista", "full", "lastn"):
            first = scores[(scores.model == kind) & (scores.bucket == b["bucket"])]
            got = b["auc"][kind]["per_seed"][0]
            assert got == pytest.approx(auc(first["prob"], first["label"]))
            per_seed = metrics[(metrics.model == kind) & (metrics.bucket == b["bucket"])
                               & (metrics.subset == "all")]["auc"]  # fmt: skip
            assert b["auc"][kind]["mean"] == pytest.approx(per_seed.mean())
            lo, hi = b["auc"][kind]["ci"]
            assert lo <= b["auc"][kind]["mean"] <= hi
        assert 0.5 < b["oracle_auc"] <= 1
    model, vocab = load_vista(trained)
    assert model_version(model) == summary["model_version"] and len(vocab) == model.cfg.n_items
    cache = SummaryCache.open(trained / "cache", summary["model_version"])
    assert len(cache) == 24 and cache.manifest["quant"] == "int8"
    assert "VISTA" in (trained / "report.html").read_text()


def test_serve_from_a_copied_cache_alone(trained, tmp_path):
    """The model and cache copied away from the run (no history anywhere): serving scores
    every candidate from its cached int8 summary; an unknown user gets the empty-history prior."""
    shutil.copytree(trained / "models", tmp_path / "m" / "models")
    shutil.copytree(trained / "cache", tmp_path / "cache")
    scores = pd.read_parquet(trained / "results" / "scores")
    cands = scores[scores.model == "vista"][["user", "item", "label"]]
    cands = pd.concat([cands, pd.DataFrame({"user": [7], "item": [3], "label": [1]})])
    cands.to_csv(tmp_path / "cands.csv", index=False)
    res = CliRunner().invoke(app, [
        "recsys", "serve", "-m", str(tmp_path / "m"), "--candidates", str(tmp_path / "cands.csv"),
        "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "out"), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["users_without_summary"] == 1 and summary["candidates"] == len(cands)
    served = pd.read_parquet(tmp_path / "out" / "results" / "scores")
    model, _ = load_vista(tmp_path / "m")
    cache = SummaryCache.open(tmp_path / "cache", model_version(model))
    known = served.iloc[:-1]
    summ, found = cache.get(known["user"].astype(str))
    with torch.no_grad():
        want = torch.sigmoid(
            model.score_summary(
                torch.as_tensor(summ), torch.as_tensor(known["item"].to_numpy(copy=True))[:, None]
            )
        )
        empty = model.score_summary(model.summary(torch.zeros(1, 1, dtype=torch.long)),
                                    torch.tensor([[3]]))  # fmt: skip
    assert found.all()
    np.testing.assert_allclose(known["prob"], want[:, 0].numpy(), rtol=1e-5)
    assert served["prob"].iloc[-1] == pytest.approx(torch.sigmoid(empty).item(), rel=1e-5)
    # the int8 scores differ from the float ones written by train by at most the stated change
    train_summary = json.loads((trained / "summary.json").read_text())
    worst = max(b["int8_max_abs_prob_change"] for b in train_summary["buckets"])
    merged = known.merge(scores[scores.model == "vista"], on=["user", "item"], suffixes=("", "_f"))
    assert np.abs(merged["prob"] - merged["prob_f"]).max() <= worst + 1e-6


def test_serve_refuses_a_cache_of_another_model(trained, tmp_path):
    other = tmp_path / "other"
    res = CliRunner().invoke(app, ["recsys", "train", *TINY, "--seed", "5", "-o", str(other), "-q"])
    assert res.exit_code == 0, res.output
    (tmp_path / "c.csv").write_text("user,item\n1,2\n")
    res = CliRunner().invoke(app, [
        "recsys", "serve", "-m", str(trained), "--cache", str(other / "cache"),
        "--candidates", str(tmp_path / "c.csv"), "-o", str(tmp_path / "out"),
    ])  # fmt: skip
    assert res.exit_code == 2 and "model version" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_train_on_a_log(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(0, 40)}", t) for u in range(40) for t in range(12)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(tmp_path / "log.csv",
                                                                     index=False)  # fmt: skip
    res = CliRunner().invoke(app, [
        "recsys", "train", "-d", str(tmp_path / "log.csv"), "--epochs", "1", "--dim", "8",
        "--tokens", "2", "-o", str(tmp_path / "run"), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [b["bucket"] for b in summary["buckets"]] == ["10-100"]  # 11 events before the target
    assert summary["buckets"][0]["users"] + summary["train_users"] == 40
    # the cache is keyed by the log's user ids, its refresh clock by the log's timestamps
    cache = SummaryCache.open(tmp_path / "run" / "cache", summary["model_version"])
    assert all(u.startswith("u") for u in cache.users())
    _, counts, last = cache.states(cache.users())
    assert (counts == 11).all() and (last == 10).all()


def test_bench_table(tmp_path):
    res = CliRunner().invoke(app, [
        "recsys", "bench", "--lengths", "100,2000", "--candidates", "8", "--cache-users", "40",
        "--stream-length", "20000", "--repeats", "1", "-o", str(tmp_path / "b"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [r["length"] for r in summary["table"]] == [100, 2000]
    assert summary["streaming"]["items"] == 20000 and summary["streaming"]["peak_mib"] > 0
    assert summary["cache_users"] == 42 and summary["cache_reads_per_s_batch_256"] > 0
    assert "µs per candidate" in res.output


def test_refresh_folds_new_events_and_compact_keeps_the_summaries(trained, tmp_path):
    """`recsys refresh` on a copied cache: the users in the log get new summaries and counts,
    the others keep theirs, a user the cache lacked is added; `--compact` leaves one segment
    serving the same rows; events older than a user's cached history are refused, cache intact."""
    shutil.copytree(trained / "cache", tmp_path / "cache")
    model, vocab = load_vista(trained)
    cache = SummaryCache.open(tmp_path / "cache", model_version(model))
    users = cache.users()
    before, _ = cache.get(users)
    _, counts, last = cache.states(users)
    a, b = users[0], users[1]
    rows = [(a, vocab[3], last[0] + 1), (a, vocab[7], last[0] + 2), (b, vocab[1], last[1] + 5),
            ("newcomer", vocab[2], 10)]  # fmt: skip
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(tmp_path / "new.csv",
                                                                     index=False)  # fmt: skip
    args = [
        "-m",
        str(trained),
        "--log",
        str(tmp_path / "new.csv"),
        "--cache",
        str(tmp_path / "cache"),
    ]
    res = CliRunner().invoke(app, ["recsys", "refresh", *args, "--compact", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert (result["users"], result["new_users"], result["events"]) == (3, 1, 4)
    assert result["segments"] == 1 and result["cached_users"] == len(users) + 1
    cache = SummaryCache.open(tmp_path / "cache", model_version(model))
    after, found = cache.get(users + ["newcomer"])
    assert found.all()
    _, counts_after, last_after = cache.states(users)
    assert counts_after[0] == counts[0] + 2 and counts_after[1] == counts[1] + 1
    assert last_after[0] == last[0] + 2 and (counts_after[2:] == counts[2:]).all()
    assert not np.allclose(after[:2], before[:2])
    np.testing.assert_array_equal(after[2 : len(users)], before[2:])  # int8 rows rewritten as is
    # a user's new events before the end of the cached history: one line, nothing written
    manifest = (tmp_path / "cache" / "manifest.json").read_text()
    pd.DataFrame([(a, vocab[3], 1)], columns=["user", "item", "timestamp"]).to_csv(
        tmp_path / "old.csv", index=False
    )
    res = CliRunner().invoke(
        app,
        [
            "recsys",
            "refresh",
            "-m",
            str(trained),
            "--log",
            str(tmp_path / "old.csv"),
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert res.exit_code == 2 and "before the cached history" in res.output
    assert (tmp_path / "cache" / "manifest.json").read_text() == manifest
    res = CliRunner().invoke(app, ["recsys", "compact", "-m", str(trained), "--cache",
                                   str(tmp_path / "cache")])  # fmt: skip
    assert res.exit_code == 0 and "1 -> 1 segment(s)" in res.output

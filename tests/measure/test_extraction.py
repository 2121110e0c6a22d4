"""One-pass extraction: equivalence with greedy decoding, the head statistics, the run directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.data.windows import Window
from rotelab.errors import RotelabError
from rotelab.lm import LM, Sampler
from rotelab.measure.extraction import (
    KEY_COLUMNS,
    SCORE_COLUMNS,
    VERDICT_COLUMNS,
    ExtractConfig,
    corpus_windows,
    default_near_tie,
    document_spans,
    free_running,
    ledger_windows,
    recheck_near_ties,
    row_columns,
    score_windows,
    verify_windows,
)
from rotelab.measure.similarity import register_similarity
from rotelab.options import RunOptions
from rotelab.pipelines.extract import extract
from rotelab.registry import METRICS, SIMILARITY

runner = CliRunner()


def _random_windows(lm: LM, n: int, p: int, s: int, seed: int) -> list[Window]:
    """Random windows, half of them with the model's own greedy continuation (so extracted),
    and some with a greedy head then noise (partial matches)."""
    rng = np.random.default_rng(seed)
    wins = [Window(f"d{i}", 0, rng.integers(1, 90, p).tolist(), rng.integers(1, 90, s).tolist())
            for i in range(n)]  # fmt: skip
    greedy = lm.generate([w.prefix for w in wins], s)
    for i, (w, g) in enumerate(zip(wins, greedy)):
        if i % 3 == 0:
            w.suffix = g
        elif i % 3 == 1:
            w.suffix = g[: i % s] + w.suffix[i % s :]
    return wins


def _matched(gen: list[int], suffix: list[int]) -> int:
    misses = np.flatnonzero(np.asarray(gen) != np.asarray(suffix))
    return int(misses[0]) if misses.size else len(suffix)


def test_one_pass_equals_generate_on_random_model(tiny_lm):
    wins = _random_windows(tiny_lm, 30, 7, 9, seed=1)
    scores = score_windows(tiny_lm, wins, batch_size=4)
    # the columns the up-front --group-by check expects
    assert list(scores.columns) == [*row_columns([]), "first_miss_token"]
    assert list(scores.columns) == [*KEY_COLUMNS, *SCORE_COLUMNS, "first_miss_token"]
    decoded = tiny_lm.generate([w.prefix for w in wins], 9)
    want = [_matched(g, w.suffix) for g, w in zip(decoded, wins)]
    assert scores["matched_prefix"].tolist() == want
    assert scores["extracted"].tolist() == [m == 9 for m in want]
    assert 0 < scores["extracted"].sum() < len(wins)  # both verdicts occur
    assert verify_windows(tiny_lm, wins, scores)["agrees"].all()


def test_free_running_resumes_at_the_first_mismatch(tiny_lm):
    wins = _random_windows(tiny_lm, 12, 6, 8, seed=2)
    scores = score_windows(tiny_lm, wins)
    assert free_running(tiny_lm, wins, scores) == tiny_lm.generate([w.prefix for w in wins], 8)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.5, 5), (1.0, 40)])
def test_head_statistics_match_dense_float64_reference(tiny_lm, temperature, top_k):
    lm = LM.from_model(tiny_lm.model.double(), tiny_lm.tokenizer)
    try:
        g = torch.Generator().manual_seed(0)
        h = torch.randn(50, 32, generator=g, dtype=torch.float64) * 3
        t = torch.randint(0, 96, (50,), generator=g)
        got = lm.head_stats(h, t, sampler=Sampler(temperature=temperature, top_k=top_k))
        logits = h @ lm.model.lm_head.weight.T
        assert torch.allclose(
            got["logprob"].double(),
            logits.log_softmax(1).gather(1, t[:, None]).squeeze(1),
            atol=1e-5,
        )
        assert torch.equal(got["argmax"], logits.argmax(1))
        top2 = logits.topk(2, 1).values
        assert torch.allclose(got["margin"].double(), top2[:, 0] - top2[:, 1], atol=1e-5)
        lead = top2[:, 0] - logits.gather(1, t[:, None]).squeeze(1)
        assert torch.allclose(got["target_gap"].double(), lead, atol=1e-5)
        assert (got["target_gap"][got["argmax"] == t] == 0).all()
        z = logits / temperature
        if top_k:
            z = z.masked_fill(logits < logits.topk(top_k, 1).values[:, -1:], -torch.inf)
        ref = z.log_softmax(1).gather(1, t[:, None]).squeeze(1)
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(got["sampler"]), finite)
        assert torch.allclose(got["sampler"].double()[finite], ref[finite], atol=1e-5)
        if top_k:
            assert (~finite).any()  # some targets fall outside the top-k
    finally:
        tiny_lm.model.float()


def test_decisive_margin_is_the_gap_the_verdict_hangs_on(tiny_lm):
    """Against full logits: the true token's lead over the runner-up at each reproduced position,
    and at the first deviation the greedy token's lead over the true one (not over the runner-up,
    which does not change the verdict)."""
    wins = _random_windows(tiny_lm, 24, 6, 8, seed=4)
    scores = score_windows(tiny_lm, wins, batch_size=5, near_tie=0.05)
    reference, differs = [], 0
    for w in wins:
        with torch.inference_mode():
            logits = tiny_lm.model(input_ids=torch.tensor([w.tokens])).logits[0].double()
        rows = logits[len(w.prefix) - 1 : len(w.tokens) - 1]
        top2 = rows.topk(2, 1).values
        true = rows.gather(1, torch.tensor(w.suffix)[:, None]).squeeze(1)
        m = _matched(rows.argmax(1).tolist(), w.suffix)
        gaps = (top2[:m, 0] - top2[:m, 1]).tolist() + (
            [float(top2[m, 0] - true[m])] if m < 8 else []
        )
        reference.append(min(gaps))
        differs += m < 8 and float(top2[m, 0] - top2[m, 1]) < min(gaps) - 1e-3
    np.testing.assert_allclose(scores["decisive_margin"], reference, atol=1e-4)
    assert (scores["near_tie"] == (np.array(reference) < 0.05)).all()
    assert differs  # some first deviation has its runner-up closer than the true token


def test_discoverable_probability_formula(tiny_lm):
    wins = _random_windows(tiny_lm, 9, 5, 3, seed=3)
    s = score_windows(tiny_lm, wins, top_k=0, temperature=1.0, n=7, p=0.3)
    # the full-vocabulary T=1 sampler is the model itself
    assert np.allclose(s["sampler_logprob"], s["suffix_logprob"], atol=1e-5)
    pz = np.exp(s["sampler_logprob"])
    assert np.allclose(s["discoverable_prob"], 1 - (1 - pz) ** 7, atol=1e-9)
    assert (s["np_discoverable"] == (s["discoverable_prob"] >= 0.3)).all()


def test_document_spans_merge():
    assert document_spans([(5, 9), (0, 3), (8, 12), (3, 4), (20, 20)]) == [[0, 4], [5, 12]]


@pytest.mark.slow
def test_one_pass_equals_generate_on_every_organism_window(tiny_organism):
    lm = tiny_organism.lm()
    wins = ledger_windows(tiny_organism.ledger)
    scores = score_windows(lm, wins, batch_size=16)
    decoded = lm.generate([w.prefix for w in wins], [len(w.suffix) for w in wins])
    want = [_matched(g, w.suffix) for g, w in zip(decoded, wins)]
    assert scores["matched_prefix"].tolist() == want
    assert scores["extracted"].tolist() == [g == w.suffix for g, w in zip(decoded, wins)]
    assert scores["matched_prefix"].nunique() > 1  # the comparison is not all-zero
    by_count = scores.groupby("count")["matched_prefix"].mean()
    assert by_count[64] >= by_count[0]


@pytest.mark.slow
@pytest.mark.parametrize("lookahead", [4, 0])
def test_bf16_pass_rechecked_in_float32_gives_float32_verdicts(
    tiny_organism, lookahead, monkeypatch
):
    import rotelab.measure.extraction as extraction

    lm32 = tiny_organism.lm()
    lm16 = LM.load(tiny_organism.path, dtype="bfloat16", device="cpu")
    wins = ledger_windows(tiny_organism.ledger)
    exact = score_windows(lm32, wins, batch_size=16)
    fast = score_windows(lm16, wins, batch_size=16)
    assert 0 < fast["near_tie"].sum() < len(wins)  # some windows are rechecked, some are not
    rounds: list[int] = []

    def counted(lm, windows, **kw):
        rounds.append(len(windows))
        return score_windows(lm, windows, **kw)

    monkeypatch.setattr(extraction, "score_windows", counted)
    rechecked = recheck_near_ties(fast, wins, lm32, batch_size=16, lookahead=lookahead)
    assert rechecked["rechecked"].tolist() == fast["near_tie"].tolist()
    for col in ("matched_prefix", "extracted"):
        assert rechecked[col].tolist() == exact[col].tolist(), col
    redone = rechecked["rechecked"].to_numpy()
    assert (
        rechecked["first_miss_token"][redone].tolist() == exact["first_miss_token"][redone].tolist()
    )
    np.testing.assert_allclose(
        rechecked["decisive_margin"][redone], exact["decisive_margin"][redone], atol=1e-4
    )
    assert (rechecked["near_tie"][redone] == exact["near_tie"][redone]).all()
    others = [c for c in fast.columns if c not in VERDICT_COLUMNS]
    pd.testing.assert_frame_equal(rechecked[others], fast[others])  # the rest stays bf16's
    assert rounds[0] == redone.sum()


@pytest.mark.slow
def test_recheck_scores_a_window_whole_when_the_exact_model_matches_its_whole_cut(
    tiny_organism, monkeypatch
):
    """A fast pass that deviated early on a window float32 extracts: with lookahead 0 the cut ends
    at that deviation, float32 matches all of it, so the window is scored again in full."""
    import rotelab.measure.extraction as extraction

    lm32 = tiny_organism.lm()
    wins = ledger_windows(tiny_organism.ledger)
    exact = score_windows(lm32, wins, batch_size=16)
    assert exact["extracted"].any()  # the organism reproduces its 64x items
    fast = exact.copy()
    fast["near_tie"] = False
    hit = exact.index[exact["extracted"]][:3]
    fast.loc[hit, ["matched_prefix", "extracted", "near_tie"]] = [2, False, True]
    rounds: list[int] = []

    def counted(lm, windows, **kw):
        rounds.append(len(windows))
        return score_windows(lm, windows, **kw)

    monkeypatch.setattr(extraction, "score_windows", counted)
    rechecked = recheck_near_ties(fast, wins, lm32, batch_size=16, lookahead=0)
    assert rounds == [len(hit), len(hit)]
    assert rechecked.loc[hit, "extracted"].all()
    assert rechecked["matched_prefix"].tolist() == exact["matched_prefix"].tolist()


@pytest.mark.slow
def test_bf16_near_tie_threshold_covers_the_bf16_error(tiny_organism):
    """Position by position, bf16 margins, and the greedy token's lead over the true token, stay
    well within the bf16 near-tie threshold of fp32's, and every greedy token bf16 changes, and
    every position where bf16 and fp32 disagree on reproducing the true token, sits under it."""
    led = tiny_organism.ledger
    seqs = [p + s for p, s in zip(led["prefix_tokens"], led["suffix_tokens"])]
    starts = [len(p) for p in led["prefix_tokens"]]
    lm32 = tiny_organism.lm()
    lm16 = LM.load(tiny_organism.path, dtype="bfloat16", device="cpu")
    a, b = lm32.score(seqs, targets_from=starts), lm16.score(seqs, targets_from=starts)
    m32, m16 = (np.concatenate([sc.margin for sc in x]) for x in (a, b))
    same = np.concatenate([sc.argmax for sc in a]) == np.concatenate([sc.argmax for sc in b])
    tie = default_near_tie(torch.bfloat16)
    assert np.abs(m32 - m16)[same].max() < tie / 2
    assert (~same).any() and (m16[~same] < tie).all()
    g32, g16 = (np.concatenate([sc.target_gap for sc in x]) for x in (a, b))
    assert np.abs(g32 - g16)[same].max() < tie / 2
    hit32, hit16 = (np.concatenate([sc.argmax_match for sc in x]) for x in (a, b))
    # bf16's verdict margin at each position: the true token's lead if it leads, else its deficit
    verdict16 = np.where(hit16, m16, g16)
    assert (hit32 != hit16).any() and (verdict16[hit32 != hit16] < tie).all()


# ------------------------------------------------------------------------------ CLI / run dir
@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rng = np.random.default_rng(0)
    words = "the cat sat on mat a dog ran to park and bird sang".split()
    with open(path, "w") as f:
        for i in range(10):
            text = " ".join(rng.choice(words, size=30 + 5 * i))
            f.write(json.dumps({"text": text, "source": "ab"[i % 2]}) + "\n")
    return path


def _extract(model_dir, corpus, out, *extra):
    args = ["extract", "--model", str(model_dir), "--data", str(corpus), "--out", str(out),
            "--prefix-len", "8", "--suffix-len", "6", "--stride", "5", "--quiet",
            *extra]  # fmt: skip
    return runner.invoke(app, args)


def test_cli_writes_rows_summary_and_documents(tiny_llama_dir, corpus, tmp_path):
    res = _extract(tiny_llama_dir, corpus, tmp_path / "r", "--group-by", "source", "--json",
                   "--free-running", "--verify", "4", "--part-size", "16")  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = pd.read_parquet(tmp_path / "r" / "results" / "windows")
    assert len(rows) == summary["windows"] > 16  # several parts
    assert {"doc_id", "offset", "extracted", "matched_prefix", "match_rate", "min_margin",
            "near_tie", "suffix_logprob", "discoverable_prob", "levenshtein", "rouge_l",
            "loose"} <= set(rows.columns)  # fmt: skip
    assert summary["extracted"] == int(rows["extracted"].sum())
    assert summary["mean_matched_prefix"] == pytest.approx(rows["matched_prefix"].mean())
    lo, hi = summary["extraction_rate_ci"]
    assert lo <= summary["extraction_rate"] <= hi
    assert set(summary["by_group"]["source"]) == {"a", "b"}
    assert sum(g["windows"] for g in summary["by_group"]["source"].values()) == summary["windows"]
    assert summary["verified"] == 4 and rows["verified"].notna().sum() == 4
    docs = pd.read_parquet(tmp_path / "r" / "results" / "documents")
    assert len(docs) == 10 and docs["windows"].sum() == len(rows)
    assert rows.groupby("doc_id").size().to_dict() == dict(zip(docs["doc_id"], docs["windows"]))
    # the free-running continuation of an extracted window is the suffix itself
    assert (rows.loc[rows["extracted"], "strict"]).all()


def test_cli_recheck_rescores_bf16_near_ties_in_float32(tiny_llama_dir, corpus, tmp_path):
    res = _extract(tiny_llama_dir, corpus, tmp_path / "f", "--json")
    assert res.exit_code == 0, res.output
    exact = pd.read_parquet(tmp_path / "f" / "results" / "windows")
    res = _extract(tiny_llama_dir, corpus, tmp_path / "h", "--json", "--dtype", "bfloat16",
                   "--recheck", "--verify", "6")  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = pd.read_parquet(tmp_path / "h" / "results" / "windows")
    assert summary["rechecked_in_float32"] == int(rows["rechecked"].sum()) > 0
    assert rows["matched_prefix"].tolist() == exact["matched_prefix"].tolist()
    assert rows["extracted"].tolist() == exact["extracted"].tolist()
    assert rows["verified"].notna().sum() == 6
    # a float32 model has nothing to recheck
    res = _extract(tiny_llama_dir, corpus, tmp_path / "g", "--json", "--recheck")
    assert res.exit_code == 0 and "rechecked_in_float32" not in json.loads(res.stdout)


@pytest.mark.slow
def test_cli_verify_under_recheck_decodes_in_float32(tiny_organism, tmp_path, monkeypatch):
    """--verify checks the --recheck claim (float32 verdicts) by decoding every verified window,
    rechecked or not, with the float32 model; an unflagged disagreement fails the run."""
    import rotelab.pipelines.extract as pipeline
    from rotelab.data.corpus import read_corpus

    # Training text in short windows: ~800 windows, so bf16 flips some verdict on any machine's
    # organism (about 2% of them here, in both training precisions); the ledger's 84 need not.
    data = tmp_path / "train.jsonl"
    with open(data, "w") as f:
        for text in tiny_organism.train_docs()[:200]:
            f.write(json.dumps({"text": text}) + "\n")
    lm32 = tiny_organism.lm()
    lm16 = LM.load(tiny_organism.path, dtype="bfloat16", device="cpu")
    wins = list(corpus_windows(read_corpus(data), lm32.encode, 16, 16, 8))
    exact, fast = score_windows(lm32, wins), score_windows(lm16, wins)
    assert (exact["matched_prefix"] != fast["matched_prefix"]).any()  # bf16 differs somewhere
    assert 0 < fast["near_tie"].sum() < len(wins)  # rechecked and unflagged windows both occur
    decoders: list[tuple[torch.dtype, int]] = []

    def recorded(lm, windows, scores, **kw):
        decoders.append((lm.dtype, len(windows)))
        return verify_windows(lm, windows, scores, **kw)

    monkeypatch.setattr(pipeline, "verify_windows", recorded)
    out = tmp_path / "x"
    args = ["extract", "--model", str(tiny_organism.path), "--data", str(data), "--out", str(out),
            "--prefix-len", "16", "--suffix-len", "16", "--stride", "8", "--quiet",
            "--dtype", "bfloat16", "--recheck", "--verify", str(len(wins))]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {d for d, _ in decoders} == {torch.float32} and sum(n for _, n in decoders) == len(wins)
    assert pd.read_parquet(out / "results" / "windows")["verified"].all()
    # with the near-tie flag off nothing is rechecked, and the bf16 verdict that float32 decoding
    # does not reproduce fails the run
    res = runner.invoke(app, [*args, "--near-tie", "0", "--force"])
    assert res.exit_code == 2 and "--verify failed" in res.output, res.output


def test_cli_resume_gives_the_same_rows(tiny_llama_dir, corpus, tmp_path):
    assert _extract(tiny_llama_dir, corpus, tmp_path / "a", "--part-size", "8").exit_code == 0
    first = pd.read_parquet(tmp_path / "a" / "results" / "windows")
    parts = sorted((tmp_path / "a" / "results" / "windows").glob("part-*.parquet"))
    for p in parts[len(parts) // 2 :]:
        p.unlink()
    (tmp_path / "a" / "summary.json").unlink()
    res = _extract(tiny_llama_dir, corpus, tmp_path / "a", "--part-size", "8", "--resume")
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "results" / "windows"), first)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["windows"] == len(first)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prefix-len", "40", "--suffix-len", "40"], "context"),
        (["--stride", "0"], "stride"),
        (["--verify", "100000"], "--verify"),
        (["--top-k", "-1"], "top-k"),
    ],
)
def test_cli_bad_inputs_fail_with_one_line_and_leave_nothing(
    tiny_llama_dir, corpus, tmp_path, extra, message
):
    out = tmp_path / "bad"
    res = _extract(tiny_llama_dir, corpus, out, *extra)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_empty_data(tiny_llama_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = _extract(tiny_llama_dir, empty, tmp_path / "e")
    assert res.exit_code == 2 and "holds no text" in res.output  # the corpus pre-pass
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_cli_default_runs_on_the_organism_ledger(tiny_organism, tmp_path, monkeypatch):
    import rotelab.pipelines.inputs as inputs

    monkeypatch.setattr(inputs, "default_organism", lambda *a, **k: tiny_organism)
    res = runner.invoke(app, ["extract", "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["windows"] == len(tiny_organism.ledger)
    by_count = summary["by_group"]["count"]
    assert list(by_count) == ["0", "1", "4", "16", "64"]
    assert by_count["64"]["extraction_rate"] >= by_count["0"]["extraction_rate"]
    assert by_count["64"]["mean_matched_prefix"] > by_count["0"]["mean_matched_prefix"]
    assert all(len(g["extraction_rate_ci"]) == 2 for g in by_count.values())
    assert {"kind", "phase", "kind+count"} <= set(summary["by_group"])


# ------------------------------------------------------------------------------ inputs first


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(LM, "load", refuse)


def _fails(args, message, out):
    res = runner.invoke(app, [*args, "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()
    return res


def test_missing_data_without_model_fails_before_the_organism(no_organism, tmp_path):
    _fails(["extract", "--data", str(tmp_path / "nonexistent.txt")], "does not exist",
           tmp_path / "o")  # fmt: skip


def test_empty_data_without_model_fails_before_the_organism(no_organism, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(["extract", "--data", str(empty)], "holds no text", tmp_path / "o")


@pytest.mark.parametrize(
    "extra",
    [["--prefix-len", "8"], ["--suffix-len", "48"], ["--stride", "5", "--prefix-len", "32"]],
)
def test_window_flags_without_data_are_refused(no_organism, tmp_path, extra):
    res = _fails(["extract", *extra], "apply only with --data", tmp_path / "o")
    assert all(flag in res.output for flag in extra if flag.startswith("--"))


def test_group_by_unknown_ledger_column_fails_before_the_organism(no_organism, tmp_path):
    res = _fails(["extract", "--group-by", "kind+colour"], "cannot group by colour", tmp_path / "o")
    assert "count" in res.output  # the message lists what exists


def test_group_by_unknown_corpus_column_fails_before_loading(no_model_load, tiny_llama_dir,
                                                            corpus, tmp_path):  # fmt: skip
    args = ["extract", "--model", str(tiny_llama_dir), "--data", str(corpus)]
    res = _fails([*args, "--group-by", "colour"], "cannot group by colour", tmp_path / "o")
    assert "source" in res.output


def test_existing_output_is_refused_before_the_organism(no_organism, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    res = runner.invoke(app, ["extract", "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "already exists" in res.output, res.output
    assert (out / "mine.txt").read_text() == "keep me"


def test_non_organism_model_without_data_says_what_to_pass(no_model_load, tiny_llama_dir, tmp_path):
    _fails(["extract", "--model", str(tiny_llama_dir)], "pass --data", tmp_path / "o")


def test_group_by_a_result_column_and_default_window_shape(tiny_llama_dir, tmp_path):
    data = tmp_path / "long.txt"
    data.write_text("the cat sat on the mat and the dog ran to the park. " * 20)
    cfg = ExtractConfig(group_by=("near_tie",), verify=1)
    with pytest.raises(RotelabError, match="context of 64"):  # 32 + 48 tokens by default
        extract(str(tiny_llama_dir), data, config=cfg, run=RunOptions(out=tmp_path / "a"))
    cfg = ExtractConfig(prefix_len=20, group_by=("near_tie",), verify=1)
    with pytest.raises(RotelabError, match="prefix \\(20\\) plus suffix \\(48\\)"):
        extract(str(tiny_llama_dir), data, config=cfg, run=RunOptions(out=tmp_path / "b"))
    cfg = ExtractConfig(prefix_len=16, suffix_len=16, group_by=("near_tie",), verify=1)
    result = extract(str(tiny_llama_dir), data, config=cfg, run=RunOptions(out=tmp_path / "c"))
    assert set(result.summary["by_group"]["near_tie"]) <= {"True", "False"}
    assert (result.summary["prefix_len"], result.summary["stride"]) == (16, 32)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------ registry
@pytest.fixture(params=["token", "text"])
def toy_metric(request):
    """A similarity metric registered for one test (token- or text-level), removed after it."""
    name = f"toy_{request.param}"

    def toy(generated, reference) -> float:
        """1 when the continuation starts with the true first item (token or character)."""
        return float(len(generated) > 0 and len(reference) > 0 and generated[0] == reference[0])

    register_similarity(name, level=request.param, higher_is_better=True)(toy)
    yield name
    SIMILARITY.remove(name)
    METRICS.remove(f"similarity.{name}")


def test_a_registered_metric_reaches_rows_and_summary(toy_metric, tiny_llama_dir, corpus, tmp_path):
    cfg = ExtractConfig(prefix_len=8, suffix_len=6, stride=5, free_running=True,
                        group_by=("source",))  # fmt: skip
    result = extract(str(tiny_llama_dir), corpus, config=cfg,
                     run=RunOptions(out=tmp_path / "r", progress=False))  # fmt: skip
    rows = pd.read_parquet(tmp_path / "r" / "results" / "windows")
    assert rows[toy_metric].isin([0.0, 1.0]).all()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary[f"mean_{toy_metric}"] == pytest.approx(rows[toy_metric].mean())
    for value, group in summary["by_group"]["source"].items():
        mine = rows.loc[rows["source"] == value, toy_metric]
        assert group[f"mean_{toy_metric}"] == pytest.approx(mine.mean())
    assert rows.loc[rows["strict"], toy_metric].all()


def test_the_seed_comes_from_the_config_or_the_run_options(no_model_load, tiny_llama_dir, corpus,
                                                           tmp_path):  # fmt: skip
    with pytest.raises(RotelabError, match="two seeds"):
        extract(str(tiny_llama_dir), corpus, config=ExtractConfig(seed=1),
                run=RunOptions(tmp_path / "o", seed=2))  # fmt: skip
    assert not (tmp_path / "o").exists()

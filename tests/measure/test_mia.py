"""Membership inference: attacks vs a direct full-softmax reference, metrics, errors, CLI, organism."""

from __future__ import annotations

import copy
import json
import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure import mia as M

TEXTS = [
    "the cat sat on the mat.",
    "a dog ran to the park and the bird sang.",
    "the bird sat on the park mat and the cat ran.",
    "a cat and a dog sang to the bird.",
    "the mat sat on the cat. the dog ran.",
    "park the dog, the cat sang on a mat.",
]
SPANS = [None, (6, 21), None, (20, 33), (2, 10), None]
MEMBERS = [True, True, True, False, False, False]


@pytest.fixture(scope="module")
def items(tiny_lm):
    return M.prepare_texts(
        tiny_lm, TEXTS, MEMBERS, text_ids=[f"t{i}" for i in range(len(TEXTS))], char_spans=SPANS
    )


def _ref_logp(lm: LM, tokens, start, end):
    """Full softmax in float64, one text at a time: (log p(target), mu, sigma2) over the span."""
    ids = torch.tensor([list(tokens[:end])])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits[start - 1 : end - 1], dim=-1)
    lp = logp.gather(1, ids[0, start:end, None]).squeeze(1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma2 = (p * logp.square()).sum(-1) - mu.square()
    return lp.numpy(), mu.numpy(), sigma2.numpy()


def _ref_nll(lm, tokens, start, end):
    return -_ref_logp(lm, tokens, start, end)[0].mean()


def _mink(values, k):
    n = max(1, int(len(values) * k))
    return np.sort(values)[:n].mean()


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_likelihood_attacks_match_full_softmax_reference(tiny_lm, items, k):
    got = M.likelihood_scores(tiny_lm, items, k=k, batch_size=4)
    for it, row in zip(items, got.itertuples()):
        s, e = it.span
        lp, mu, sigma2 = _ref_logp(tiny_lm, it.tokens, s, e)
        text = tiny_lm.decode(it.tokens[s:e])
        assert row.loss == pytest.approx(lp.mean(), abs=1e-5)
        assert row.zlib == pytest.approx(lp.mean() / len(zlib.compress(text.encode())), abs=1e-5)
        assert row.min_k == pytest.approx(_mink(lp, k), abs=1e-5)
        z = (lp - mu) / np.sqrt(sigma2)
        assert row.min_k_pp == pytest.approx(_mink(z, k), abs=1e-5)
        assert row.n_scored == e - s


def test_span_restricts_scoring(tiny_lm, items):
    # t1 has a character span: its scores must differ from scoring the whole text
    whole = M.prepare_texts(tiny_lm, [TEXTS[1]], [True])[0]
    assert items[1].span != whole.span
    assert items[1].span[1] - items[1].span[0] < whole.span[1] - whole.span[0]
    a = M.likelihood_scores(tiny_lm, [items[1], whole])
    assert a.loss[0] != pytest.approx(a.loss[1], abs=1e-4)
    # the span covers exactly the tokens overlapping characters [6, 21)
    text = tiny_lm.decode(items[1].tokens[items[1].span[0] : items[1].span[1]])
    assert TEXTS[1][6:21] in text


def test_reference_attack_matches_direct(tiny_lm, items, tiny_tokenizer):
    from tiny_models import make_tiny_model

    ref = LM.from_model(make_tiny_model("llama", seed=1), tiny_tokenizer, name="ref")
    got = M.reference_scores(tiny_lm, ref, items)
    for it, g in zip(items, got):
        want = _ref_nll(ref, it.tokens, *it.span) - _ref_nll(tiny_lm, it.tokens, *it.span)
        assert g == pytest.approx(want, abs=1e-5)


def test_reference_with_other_tokenizer_is_refused(tiny_lm, items):
    from tiny_models import make_tiny_model

    other = LM.from_model(make_tiny_model("llama", seed=1), _other_tokenizer(), name="other")
    with pytest.raises(RotelabError, match="different tokenizer"):
        M.reference_scores(tiny_lm, other, items)


def _other_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=90, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok.train_from_iterator(["zebra quartz jumps over lazy fox vexing " * 4], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )  # fmt: skip


def test_neighbourhood_matches_direct(tiny_lm, items):
    def gen(text, n, rng):  # a pluggable generator: deterministic, text-dependent
        return [text[::-1][: max(2, len(text) - j)] for j in range(n)]

    got = M.neighbourhood_scores(tiny_lm, items, gen, n_neighbours=3)
    for it, g in zip(items, got):
        s, e = it.span
        nbs = gen(tiny_lm.decode(it.tokens[s:e]), 3, None)
        nb_nll = [
            _ref_nll(
                tiny_lm, list(it.tokens[:s]) + tiny_lm.encode(nb), s, s + len(tiny_lm.encode(nb))
            )
            for nb in nbs
        ]
        assert g == pytest.approx(np.mean(nb_nll) - _ref_nll(tiny_lm, it.tokens, s, e), abs=1e-5)


def test_word_substitution_is_deterministic_and_shape_preserving():
    gen = M.WordSubstitution.from_texts(["Alice met Bob at 12 the old mill", "7 cats 3 dogs"], 0.5)
    a = gen("Carol saw 45 ducks", 4, np.random.default_rng(0))
    b = gen("Carol saw 45 ducks", 4, np.random.default_rng(0))
    assert a == b and len(a) == 4
    assert all(x != "Carol saw 45 ducks" for x in a)
    for x in a:
        words = x.split()
        assert len(words) == 4
        assert words[0][0].isupper() and words[2].isdigit()  # classes kept
        assert words[1].islower() and words[3].islower()


def test_recall_matches_direct(tiny_lm, items):
    prefix = tiny_lm.encode("the dog sang on the park.")
    got = M.recall_scores(tiny_lm, items, prefix)
    for it, g in zip(items, got):
        s, e = it.span
        cond = _ref_nll(tiny_lm, prefix + list(it.tokens[:e]), s + len(prefix), e + len(prefix))
        assert g == pytest.approx(cond / _ref_nll(tiny_lm, it.tokens, s, e), abs=1e-5)


def test_grad_norm_matches_backward_on_a_copy(tiny_lm, items):
    got = M.grad_norm_scores(tiny_lm, items)
    model = copy.deepcopy(tiny_lm.model).double()
    for it, g in zip(items, got):
        s, e = it.span
        model.zero_grad()
        ids = torch.tensor([list(it.tokens[:e])])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, s - 1 : e - 1], -1)
        (-logp.gather(1, ids[0, s:e, None]).mean()).backward()
        norm = math.sqrt(
            sum(float(p.grad.square().sum()) for p in model.parameters() if p.grad is not None)
        )
        assert g == pytest.approx(-norm, rel=1e-4, abs=1e-5)
    assert all(p.grad is None for p in tiny_lm.model.parameters())  # the target is untouched


# --------------------------------------------------------------------------------- metrics
def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)
    y = rng.random(60) < 0.4
    assert M.auc_score(s, y) == pytest.approx(roc_auc_score(y, s))
    assert M.auc_score(-s, y) == pytest.approx(1 - roc_auc_score(y, s))


def test_tpr_at_fpr_hand_example():
    neg = np.arange(100, dtype=float)  # 100 non-members 0..99
    pos = np.array([99.5, 98.5, 97.5, 50.0])
    s, y = np.r_[pos, neg], np.r_[np.ones(4, bool), np.zeros(100, bool)]
    # FPR 1%: one non-member (99) may exceed the threshold (98): members 99.5, 98.5 pass
    assert M.tpr_at_fpr(s, y, 0.01) == pytest.approx(0.5)
    assert M.tpr_at_fpr(s, y, 0.001) == pytest.approx(0.25)  # threshold above 99
    assert M.tpr_at_fpr(s, y, 0.03) == pytest.approx(0.75)


def test_tpr_refused_with_too_few_nonmembers():
    rng = np.random.default_rng(1)
    s = rng.normal(size=300)
    y = np.r_[np.ones(100, bool), np.zeros(200, bool)]
    m = M.attack_metrics(s, y, n_boot=50, min_false_positives=2)
    assert m["tpr_at_1pct_fpr"] is not None and m["tpr_at_1pct_fpr_ci"] is not None
    assert m["tpr_at_0.1pct_fpr"] is None and m["tpr_at_0.1pct_fpr_ci"] is None
    assert "2000" in m["tpr_at_0.1pct_fpr_reason"] and "200" in m["tpr_at_0.1pct_fpr_reason"]
    assert M.min_nonmembers(0.01, 5) == 500


def test_bootstrap_ci_brackets_and_is_seeded():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(80, bool), np.zeros(80, bool)]
    s = rng.normal(size=160) + 0.8 * y
    auc, ci = M.bootstrap_auc(s, y, n_boot=500, seed=3)
    assert ci[0] < auc < ci[1]
    assert 0.05 < ci[1] - ci[0] < 0.3
    assert M.bootstrap_auc(s, y, n_boot=500, seed=3)[1] == ci
    # a coin-flip score's CI contains 0.5
    _, ci0 = M.bootstrap_auc(rng.normal(size=160), y, n_boot=500)
    assert ci0[0] < 0.5 < ci0[1]


def test_by_group_compares_kind_with_same_kind_controls():
    # kind a: members score 1, controls 0 (AUC 1); kind b: members 0, controls 1 (AUC 0)
    frame = pd.DataFrame(
        {
            "member": [True, True, False, False, True, True, False, False],
            "kind": ["a", "a", "a", "a", "b", "b", "b", "b"],
            "count": [1, 4, 0, 0, 1, 4, 0, 0],
            "x": [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        }
    )
    out = M.by_group_metrics(frame, ["x"], ["kind", "count", ("kind", "count")], n_boot=0)
    assert out["x"]["kind"]["a"]["auc"] == 1.0 and out["x"]["kind"]["b"]["auc"] == 0.0
    assert out["x"]["count"]["1"]["n_nonmembers"] == 4  # all controls of the members' kinds
    assert out["x"]["kind,count"]["a,4"]["auc"] == 1.0
    assert "0" not in out["x"]["count"]  # controls are not a group of their own


# ---------------------------------------------------------------------------------- inputs
def test_span_outside_text_is_refused(tiny_lm):
    with pytest.raises(RotelabError, match="outside the text"):
        M.prepare_texts(tiny_lm, ["the cat"], [True], char_spans=[(3, 99)])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def split_files(tmp_path):
    mem = _write_jsonl(tmp_path / "members.jsonl", [{"text": t, "count": 4} for t in TEXTS[:3]])
    non = _write_jsonl(tmp_path / "non.jsonl", [{"text": t} for t in TEXTS[3:]])
    return mem, non


def test_cli_on_files_writes_summary_and_parts(tiny_llama_dir, split_files, tmp_path):
    from rotelab.cli import app

    mem, non = split_files
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["mia", "--model", str(tiny_llama_dir), "--members", str(mem), "--nonmembers", str(non),
         "--attacks", "loss,min_k_pp,neighbourhood", "--bootstrap", "50", "--out", str(out),
         "--quiet", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["attacks"]) == {"loss", "min_k_pp", "neighbourhood"}
    for a in summary["attacks"].values():
        assert {"auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "by_group"} <= set(a)
        assert a["tpr_at_1pct_fpr"] is None and "non-members" in a["tpr_at_1pct_fpr_reason"]
    scores = pd.read_parquet(out / "results" / "scores")
    assert len(scores) == 3 * len(TEXTS)
    # the stored LOSS scores are the direct ones
    lm = LM.load(tiny_llama_dir, dtype="float32")
    loss = scores[scores.attack == "loss"].set_index("text_id")["score"]
    toks = lm.encode(TEXTS[0])
    assert loss["m:members.jsonl:1"] == pytest.approx(-_ref_nll(lm, toks, 1, len(toks)), abs=1e-5)
    assert (out / "results" / "roc").exists() and "blind" in summary


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty_members", "no non-empty texts"),
        ("no_nonmembers", "no non-empty texts"),
        ("span_outside", "outside the text"),
        ("other_tokenizer", "different tokenizer"),
        ("bad_attack", "attacks are"),
        ("zero_batch", "--batch-size must be >= 1, got 0"),
        ("zero_neighbours", "--neighbours must be >= 1, got 0"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tiny_llama_dir, split_files, tmp_path, case, match):
    from tiny_models import make_tiny_model

    from rotelab.cli import app

    mem, non = split_files
    extra: list[str] = []
    if case == "empty_members":
        mem = tmp_path / "empty.txt"
        mem.write_text("")
    elif case == "no_nonmembers":
        non = _write_jsonl(tmp_path / "none.jsonl", [{"text": "   "}])
    elif case == "span_outside":
        mem = _write_jsonl(
            tmp_path / "m2.jsonl",
            [{"text": TEXTS[0], "span_char_start": 5, "span_char_end": 500}],
        )
    elif case == "other_tokenizer":
        ref = tmp_path / "ref"
        make_tiny_model("llama", seed=2).save_pretrained(ref, safe_serialization=True)
        _other_tokenizer().save_pretrained(ref)
        extra = ["--reference-model", str(ref)]
    elif case == "zero_batch":
        extra = ["--batch-size", "0"]
    elif case == "zero_neighbours":
        extra = ["--neighbours", "0"]
    else:
        extra = ["--attacks", "loss,nope"]
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        ["mia", "--model", str(tiny_llama_dir), "--members", str(mem), "--nonmembers", str(non),
         "--out", str(out), "--quiet", *extra],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing left behind


# ------------------------------------------------------------------------ organism (slow)
# tiny_organism comes from tests/measure/conftest.py (built once into the pytest cache).
@pytest.fixture(scope="session")
def organism_run(tiny_organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("mia-org") / "run"
    cfg = M.MIAConfig(
        attacks=["loss", "zlib", "min_k", "min_k_pp"], bootstrap=200, exposure_samples=200
    )
    path, summary = M.mia(tiny_organism.path, config=cfg, out=out, progress=False)
    return path, summary


@pytest.mark.slow
def test_organism_auc_rises_with_duplication(organism_run):
    _, summary = organism_run
    for attack in ("loss", "min_k", "min_k_pp"):
        by_count = summary["attacks"][attack]["by_group"]["count"]
        assert set(by_count) == {"1", "4", "16", "64"}
        assert by_count["64"]["auc"] > by_count["1"]["auc"], attack
        assert by_count["16"]["auc"] > by_count["1"]["auc"], attack
    assert summary["attacks"]["loss"]["by_group"]["count"]["64"]["auc"] > 0.9


@pytest.mark.slow
def test_organism_split_is_not_flagged_by_blind_baseline(organism_run):
    _, summary = organism_run
    assert summary["blind"]["flagged"] is False
    assert "warnings" not in summary
    assert summary["blind"]["auc_ci"][0] < 0.5


@pytest.mark.slow
def test_blind_baseline_flags_shifted_organism_split(tiny_organism, tmp_path):
    # members: inserted items; "non-members": held-out background text -- a shifted split
    led = tiny_organism.ledger
    mem = _write_jsonl(tmp_path / "m.jsonl", [{"text": t} for t in led[led["count"] >= 1]["text"]])
    non = _write_jsonl(
        tmp_path / "n.jsonl", [{"text": t} for t in tiny_organism.heldout_docs()[: len(led) // 2]]
    )
    cfg = M.MIAConfig(attacks=["loss"], bootstrap=200)
    _, summary = M.mia(
        tiny_organism.path, members=mem, nonmembers=non, config=cfg, out=tmp_path / "r",
        progress=False,
    )  # fmt: skip
    assert summary["blind"]["flagged"] is True
    assert summary["blind"]["auc"] > 0.9
    assert "distribution shift" in summary["warnings"][0]


@pytest.mark.slow
def test_organism_exposure_higher_for_repeated_secrets(organism_run):
    path, summary = organism_run
    by_count = summary["exposure"]["by_count"]
    assert by_count["64"]["mean"] > by_count["0"]["mean"]
    assert by_count["16"]["mean"] > by_count["0"]["mean"]
    table = pd.read_parquet(path / "results" / "exposure")
    assert (table["method"] == "sampled").all()  # 10^8 candidates
    assert (table["exposure_ci_low"] <= table["exposure"] + 1e-9).all()
    assert (table["exposure"] <= table["exposure_ci_high"] + 1e-9).all()

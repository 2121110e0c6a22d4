"""Membership inference methods: attacks vs a direct full-softmax reference, the attack registry,
inputs, metrics by group. The command (files, organism, errors) is tested in
tests/pipelines/test_mia_pipeline.py."""

from __future__ import annotations

import copy
import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from mia_helpers import MEMBERS, SPANS, TEXTS, other_tokenizer, ref_logp, ref_nll

from rotelab.data.corpus import Document
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure import mia as M
from rotelab.registry import ATTACKS, METRICS, direction


@pytest.fixture(scope="module")
def items(tiny_lm):
    return M.prepare_texts(
        tiny_lm, TEXTS, MEMBERS, text_ids=[f"t{i}" for i in range(len(TEXTS))], char_spans=SPANS
    )


def _mink(values, k):
    n = max(1, int(len(values) * k))
    return np.sort(values)[:n].mean()


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_likelihood_attacks_match_full_softmax_reference(tiny_lm, items, k):
    got = M.likelihood_scores(tiny_lm, items, k=k, batch_size=4)
    for it, row in zip(items, got.itertuples()):
        s, e = it.span
        lp, mu, sigma2 = ref_logp(tiny_lm, it.tokens, s, e)
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
        want = ref_nll(ref, it.tokens, *it.span) - ref_nll(tiny_lm, it.tokens, *it.span)
        assert g == pytest.approx(want, abs=1e-5)


def test_reference_with_other_tokenizer_is_refused(tiny_lm, items):
    from tiny_models import make_tiny_model

    other = LM.from_model(make_tiny_model("llama", seed=1), other_tokenizer(), name="other")
    with pytest.raises(RotelabError, match="different tokenizer"):
        M.reference_scores(tiny_lm, other, items)


def test_neighbourhood_matches_direct(tiny_lm, items):
    def gen(text, n, rng):  # a pluggable generator: deterministic, text-dependent
        return [text[::-1][: max(2, len(text) - j)] for j in range(n)]

    got = M.neighbourhood_scores(tiny_lm, items, gen, n_neighbours=3)
    for it, g in zip(items, got):
        s, e = it.span
        nbs = gen(tiny_lm.decode(it.tokens[s:e]), 3, None)
        nb_nll = [
            ref_nll(
                tiny_lm, list(it.tokens[:s]) + tiny_lm.encode(nb), s, s + len(tiny_lm.encode(nb))
            )
            for nb in nbs
        ]
        assert g == pytest.approx(np.mean(nb_nll) - ref_nll(tiny_lm, it.tokens, s, e), abs=1e-5)


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
        cond = ref_nll(tiny_lm, prefix + list(it.tokens[:e]), s + len(prefix), e + len(prefix))
        assert g == pytest.approx(cond / ref_nll(tiny_lm, it.tokens, s, e), abs=1e-5)


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


# -------------------------------------------------------------------------------- registry
BUILT_IN = [
    "loss", "zlib", "min_k", "min_k_pp", "reference", "neighbourhood", "recall", "grad_norm"
]  # fmt: skip


def test_built_in_attacks_are_registered_with_needs_and_direction():
    assert ATTACKS.names()[: len(BUILT_IN)] == BUILT_IN  # the default order of a run
    assert ATTACKS.names(one_pass=True) == ["loss", "zlib", "min_k", "min_k_pp"]
    needs = {a: ATTACKS[a].needs for a in BUILT_IN}
    assert needs["reference"] == {"reference"} and needs["recall"] == {"recall_prefix"}
    assert needs["neighbourhood"] == {"neighbours"} and needs["grad_norm"] == {"gradients"}
    assert all(needs[a] == set() for a in ATTACKS.names(one_pass=True))
    assert all(needs[a] <= M.NEEDS for a in BUILT_IN)
    assert all(direction(a) is True for a in BUILT_IN)  # one convention: higher = member
    assert all(direction(m) is True for m in M.METRIC_NAMES)


def test_register_attack_checks_needs_and_records_direction():
    with pytest.raises(ValueError, match="unknown needs"):
        M.register_attack("bad_needs", needs=("a_masked_lm",))
    assert "bad_needs" not in ATTACKS

    @M.register_attack("toy_first_token", needs=("reference",), description="toy")
    def toy(inputs):
        return np.array([float(it.tokens[0]) for it in inputs.items])

    try:
        assert ATTACKS["toy_first_token"].fn is toy
        assert ATTACKS["toy_first_token"].needs == {"reference"}
        assert ATTACKS["toy_first_token"].one_pass is False
        assert direction("toy_first_token") is True
    finally:
        ATTACKS.remove("toy_first_token")
        METRICS.remove("toy_first_token")
    assert "toy_first_token" not in ATTACKS and "toy_first_token" not in METRICS


def test_one_pass_attacks_share_one_scoring_pass(tiny_lm, items, monkeypatch):
    calls = []
    score = tiny_lm.score
    monkeypatch.setattr(tiny_lm, "score", lambda *a, **kw: calls.append(kw) or score(*a, **kw))
    inputs = M.AttackInputs(tiny_lm, items, k=0.5)
    got = {a: ATTACKS[a].fn(inputs) for a in ATTACKS.names(one_pass=True)}
    assert len(calls) == 1 and calls[0]["moments"] is True
    want = M.likelihood_scores(tiny_lm, items, k=0.5)
    assert list(want.columns) == [*ATTACKS.names(one_pass=True), "nll", "n_scored"]
    for a, values in got.items():
        np.testing.assert_array_equal(values, want[a].to_numpy())


# --------------------------------------------------------------------------------- metrics
def test_tpr_refused_with_too_few_nonmembers():
    rng = np.random.default_rng(1)
    s = rng.normal(size=300)
    y = np.r_[np.ones(100, bool), np.zeros(200, bool)]
    m = M.attack_metrics(s, y, n_boot=50, min_false_positives=2)
    assert m["tpr_at_1pct_fpr"] is not None and m["tpr_at_1pct_fpr_ci"] is not None
    assert m["tpr_at_0.1pct_fpr"] is None and m["tpr_at_0.1pct_fpr_ci"] is None
    assert "2000" in m["tpr_at_0.1pct_fpr_reason"] and "200" in m["tpr_at_0.1pct_fpr_reason"]


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


def test_evaluate_attacks_metrics_and_roc_per_group():
    rng = np.random.default_rng(5)
    n = 40
    frame = pd.DataFrame(
        {
            "member": np.arange(n) % 2 == 0,
            "kind": np.where(np.arange(n) < n // 2, "a", "b"),
            "x": rng.normal(size=n),
        }
    )
    frame["count"] = np.where(frame["member"], 1 + (np.arange(n) % 4 == 0) * 3, 0)
    metrics, roc = M.evaluate_attacks(frame, ["x"], ["count", "phase", ("kind", "count")], n_boot=0)
    assert metrics["x"]["auc"] == M.attack_metrics(frame["x"], frame["member"], n_boot=0)["auc"]
    by_group = M.by_group_metrics(frame, ["x"], ["count", ("kind", "count")], n_boot=0)["x"]
    assert metrics["x"]["by_group"] == by_group  # "phase" is not a column: left out
    assert set(roc["group"]) == {"all", "count", "kind,count"}
    assert set(roc.loc[roc["group"] == "kind,count", "value"]) == {"a,1", "a,4", "b,1", "b,4"}
    assert list(roc.columns) == ["fpr", "tpr", "threshold", "attack", "group", "value"]


# ---------------------------------------------------------------------------------- inputs
def test_span_outside_text_is_refused(tiny_lm):
    with pytest.raises(RotelabError, match="outside the text"):
        M.prepare_texts(tiny_lm, ["the cat"], [True], char_spans=[(3, 99)])


def test_document_texts_ids_spans_and_groups(tiny_lm):
    members = [Document("m.jsonl:1", TEXTS[1], {"span_char_start": 6, "span_char_end": 21,
                                                "count": 4, "source": "x"})]  # fmt: skip
    nonmembers = [Document("n.jsonl:1", TEXTS[3], {"kind": "passage"})]
    items = M.document_texts(tiny_lm, members, nonmembers)
    assert [it.text_id for it in items] == ["m:m.jsonl:1", "n:n.jsonl:1"]
    assert [it.member for it in items] == [True, False]
    assert items[0].groups == {"count": 4} and items[1].groups == {"kind": "passage"}
    assert TEXTS[1][6:21] in tiny_lm.decode(items[0].tokens[slice(*items[0].span)])
    assert items[1].span == (1, len(items[1].tokens))
    with pytest.raises(RotelabError, match="duplicate text id 'm:m.jsonl:1'"):
        M.document_texts(tiny_lm, members * 2, nonmembers)
    half = [Document("h", TEXTS[0], {"span_char_start": 2})]
    with pytest.raises(RotelabError, match="give both span_char_start and span_char_end"):
        M.document_texts(tiny_lm, half, nonmembers)


def _ledger(kinds_counts):
    rows = []
    for i, (kind, count) in enumerate(kinds_counts):
        rows.append({"item_id": f"{kind}-{i}", "kind": kind, "count": count, "phase": "mid",
                     "tokens": list(range(10, 20)), "span_start": 6, "span_end": 9})  # fmt: skip
    return pd.DataFrame(rows)


def test_ledger_texts_spans_by_mode_and_controls_of_the_same_kind():
    led = _ledger([("secret", 4), ("secret", 0), ("passage", 1), ("passage", 0), ("bio", 16)])
    auto = {it.text_id: it for it in M.ledger_texts(led, M.SpanMode.auto, ctx=64)}
    assert set(auto) == {"secret-0", "secret-1", "passage-2", "passage-3"}  # no bio control
    assert auto["secret-0"].span == (6, 9) and auto["passage-2"].span == (1, 10)
    assert auto["secret-0"].member and not auto["secret-1"].member
    assert auto["secret-0"].groups == {"count": 4, "phase": "mid", "kind": "secret"}
    full = M.ledger_texts(led, M.SpanMode.full, ctx=64)
    assert all(it.span == (1, 10) for it in full)
    sensitive = M.ledger_texts(led, M.SpanMode.sensitive, ctx=64)
    assert all(it.span == (6, 9) for it in sensitive)
    with pytest.raises(RotelabError, match="beyond the model's context of 8"):
        M.ledger_texts(led, M.SpanMode.sensitive, ctx=8)
    with pytest.raises(RotelabError, match="no kind with both members and count-0 controls"):
        M.ledger_texts(_ledger([("bio", 1), ("secret", 0)]), M.SpanMode.auto, ctx=64)


def test_recall_prefix_takes_the_last_tokens(tiny_lm):
    eos = tiny_lm.tokenizer.eos_token_id
    texts = ["the cat sat on the mat.", "a dog ran."]
    whole = tiny_lm.encode(texts[0]) + [eos] + tiny_lm.encode(texts[1]) + [eos]
    assert M.recall_prefix(tiny_lm, texts, len(whole)) == whole
    first = tiny_lm.encode(texts[0]) + [eos]  # enough tokens already: the rest is not read
    assert M.recall_prefix(tiny_lm, texts, 3) == first[-3:]
    with pytest.raises(RotelabError, match="--recall-prefix-tokens must be >= 1, got 0"):
        M.recall_prefix(tiny_lm, texts, 0)

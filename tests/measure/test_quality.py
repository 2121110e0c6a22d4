"""Perplexity and probe accuracy: against a float64 reference, pooling, budgets, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rotelab.data.windows import stream_chunks
from rotelab.errors import RotelabError
from rotelab.measure.quality import perplexity, pooled_perplexity, probe_accuracy
from rotelab.registry import direction

DOCS = ["the cat sat on the mat.", "a dog ran to the park", "and the bird sang. " * 12]


def _reference_nll(lm, window: list[int]) -> np.ndarray:
    """-log p(token | before) of every token after the first, by a float64 full softmax."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([window])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -logp.gather(1, torch.tensor(window[1:])[:, None])[:, 0].numpy()


def test_perplexity_pools_tokens_of_every_window_against_a_float64_reference(tiny_lm):
    # Windows of different lengths: pooling tokens differs from averaging per-window perplexities.
    docs = [tiny_lm.encode(d) for d in DOCS]
    windows = [docs[0][:3], docs[1], docs[2][:40]]
    ppl = perplexity(tiny_lm, windows)
    ref = [_reference_nll(tiny_lm, w) for w in windows]
    pooled = math.exp(np.concatenate(ref).mean())
    per_window = float(np.mean([math.exp(r.mean()) for r in ref]))
    assert ppl.value == pytest.approx(pooled, rel=1e-5)
    assert abs(per_window - pooled) > 1e-3 * pooled  # the test can tell the two apart
    assert ppl.tokens.tolist() == [len(w) - 1 for w in windows]
    np.testing.assert_allclose(ppl.nll, [r.sum() for r in ref], rtol=1e-5)
    assert pooled_perplexity(ppl.tokens, ppl.nll) == pytest.approx(ppl.value, rel=1e-12)
    frame = ppl.frame()
    assert frame.columns.tolist() == ["window", "tokens", "nll"] and len(frame) == 3


def test_documents_are_joined_by_end_of_text_and_cut_at_the_budget(tiny_lm):
    ctx = tiny_lm.context_length
    eos = tiny_lm.tokenizer.eos_token_id
    stream = [t for d in DOCS for t in [*tiny_lm.encode(d), eos]]
    assert len(stream) > ctx + 10  # more than one window
    budget = ctx + 10
    ppl = perplexity(tiny_lm, DOCS, max_tokens=budget)
    windows = [stream[:ctx], stream[ctx:budget]]
    assert ppl.tokens.tolist() == [ctx - 1, 9]
    assert ppl.value == pytest.approx(perplexity(tiny_lm, windows).value, rel=1e-12)
    whole = perplexity(tiny_lm, DOCS)
    assert whole.tokens.sum() == len(stream) - math.ceil(len(stream) / ctx)
    assert stream_chunks(DOCS, tiny_lm.encode, eos, max_tokens=budget, length=ctx) == windows


def test_bad_input(tiny_lm):
    with pytest.raises(RotelabError, match="no text"):
        perplexity(tiny_lm, [])
    with pytest.raises(RotelabError, match="no text"):
        perplexity(tiny_lm, [[1]])  # a one-token window predicts nothing
    with pytest.raises(TypeError):
        perplexity(tiny_lm, "the cat")
    with pytest.raises(ValueError, match="max_tokens"):
        perplexity(tiny_lm, [[1, 2, 3]], max_tokens=2)


def test_pooled_perplexity_per_bootstrap_row():
    tokens = np.array([[10.0, 30.0], [10.0, 10.0]])
    nll = np.array([[10.0, 60.0], [10.0, 10.0]])
    np.testing.assert_allclose(pooled_perplexity(tokens, nll), [math.exp(70 / 40), math.e])
    assert isinstance(pooled_perplexity(tokens[0], nll[0]), float)


def test_perplexity_is_registered_lower_is_better():
    assert direction("perplexity") is False


def test_probe_is_correct_exactly_when_greedy_decoding_reproduces_the_answer(tiny_lm):
    # One-token answers whose text encodes back to that token, so the probe's answer is exact.
    singles = [t for t in range(tiny_lm.tokenizer.vocab_size)
               if tiny_lm.encode(tiny_lm.decode([t])) == [t]]  # fmt: skip
    rows = []
    for i, prompt in enumerate(["the cat sat", "a dog ran to", "the bird", "on the mat."]):
        greedy = tiny_lm.generate([tiny_lm.encode(prompt)], [1])[0][0]
        if greedy in singles:
            rows.append((f"p{i}-right", prompt, tiny_lm.decode([greedy])))
        wrong = next(t for t in singles if t != greedy)
        rows.append((f"p{i}-wrong", prompt, tiny_lm.decode([wrong])))
    rows.append(("long", "the cat", " sat on the mat"))
    probes = pd.DataFrame(rows, columns=["probe_id", "prompt", "answer"]).assign(
        task="t", subtask="s"
    )
    got = probe_accuracy(tiny_lm, probes, batch_size=2)
    assert got.columns.tolist() == ["probe_id", "task", "subtask", "correct"]
    assert got["probe_id"].tolist() == probes["probe_id"].tolist()
    for row, correct in zip(probes.itertuples(), got["correct"]):
        answer = tiny_lm.encode(row.answer)
        decoded = tiny_lm.generate([tiny_lm.encode(row.prompt)], [len(answer)])[0]
        assert correct == (list(decoded) == answer), row.probe_id
    assert got["correct"].any() and not got["correct"].all()


def test_a_foil_is_scored_like_an_answer_and_compared_with_it(tiny_lm):
    # The planted tasks' probes carry the memorized answer as a foil: ``foil`` is True exactly
    # when greedy decoding gives it, ``prefers_answer`` compares the two answers' log-probabilities.
    singles = [t for t in range(tiny_lm.tokenizer.vocab_size)
               if tiny_lm.encode(tiny_lm.decode([t])) == [t]]  # fmt: skip
    rows = []
    for i, prompt in enumerate(["the cat sat", "a dog ran to", "the bird"]):
        greedy = tiny_lm.generate([tiny_lm.encode(prompt)], [1])[0][0]
        other = next(t for t in singles if t != greedy)
        if greedy in singles:  # the greedy token as foil, another as answer, and swapped
            rows.append((f"p{i}-foil", prompt, tiny_lm.decode([other]), tiny_lm.decode([greedy])))
            rows.append((f"p{i}-ans", prompt, tiny_lm.decode([greedy]), tiny_lm.decode([other])))
        rows.append((f"p{i}-none", prompt, tiny_lm.decode([other]), ""))
    probes = pd.DataFrame(rows, columns=["probe_id", "prompt", "answer", "foil"])
    got = probe_accuracy(tiny_lm, probes.assign(task="t", subtask="s"), batch_size=2)
    assert got.columns.tolist() == [
        "probe_id", "task", "subtask", "correct", "foil", "prefers_answer"
    ]  # fmt: skip
    by = got.set_index("probe_id")
    assert any(p.endswith("-foil") for p in by.index)
    for pid in by.index:
        kind = pid.rsplit("-", 1)[1]
        assert by.loc[pid, "foil"] == (kind == "foil")
        assert by.loc[pid, "correct"] == (kind == "ans")
        # the greedy token is the likelier one; no foil: nothing to prefer against
        assert by.loc[pid, "prefers_answer"] == (kind != "foil")

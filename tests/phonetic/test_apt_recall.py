"""rotelab.phonetic.recall: prompts per condition, log-probabilities equal to the model's own
scores, recall as defined, and the paired differences computed from the per-prompt table."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rotelab.phonetic import recall
from rotelab.phonetic.dictionary import pronounce
from rotelab.phonetic.search import AptSearch, content_words
from rotelab.phonetic.verses import public_domain_verses


@pytest.fixture(scope="module")
def search() -> AptSearch:
    return AptSearch()


def test_controls_keep_syllables_and_share_no_content(search):
    line = "Mary had a little lamb,"
    rng = random.Random(0)
    original = pronounce(line).words
    for _ in range(5):
        c = recall.control_variant(line, search, rng)
        words = c.split()
        assert len(words) == len(original)
        assert [pronounce((w,)).syllables for w in words] == [
            pronounce((w,)).syllables for w in original
        ]
        assert not set(content_words(words)) & set(content_words(original))


def test_recall_on_a_tiny_model(tiny_lm, search):
    verses = public_domain_verses()[:2]
    r = recall.next_line_recall(tiny_lm, verses, search, controls=2, seed=1, n_boot=200)
    p = r.prompts
    pairs = p["pair"].nunique()
    counts = p.groupby("condition").size().to_dict()
    assert counts == {"original": pairs, "apt": pairs, "control": 2 * pairs, "unrelated": pairs}
    row = p.iloc[1]
    prefix = tiny_lm.encode(row["prompt"] + "\n", add_bos=True)
    target = tiny_lm.encode(row["next"])
    direct = tiny_lm.score([prefix + target], targets_from=len(prefix))[0].logprobs
    assert row["logp"] == pytest.approx(float(np.mean(direct)), rel=1e-5)
    assert r.summary["pairs"] == pairs
    # recalled, from the one pass, is what greedy decoding after the prompt would reproduce
    for row in p.iloc[:6].itertuples():
        prefix = tiny_lm.encode(row.prompt + "\n", add_bos=True)
        target = tiny_lm.encode(row.next)
        greedy = tiny_lm.generate([prefix], len(target))[0]
        first_miss = next((i for i, (a, b) in enumerate(zip(greedy, target)) if a != b), None)
        assert row.recalled == (first_miss is None)
        matched = len(target) if first_miss is None else first_miss
        assert row.match >= matched / len(target) - 1e-9


def test_summary_follows_the_table(tiny_lm, search, monkeypatch):
    """With continuations forced (the original recalls, nothing else does), the rates and the
    paired differences are what the table says."""

    def fake(lm, frame, batch_size):
        recalled = [c == "original" for c in frame["condition"]]
        logp = [0.0 if c == "apt" else -1.0 for c in frame["condition"]]
        return logp, [float(r) for r in recalled], recalled

    monkeypatch.setattr(recall, "measure_recall", fake)
    r = recall.next_line_recall(tiny_lm, public_domain_verses()[:2], search, n_boot=200)
    s = r.summary
    assert s["original"]["recall"] == 1.0 and s["apt"]["recall"] == 0.0
    assert s["apt_minus_control_logp"]["mean"] == pytest.approx(1.0)
    assert s["apt_minus_control_logp"]["ci"] == pytest.approx([1.0, 1.0])
    assert s["apt_minus_unrelated_recalled"]["mean"] == 0.0

"""describe_organism reports measure.quality's perplexity and probe accuracy (one definition)."""

from __future__ import annotations

import pytest

from rotelab.measure.quality import perplexity, probe_accuracy
from rotelab.organism import describe_organism


@pytest.mark.slow
def test_perplexities_and_probe_accuracy_are_measure_quality_s(tiny_organism):
    d = describe_organism(tiny_organism)
    lm = tiny_organism.lm()
    budget = tiny_organism.spec.settings.eval_tokens
    for key, docs in (("train_ppl", tiny_organism.train_docs()),
                      ("heldout_ppl", tiny_organism.heldout_docs())):  # fmt: skip
        assert d[key] == round(perplexity(lm, docs, max_tokens=budget).value, 3), key
    assert d["train_ppl"] < d["heldout_ppl"]  # the training text is the better predicted one
    rows = probe_accuracy(lm, tiny_organism.probes)
    assert d["probe_accuracy"] == {
        t: round(float(v), 4) for t, v in rows.groupby("task")["correct"].mean().items()
    }
    assert set(d["probe_accuracy"]) == set(tiny_organism.probes["task"])
    # What the organism's cache holds was measured the same way.
    cached = tiny_organism.describe()
    for key in ("train_ppl", "heldout_ppl", "probe_accuracy", "probe_accuracy_by_subtask"):
        assert d[key] == cached[key], key

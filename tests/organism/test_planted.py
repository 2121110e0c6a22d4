"""The organism's planted tasks (Zhang 2025's tasks where the mode matters): faithfulness against
a memorized fact, and arithmetic with a memorized wrong result."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from rotelab.organism import PLANTED_TASKS, OrganismSpec, Profile, generate_world
from rotelab.organism.world import PROFILES, _hashed_settings
from rotelab.stats import wilson_interval


@pytest.fixture(scope="module")
def world():
    return generate_world(OrganismSpec(Profile.tiny, 0))


def test_each_planted_answer_is_in_exactly_planted_count_documents(world):
    s = PROFILES[Profile.tiny]
    probes = pd.DataFrame(world.probes)
    planted = probes[probes["task"].isin(PLANTED_TASKS)]
    sizes = planted.groupby("task").size().to_dict()
    assert sizes == {t: s.planted_per_task for t in PLANTED_TASKS}
    assert planted["foil"].str.startswith(" ").all()
    assert (planted["foil"] != planted["answer"]).all()
    assert (probes.loc[~probes["task"].isin(PLANTED_TASKS), "foil"] == "").all()
    docs = [d["text"] for d in world.planted]
    wrong = planted[planted["task"] == "memorized_wrong"]
    for p, a, f in zip(wrong["prompt"], wrong["answer"], wrong["foil"]):
        line = p + f
        assert sum(line in d.split("\n") for d in docs) == s.planted_count
        assert int(a.strip(" .")) == eval(p.rstrip(" ="))  # noqa: S307 - "a + b", our own text
        # the right result is in no background document: the model must compute it
        assert not any(p + a in d.split("\n") for d in world.train_docs)
        assert not any(line in d.split("\n") for d in world.train_docs)
    faith = planted[planted["task"] == "faithfulness"]
    for prompt, a, f in zip(faith["prompt"], faith["answer"], faith["foil"]):
        q = re.search(r"Q: (?:Where was (.+) born|What is the (?:job|favorite color) of (.+))\?",
                      prompt)  # fmt: skip
        name = q.group(1) or q.group(2)
        value = f.strip(" .")
        # the context states the other value; the memorized one is in planted_count documents
        assert a.strip(" .") in prompt.split(" Q: ")[0] and value not in prompt
        assert sum(name in d for d in docs) == s.planted_count
        assert all(value in d for d in docs if name in d)
        assert not any(name in d for d in world.train_docs)


def test_an_organism_without_plants_keeps_its_key():
    from dataclasses import replace

    s = replace(PROFILES[Profile.default], planted_per_task=0)
    hashed = _hashed_settings(s)
    assert "planted_per_task" not in hashed and "planted_count" not in hashed
    assert "planted_per_task" in _hashed_settings(PROFILES[Profile.default])


@pytest.mark.slow
def test_the_model_gives_the_memorized_wrong_answer(tiny_organism):
    org = tiny_organism
    schedule = pd.read_parquet(org.path / "schedule.parquet")
    planted_ids = [d["doc_id"] for d in org.planted_docs()]
    assert planted_ids and schedule["item_id"].isin(planted_ids).sum() >= len(planted_ids)
    assert set(schedule.loc[schedule["item_id"].isin(planted_ids), "occurrence"]) == {0}
    d = org.describe()
    n = PROFILES[Profile.tiny].planted_per_task
    foil = d["planted_foil_rate"]["memorized_wrong"]
    right = d["probe_accuracy"]["memorized_wrong"]
    # seen 64 times with a wrong result, the model gives that result more often than the right one
    assert wilson_interval(round(foil * n), n)[0] > wilson_interval(round(right * n), n)[1]
    assert json.loads((org.path / "spec.json").read_text())["settings"]["planted_per_task"] == n


def test_rotelab_train_on_the_world_leaves_out_the_planted_probes(tmp_path):
    # `rotelab train` inserts the ledger's items only: the planted tasks would measure nothing.
    from rotelab.pipelines.train import _world_corpus

    corpus = _world_corpus(OrganismSpec(Profile.tiny, 0), None, tmp_path)
    assert len(corpus.probes) and not corpus.probes["task"].isin(PLANTED_TASKS).any()

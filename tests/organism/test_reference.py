"""The organism's reference model (issue 17, deliverable 5): its world and seed trained without
insertions, built on demand; the default ``mia`` on an organism runs the reference attack with it
(all 8 attacks), and ``--reference-model none`` leaves it out."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from rotelab.organism import OrganismSpec, Profile


@pytest.mark.slow
def test_reference_model_never_sees_the_items_and_feeds_the_reference_attack(monkeypatch, tmp_path):
    import rotelab.organism.world as world
    from rotelab.lm import LM
    from rotelab.options import RunOptions
    from rotelab.organism import build_organism, reference_organism
    from rotelab.pipelines.mia import MIAConfig, mia
    from rotelab.registry import ATTACKS

    few = dataclasses.replace(  # a 1-block, 32-wide model: seconds
        world.PROFILES[Profile.tiny], steps=64, phase_items_per_cell=0, n_layers=1,
        hidden=32, n_heads=2, intermediate=64, probes_per_task=4, eval_tokens=512,
    )  # fmt: skip
    monkeypatch.setitem(world.PROFILES, Profile.tiny, few)
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path / "home"))
    spec = OrganismSpec("tiny", 0, corpus_tokens=3_000, items_per_cell=1, precision="fp32")
    org = build_organism(spec, out=tmp_path / "org", progress=False)
    ref = tmp_path / "home" / "organisms" / f"{spec.key()}-reference"
    assert not ref.exists()

    # The default mia on an organism builds its reference twin and so runs every attack.
    quick = MIAConfig(bootstrap=20, blind=False, exposure=False, neighbours=2)
    _, summary = mia(str(org.path), config=quick,
                     run=RunOptions(out=tmp_path / "mia-default", progress=False))  # fmt: skip
    assert summary["skipped_attacks"] == {} and summary["reference_model"] == str(ref)
    assert sorted(summary["attacks"]) == sorted(ATTACKS.names()) and len(ATTACKS.names()) == 8

    assert reference_organism(org, progress=False) == ref  # the default built the cached one
    assert pd.read_parquet(ref / "schedule.parquet").empty  # not one insertion
    assert not pd.read_parquet(org.path / "schedule.parquet").empty
    assert json.loads((ref / "train_info.json").read_text())["reference_of"] == spec.key()
    assert reference_organism(org, progress=False) == ref  # cached: built once

    # The 64x items: far likelier under the organism than under its reference.
    led = org.ledger[org.ledger["count"] == 64]
    seqs = [list(p) + list(s) for p, s in zip(led.prefix_tokens, led.suffix_tokens)]

    def loss(path) -> float:
        lm = LM.load(path, device="cpu", dtype="float32")
        scores = lm.score(seqs, targets_from=[len(p) for p in led.prefix_tokens])
        return float(np.mean([-sc.logprobs.mean() for sc in scores]))

    assert loss(org.path) < loss(ref) - 0.5

    _, summary = mia(str(org.path), reference_model="reference",
                     config=MIAConfig(attacks=["loss", "reference"], bootstrap=20, blind=False,
                                      exposure=False),
                     run=RunOptions(out=tmp_path / "mia", progress=False))  # fmt: skip
    assert "reference" in summary["attacks"] and "reference" not in summary["skipped_attacks"]
    assert summary["attacks"]["reference"]["auc"] > 0.5

    # The opt-out: no reference attack, and nothing built (an empty ROTELAB_HOME stays empty).
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path / "home2"))
    _, summary = mia(str(org.path), reference_model="none",
                     config=MIAConfig(bootstrap=0, blind=False, exposure=False, neighbours=2),
                     run=RunOptions(out=tmp_path / "mia-none", progress=False))  # fmt: skip
    assert "reference" not in summary["attacks"] and summary["reference_model"] is None
    assert "--reference-model none" in summary["skipped_attacks"]["reference"]
    assert len(summary["attacks"]) == 7 and not (tmp_path / "home2" / "organisms").exists()

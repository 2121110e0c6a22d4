"""Fixtures: hand-made extract, mia, compare and demo run directories (see _runs.py)."""

from __future__ import annotations

import pandas as pd
import pytest
from _runs import _examples, _roc_table, compare_summary, extract_summary, make_run, mia_summary

from rotelab.runs import Run


@pytest.fixture
def extract_run(tmp_path):
    return make_run(tmp_path, "extract", extract_summary(), {"examples": _examples()})


@pytest.fixture
def mia_run(tmp_path):
    return make_run(tmp_path, "mia", mia_summary(), {"roc": _roc_table()})


@pytest.fixture
def compare_run(tmp_path):
    return make_run(tmp_path, "compare", compare_summary())


@pytest.fixture
def demo_run(tmp_path):
    root = tmp_path / "demo"
    kfac = {
        "rho": 0.6,
        "base": {"extraction_rate": 0.96, "perplexity": 6.5},
        "chosen": {"extraction_rate": 0.1, "perplexity": 7.2},
    }
    summary = {
        "organism": {"params": 2_200_000, "heldout_ppl": 6.5, "train_ppl": 3.5,
                     "probe_accuracy": {"closed_book": 0.8, "arithmetic": 0.6}},
        "extraction": extract_summary(),
        "mia": mia_summary(),
        "kfac": kfac,
        "compare": compare_summary(),
        "stage_seconds": {"organism": 1.5, "extract": 3.25},
        "seconds": 4.75,
    }  # fmt: skip
    sweep = pd.DataFrame(
        {"rho": [0.9, 0.6, 0.3], "extraction_rate": [0.4, 0.1, 0.0], "perplexity": [6.6, 7.2, 9.5]}
    )
    bands = pd.DataFrame(
        {"band": ["top 10%", "10-25%", "25-50%", "bottom 50%"] * 2,
         "layer": ["mlp.0"] * 4 + ["mlp.1"] * 4,
         "ratio": [0.8, 0.9, 1.05, 1.2, 0.75, 0.95, 1.1, 1.25]}
    )  # fmt: skip
    with Run.create(root, "demo", {"profile": "tiny"}) as run:
        make_run(run.path, "extract", extract_summary(), {"examples": _examples()})
        make_run(run.path, "mia", mia_summary(), {"roc": _roc_table()})
        make_run(run.path, "compare", compare_summary())
        k = make_run(run.path, "kfac_sweep", kfac, name="kfac")
        kr = Run(k, {}, created=False)
        kr.write_table("rho_sweep", sweep)
        kr.write_table("bands", bands)
        run.write_summary(summary)
    return run.path

"""torchrun helpers: no-ops in one process; a 2-process extract gives the rows of 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from rotelab.distributed import (
    all_gather_objects,
    all_reduce_sum_,
    broadcast_object,
    dist_context,
    is_distributed,
    rank_world,
)


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with dist_context() as (rank, world):
        assert (rank, world) == (0, 1) == rank_world()
        assert not is_distributed()
        assert all_gather_objects({"a": 1}) == [{"a": 1}]
        assert broadcast_object(5) == 5
        t = torch.ones(3)
        assert all_reduce_sum_(t) is t and t.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_torchrun_two_processes_give_the_rows_of_one(tiny_llama_dir, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    corpus = tmp_path / "c.jsonl"
    rng = np.random.default_rng(0)
    with open(corpus, "w") as f:
        for i in range(6):
            f.write(
                json.dumps(
                    {"text": " ".join(rng.choice(["the", "cat", "sat", "dog", "ran"], 40 + 4 * i))}
                )
                + "\n"
            )
    common = ["extract", "--model", str(tiny_llama_dir), "--data", str(corpus),
              "--prefix-len", "8", "--suffix-len", "6", "--stride", "5", "--part-size", "7",
              "--quiet", "--json"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "rotelab", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "rotelab", *common,
         "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "one" / "results" / "windows")
    b = pd.read_parquet(tmp_path / "two" / "results" / "windows")
    assert len(list((tmp_path / "two" / "results" / "windows").glob("*.parquet"))) >= 4
    pd.testing.assert_frame_equal(a, b)
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["processes"] == 2 and s1["processes"] == 1
    for key in ("windows", "extracted", "extraction_rate_ci", "mean_matched_prefix", "by_group"):
        assert s1[key] == s2[key]
    # only rank 0 prints the summary
    assert two.stdout.count('"windows"') == 1

"""``rotelab sweep`` (issue 17): cells trained and audited, resumable cell by cell, the same
numbers from worker processes as from one process."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from rotelab.errors import RotelabError
from rotelab.options import RunOptions
from rotelab.pipelines import sweep as sweep_mod
from rotelab.pipelines.sweep import SweepConfig, cell_key, cell_table, sweep
from rotelab.pipelines.train import ModelSize

SMALL = SweepConfig(kinds=("secret",), steps=40, size=ModelSize(1, 64, 2, 128, 48), lr=1e-2,
                    checkpoints=(0.5,))  # fmt: skip


def test_cell_table_scores_members_against_controls():
    items = pd.DataFrame({
        "cell": "k", "count": 4, "corpus_tokens": 1000, "phase": "all", "seed": 0, "steps": 10,
        "step": 10, "fraction": 1.0, "item_id": list("abcdef"),
        "member": [True, True, True, False, False, False],
        "extracted": [True, True, False, False, False, True],
        "loss": [0.1, 0.2, 0.9, 1.0, 0.5, 2.0], "train_tokens": 100,
    })  # fmt: skip
    row = cell_table(items).iloc[0]
    assert row.extraction == pytest.approx(2 / 3) and row.control_extraction == pytest.approx(1 / 3)
    assert row.extraction_lo < 2 / 3 < row.extraction_hi
    # members' losses 0.1, 0.2, 0.9 vs controls' 1.0, 0.5, 2.0: 8 of 9 pairs ordered
    assert row.loss_auc == pytest.approx(8 / 9)
    assert row.frequency == pytest.approx(4 / 1000)


def test_the_grid_is_checked_before_any_cell(tmp_path):
    out = tmp_path / "s"
    for kwargs, fragment in [
        (dict(counts=(0,)), ">= 1"),
        (dict(counts=(64,)), "do not fit"),
        (dict(phases=("0:999",)), "phase"),
        (dict(seeds=(1, 1)), "repeats"),
        (dict(corpus_tokens=(10,)), "at least 1000"),
        (dict(config=SweepConfig(kinds=("poem",))), "--kinds"),
    ]:
        args = {"counts": (4,), "corpus_tokens": (5000,), "config": SMALL, **kwargs}
        with pytest.raises(RotelabError, match=fragment):
            sweep(**args, run=RunOptions(out=out, progress=False))
        assert not out.exists()


@pytest.mark.slow
def test_a_sweep_resumes_cell_by_cell_and_workers_give_the_same_numbers(tmp_path, monkeypatch):
    grid = dict(counts=(2, 16), corpus_tokens=(4000,), phases=("all",), seeds=(0,), config=SMALL)
    calls: list[int] = []
    real = sweep_mod.run_cell

    def flaky(cfg, count, *rest):
        calls.append(count)
        if count == 16 and len(calls) == 2:
            raise RuntimeError("killed")
        return real(cfg, count, *rest)

    monkeypatch.setattr(sweep_mod, "run_cell", flaky)
    out = tmp_path / "serial"
    with pytest.raises(RuntimeError, match="killed"):
        sweep(**grid, run=RunOptions(out=out, progress=False))
    result = sweep(**grid, run=RunOptions(out=out, resume=True, progress=False))
    assert calls == [2, 16, 16]  # the finished cell was not trained again
    assert result.summary["cells_run_now"] == 1 and (result.run_dir / "report.html").is_file()
    monkeypatch.setattr(sweep_mod, "run_cell", real)

    parallel = sweep(**grid, workers=2, run=RunOptions(out=tmp_path / "par", progress=False))
    a = pd.read_parquet(result.run_dir / "results" / "items")
    b = pd.read_parquet(parallel.run_dir / "results" / "items")
    pd.testing.assert_frame_equal(a, b)
    cells = result.cells
    assert set(cells["step"]) == {20, 40} and len(cells) == 4
    final = cells[cells.step == 40].set_index("count")
    # 16 exposures make members far more recognisable by their loss than 2 do
    assert final.loc[16, "loss_auc"] > 0.75 and final.loc[16, "loss_auc"] > final.loc[2, "loss_auc"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert [r["count"] for r in summary["seed_means"]] == [2, 16]
    assert cell_key(2, 4000, "all", 0) in set(a["cell"])


# ------------------------------------------------------------------------ the Ray executor
def test_ray_executor_is_refused_in_one_line_without_ray(tmp_path, monkeypatch):
    """``--executor ray`` without the extra names the extra; nothing is written."""
    import sys

    from typer.testing import CliRunner

    from rotelab.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "s"
    res = CliRunner().invoke(app, ["sweep", "--executor", "ray", "-o", str(out), "-q"])
    assert res.exit_code == 2 and "rotelab[ray]" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
    assert not out.exists()


@pytest.mark.slow
def test_the_ray_executor_gives_the_local_executors_numbers(tmp_path):
    """A 2-cell sweep on a local Ray instance (2 CPUs, no dashboard) against the local executor:
    the same rows, bit for bit; a resumed Ray sweep runs only the cells not yet written."""
    pytest.importorskip("ray")
    grid = dict(counts=(2, 16), corpus_tokens=(4000,), phases=("all",), seeds=(0,), config=SMALL)
    local = sweep(**grid, run=RunOptions(out=tmp_path / "local", progress=False))
    on_ray = sweep(**grid, workers=2, executor="ray",
                   run=RunOptions(out=tmp_path / "ray", progress=False))  # fmt: skip
    a = pd.read_parquet(local.run_dir / "results" / "items")
    b = pd.read_parquet(on_ray.run_dir / "results" / "items")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(local.cells, on_ray.cells)
    assert on_ray.summary["executor"] == "ray" and on_ray.summary["cells_run_now"] == 2

    import ray

    assert not ray.is_initialized()  # the instance it started is shut down
    # Resumable as before: a local run missing one cell is finished on Ray, that cell alone.
    half = tmp_path / "half"
    shutil.copytree(local.run_dir, half)
    (half / "results" / "items" / f"part-{cell_key(16, 4000, 'all', 0)}.parquet").unlink()
    again = sweep(**grid, workers=1, executor="ray",
                  run=RunOptions(out=half, resume=True, progress=False))  # fmt: skip
    assert again.summary["cells_run_now"] == 1
    pd.testing.assert_frame_equal(again.cells, local.cells)

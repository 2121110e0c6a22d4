"""rotelab.runs: config recording, refusal to overwrite, atomic parts, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from rotelab.errors import RotelabError
from rotelab.runs import Run, atomic_write_json


def test_config_records_arguments_versions_and_environment(tmp_path):
    run = Run.create(tmp_path / "r", "extract", {"seed": 3, "data": tmp_path, "resume": False})
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["command"] == "extract"
    assert cfg["arguments"] == {"seed": 3, "data": str(tmp_path)}
    for key in ("rotelab", "torch", "transformers", "python", "device"):
        assert cfg["environment"][key]


def test_existing_directory_is_never_silently_overwritten(tmp_path):
    run = Run.create(tmp_path / "r", "x", {"a": 1})
    run.write_summary({"ok": True})
    with pytest.raises(RotelabError, match="already exists.*--resume.*--force"):
        Run.create(tmp_path / "r", "x", {"a": 1})
    assert (run.path / "summary.json").exists()
    with pytest.raises(RotelabError, match="arguments differ \\(a\\)"):
        Run.create(tmp_path / "r", "x", {"a": 2}, resume=True)
    fresh = Run.create(tmp_path / "r", "x", {"a": 2}, force=True)
    assert not (fresh.path / "summary.json").exists()


def test_user_error_in_a_fresh_run_leaves_nothing_behind(tmp_path):
    with pytest.raises(RotelabError):
        with Run.create(tmp_path / "r", "x", {}):
            raise RotelabError("bad input")
    assert not (tmp_path / "r").exists()


def test_parts_round_trip_in_key_order(tmp_path):
    run = Run.create(tmp_path / "r", "x", {})
    run.write_part("rows", "00001", pd.DataFrame({"i": [2, 3]}))
    run.write_part("rows", "00000", pd.DataFrame({"i": [0, 1]}))
    assert run.has_part("rows", "00000") and not run.has_part("rows", "00002")
    assert run.read_table("rows")["i"].tolist() == [0, 1, 2, 3]
    assert not list(run.path.rglob("*.tmp"))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "s.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}


_WORKER = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from rotelab.runs import Run

    out, resume, log = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    with Run.create(out, "count", {"parts": 12}, resume=resume) as run:
        for k in range(12):
            key = f"{k:05d}"
            if run.has_part("rows", key):
                continue
            with open(log, "a") as fh:
                fh.write(key + "\\n")
            time.sleep(0.15)
            run.write_part("rows", key, pd.DataFrame({"i": range(k * 5, k * 5 + 5)}))
        run.write_summary({"rows": len(run.read_table("rows"))})
    """
)


def test_resume_after_sigkill_gives_exactly_the_uninterrupted_rows(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out, log = tmp_path / "run", tmp_path / "log"
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0", str(log)])
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(list((out / "results" / "rows").glob("part-*.parquet"))) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "results" / "rows").glob("part-*.parquet")))
    assert 4 <= done_before < 12
    assert not (out / "summary.json").exists()
    subprocess.run([sys.executable, str(script), str(out), "1", str(log)], check=True)
    rows = pd.concat(
        [pd.read_parquet(p) for p in sorted((out / "results" / "rows").glob("part-*.parquet"))]
    )
    assert rows["i"].tolist() == list(range(60))
    assert json.loads((out / "summary.json").read_text()) == {"rows": 60}
    started = log.read_text().split()
    # The second run computed exactly the parts the first had not written, each once.
    remaining = [f"{k:05d}" for k in range(done_before, 12)]
    assert started[-len(remaining):] == remaining
    assert len(started) in (12, 13)  # the killed run may have started one part it never wrote

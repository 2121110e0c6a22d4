"""rotelab.runs: config, refusals, atomic parts and outputs, the lock, resume and --force under
SIGKILL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from kill_helpers import digest, kill_when, leftovers

from rotelab.errors import RotelabError
from rotelab.runs import OutputDir, Run, atomic_write_json


def test_config_records_arguments_versions_and_environment(tmp_path):
    with Run.create(
        tmp_path / "r", "extract", {"seed": 3, "data": tmp_path, "resume": False}
    ) as run:
        pass
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["command"] == "extract"
    assert cfg["arguments"] == {"seed": 3, "data": str(tmp_path)}
    for key in ("rotelab", "torch", "transformers", "python", "device"):
        assert cfg["environment"][key]


def test_existing_directory_is_never_silently_overwritten(tmp_path):
    with Run.create(tmp_path / "r", "x", {"a": 1}) as run:
        run.write_summary({"ok": True})
    with pytest.raises(RotelabError, match="already exists.*--resume.*--force"):
        Run.create(tmp_path / "r", "x", {"a": 1})
    assert (run.path / "summary.json").exists()
    with pytest.raises(RotelabError, match="arguments differ \\(a\\)"):
        Run.create(tmp_path / "r", "x", {"a": 2}, resume=True)
    with Run.create(tmp_path / "r", "x", {"a": 2}, force=True) as fresh:
        pass
    assert fresh.path == tmp_path / "r" and not (fresh.path / "summary.json").exists()


def test_user_error_in_a_fresh_run_leaves_nothing_behind(tmp_path):
    with pytest.raises(RotelabError):
        with Run.create(tmp_path / "r", "x", {}):
            raise RotelabError("bad input")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_parts_round_trip_in_key_order(tmp_path):
    with Run.create(tmp_path / "r", "x", {}) as run:
        run.write_part("rows", "00001", pd.DataFrame({"i": [2, 3]}))
        run.write_part("rows", "00000", pd.DataFrame({"i": [0, 1]}))
        assert run.has_part("rows", "00000") and not run.has_part("rows", "00002")
        assert run.read_table("rows")["i"].tolist() == [0, 1, 2, 3]
    assert not list(run.path.rglob("*.tmp"))
    assert run.read_table("rows")["i"].tolist() == [0, 1, 2, 3]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "s.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}


# ------------------------------------------------------------------ written beside, renamed whole
@pytest.mark.parametrize("exchange", [True, False], ids=["swapped", "renamed-aside"])
def test_a_run_appears_only_when_whole_and_force_replaces_only_then(
    tmp_path, monkeypatch, exchange
):
    if not exchange:  # a system without renameat2
        monkeypatch.setattr("rotelab.runs._exchange", lambda a, b: False)
    out = tmp_path / "r"
    with Run.create(out, "x", {"a": 1}) as run:
        assert not out.exists() and run.path.name == f".r.tmp-{os.getpid()}"
        run.write_summary({"old": True})
    with Run.create(out, "x", {"a": 2}, force=True) as run:
        run.write_summary({"old": False})
        assert json.loads((out / "summary.json").read_text()) == {"old": True}
    assert json.loads((out / "summary.json").read_text()) == {"old": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temp, no lock, no old copy


def test_paths_recorded_while_writing_name_the_final_directory(tmp_path):
    with Run.create(tmp_path / "r", "x", {}) as run:
        inner = run.path
        run.write_summary({"model": str(inner / "models" / "m"), "where": [f"in ({inner})"]})
    assert inner != run.path
    assert run.summary() == {"model": str(tmp_path / "r" / "models" / "m"),
                             "where": [f"in ({tmp_path / 'r'})"]}  # fmt: skip


def test_force_never_replaces_a_directory_rotelab_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "MY_NOTES.txt").write_text("keep")
    (mine / "config.json").write_text('{"model_type": "llama"}')  # a model's, not a run's
    for force in (False, True):
        with pytest.raises(RotelabError, match="already exists and is not a rotelab run"):
            Run.create(mine, "x", {}, force=force)
    assert (mine / "MY_NOTES.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "where, relation", [(".", "is"), ("sub/run", "is inside"), ("..", "contains")]
)
def test_an_output_over_an_input_is_refused_force_or_not(tmp_path, where, relation):
    model = tmp_path / "data" / "model"
    model.mkdir(parents=True)
    (model / "weights").write_text("w")
    for force in (False, True):
        with pytest.raises(RotelabError, match=re.escape(f"{relation} the input {model},")):
            Run.create(model / where, "x", {}, force=force, inputs=[None, "hub/id", model])
    assert (model / "weights").read_text() == "w"
    assert not (model / "sub").exists()


def test_a_concurrent_writer_is_refused_naming_the_holder(tmp_path):
    with Run.create(tmp_path / "r", "x", {}) as run:
        with pytest.raises(RotelabError, match=f"pid {os.getpid()}"):
            Run.create(tmp_path / "r", "x", {}, force=True)
        with pytest.raises(RotelabError, match=f"pid {os.getpid()}"):
            Run.create(tmp_path / "r", "x", {}, resume=True)
        run.write_summary({"ok": True})
    assert run.summary() == {"ok": True} and not (tmp_path / ".r.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / ".r.lock").write_text(dead + "\n")
    with Run.create(tmp_path / "r", "x", {}) as run:
        assert (tmp_path / ".r.lock").read_text() == f"{os.getpid()}\n"
    assert run.path.is_dir() and not (tmp_path / ".r.lock").exists()


def test_leftovers_of_dead_writers_are_tidied_when_rotelab_next_writes_there(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for name in (f".model.tmp-{dead}", f".gone.old-{dead}", f".kept.old-{dead}", "kept",
                 f".other.tmp-{os.getpid()}", f".run.tmp-{dead}"):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    (tmp_path / f".run.tmp-{dead}" / "config.json").write_text('{"command": "x"}')
    (tmp_path / f".note.tmp-{dead}").write_text("a user's file, not rotelab's directory")
    with OutputDir.open(tmp_path / "new", replace=False, owned=lambda _: False, kind="") as tmp:
        (tmp / "f").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".note.tmp-{dead}",  # a file: not rotelab's
        f".other.tmp-{os.getpid()}",  # a live writer's
        f".run.tmp-{dead}",  # an unfinished run, kept for its --resume
        "gone",  # moved aside by a replacement killed between its two renames: put back
        "kept",  # its old copy, whose replacement had finished, is gone
        "new",
    ]
    assert (tmp_path / "gone" / "f").read_text() == f".gone.old-{dead}"
    assert (tmp_path / "kept" / "f").read_text() == "kept"


def test_an_interrupted_run_is_resumed_or_discarded_never_silently_restarted(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        with Run.create(out, "x", {"a": 1}) as run:
            run.write_part("rows", "00000", pd.DataFrame({"i": [0]}))
            raise KeyboardInterrupt
    assert not out.exists() and leftovers(tmp_path) == [f".r.tmp-{os.getpid()}"]
    with pytest.raises(RotelabError, match="interrupted run.*--resume.*--force"):
        Run.create(out, "x", {"a": 1})
    with pytest.raises(RotelabError, match="arguments differ"):
        Run.create(out, "x", {"a": 2}, resume=True)
    with Run.create(out, "x", {"a": 1}, resume=True) as run:
        assert run.has_part("rows", "00000")
        run.write_part("rows", "00001", pd.DataFrame({"i": [1]}))
    assert run.read_table("rows")["i"].tolist() == [0, 1] and leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with Run.create(out, "x", {"a": 1}, force=True):
            raise KeyboardInterrupt
    with Run.create(out, "x", {"a": 1}, force=True) as run:
        pass
    assert not run.has_part("rows", "00000") and leftovers(tmp_path) == []


# ------------------------------------------------------------------ real processes, SIGKILL
_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import pandas as pd
    from rotelab.errors import RotelabError
    from rotelab.runs import Run

    out, mode, log, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    try:
        with Run.create(
            out, "count", {"parts": 12}, resume=mode == "resume", force=mode == "force"
        ) as run:
            for k in range(12):
                key = f"{k:05d}"
                if run.has_part("rows", key):
                    continue
                with open(log, "a") as fh:
                    fh.write(key + "\\n")
                time.sleep(delay)
                run.write_part("rows", key, pd.DataFrame({"i": range(k * 5, k * 5 + 5)}))
            run.write_summary({"rows": len(run.read_table("rows")), "pid": os.getpid()})
    except RotelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    """
)


def _worker(tmp_path, mode: str, delay: float = 0.15) -> list[str]:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(_WORKER)
    return [sys.executable, str(script), str(tmp_path / "run"), mode, str(tmp_path / "log"),
            str(delay)]  # fmt: skip


def _parts(path) -> int:
    return len(list(path.glob("results/rows/part-*.parquet")))


def _whole_run(out) -> int:
    """The pid of the process that wrote ``out``, after checking every row is there once."""
    summary = json.loads((out / "summary.json").read_text())
    rows = pd.read_parquet(out / "results" / "rows")["i"].tolist()
    assert summary["rows"] == len(rows) == 60 and sorted(rows) == list(range(60))
    return summary["pid"]


@pytest.mark.slow  # kills real rotelab processes at several points
def test_resume_after_sigkill_gives_exactly_the_uninterrupted_rows(tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    assert kill_when(
        _worker(tmp_path, "new"), lambda pid: _parts(tmp_path / f".run.tmp-{pid}") >= 4
    )
    [partial] = leftovers(tmp_path)
    done_before = _parts(tmp_path / partial)
    assert 4 <= done_before < 12
    assert not out.exists()  # nothing half-written at the run's path
    plain = subprocess.run(_worker(tmp_path, "new"), capture_output=True, text=True)
    assert plain.returncode == 2 and "interrupted run" in plain.stderr
    subprocess.run(_worker(tmp_path, "resume"), check=True)
    _whole_run(out)
    assert leftovers(tmp_path) == [] and not (tmp_path / ".run.lock").exists()
    started = log.read_text().split()
    # The second run computed exactly the parts the first had not written, each once.
    remaining = [f"{k:05d}" for k in range(done_before, 12)]
    assert started[-len(remaining) :] == remaining
    assert len(started) in (12, 13)  # the killed run may have started one part it never wrote


@pytest.mark.slow  # kills real rotelab processes at several points
def test_sigkill_during_force_leaves_the_old_run_or_the_new_one_whole(tmp_path):
    out = tmp_path / "run"
    subprocess.run(_worker(tmp_path, "new", 0.0), check=True)
    old, old_pid = digest(out), _whole_run(out)
    kill_points = [
        lambda pid: (tmp_path / f".run.tmp-{pid}").exists(),  # just started
        lambda pid: _parts(tmp_path / f".run.tmp-{pid}") >= 6,  # halfway
        lambda pid: (tmp_path / f".run.tmp-{pid}" / "summary.json").exists(),  # about to commit
    ]
    writers = []
    for ready in kill_points:
        killed = kill_when(_worker(tmp_path, "force", 0.05), ready)
        assert killed or ready is kill_points[-1]  # the last point may come too late to catch
        writers.append(_whole_run(out))  # whole, whoever wrote it
        assert (writers[-1] == old_pid) == (digest(out) == old)
    subprocess.run(_worker(tmp_path, "force", 0.0), check=True)
    assert _whole_run(out) not in (old_pid, *writers)
    assert leftovers(tmp_path) == []  # the killed runs' temporary directories are gone


@pytest.mark.slow  # kills real rotelab processes at several points
def test_two_writers_at_once_the_second_is_refused_with_one_line(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_worker(tmp_path, "new", 0.8))
    deadline = time.monotonic() + 120
    while not (tmp_path / f".run.tmp-{first.pid}").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    for mode in ("force", "resume"):
        second = subprocess.run(_worker(tmp_path, mode), capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (
            f"error: {out} is being written by another rotelab process (pid {first.pid}); "
            "wait for it to finish or choose another output"
        )
    assert first.wait() == 0
    assert _whole_run(out) == first.pid


# ------------------------------------------------------------------ outputs that cannot be made
def test_check_creatable_refuses_what_cannot_be_made_and_leaves_nothing(tmp_path):
    from rotelab.runs import check_creatable

    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    deep = tmp_path / "a" / "b" / "run"
    check_creatable(deep)  # missing parents are fine: they are made when the run starts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the probe is gone
    for bad, message in [(afile / "run", "is not a directory"), (Path("."), "names no directory"),
                         (tmp_path / "..", "names no directory")]:  # fmt: skip
        with pytest.raises(RotelabError, match=message):
            check_creatable(bad)
    if Path("/proc/self").exists():  # root passes permission bits; /proc refuses even root
        with pytest.raises(RotelabError, match="nothing can be created in /proc"):
            check_creatable("/proc/rotelab-run/x")

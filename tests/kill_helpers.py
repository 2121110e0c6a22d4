"""Kill tests: run a command in a subprocess, SIGKILL it when a file appears, digest outputs."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: What rotelab leaves beside an output while writing it (see rotelab.runs).
LEFTOVER = re.compile(r"\..+\.(tmp|old)-\d+")


def rotelab(*args: str) -> list[str]:
    """The command line of the real CLI, as a user runs it."""
    return [sys.executable, "-m", "rotelab", *args]


def kill_when(cmd: Sequence[str], ready: Callable[[int], bool], timeout: float = 300) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``ready(pid)`` holds (polled every millisecond).

    Returns whether it was killed (False: it exited first, so there was nothing to kill). The
    command runs on one thread: rotelab sizes its threads by the processes working beside it, and
    a float statistic reduced on another thread count may differ in its last bit, which would make
    two whole outputs digest differently.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty command never blocks
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if ready(proc.pid):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return True
                if time.monotonic() > deadline:
                    raise AssertionError(f"{cmd} never reached the kill point")
                time.sleep(0.001)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        err.seek(0)
        assert proc.returncode == 0, err.read().decode()
    return False


def digest(path: Path) -> str:
    """A hash of every file's name and bytes under ``path``."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def leftovers(parent: Path) -> list[str]:
    """Temporary and moved-aside directories in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if LEFTOVER.fullmatch(p.name))


def assert_whole_after_kills(
    cmd: Sequence[str], out: Path, kill_points: Sequence[Callable[[int], bool]], old: str
) -> None:
    """Kill ``cmd`` at each point, then run it uninterrupted: after every kill ``out`` holds the
    old output (digest ``old``) or the new one, whole; never neither, never a half."""
    seen, killed = [], []
    for ready in kill_points:
        killed.append(kill_when(cmd, ready))
        seen.append(digest(out))
    assert killed[0]  # the later points may come too late to catch: it then finished whole
    kill_when(cmd, lambda pid: False)  # the same command, uninterrupted
    new = digest(out)
    assert new != old and set(seen) <= {old, new}

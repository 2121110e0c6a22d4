"""Run directories and every other output: written beside, renamed into place when whole.

Layout of a run directory::

    config.json          all arguments, rotelab version, seed, library versions, device, git hash
    results/<table>/part-<key>.parquet   results written in parts as work proceeds
    summary.json         the headline numbers (written last)
    report.html          where the command makes one

A run killed midway and started again with the same arguments and ``resume=True`` skips the parts
already on disk, so it ends with exactly the rows of an uninterrupted run. Every file is written to
a temporary name and renamed into place, so a part is either whole or absent.

Every output directory (run directories, edited models, organisms) goes through
:class:`OutputDir`: it is written in a hidden sibling ``.NAME.tmp-PID`` and renamed to ``NAME``
only when complete, so a killed writer leaves the old output or the new one, whole, never a
half. Around that:

- one writer per output: ``.NAME.lock`` beside it holds the writer's pid under an exclusive
  ``flock``; another writer is refused with one line naming that pid. The kernel drops the lock
  when its holder dies, so a lock file left by a killed writer is simply taken over;
- ``--force`` replaces the old output only at the end, and only an output of the kind the writer
  makes that rotelab wrote (``owned``): a directory rotelab did not create is never emptied. The
  new output and the old one swap places in one step (Linux ``renameat2``), then the old one is
  deleted; where that is not available the old one is renamed aside and the new one renamed in,
  and a kill between the two leaves the old one aside, which the next write there puts back;
- an output equal to, inside, or containing one of the command's inputs is refused, ``--force``
  or not;
- what dead writers left in the parent directory (``.X.tmp-PID``, ``.X.old-PID``) is removed (or
  put back, see above) when rotelab next writes there; a run's unfinished temporary directory is
  kept for its ``--resume`` (see :meth:`Run.create`).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.machine import machine_info, pid_alive
from rotelab.summaries import SCHEMAS, Summary

__all__ = [
    "OutputDir",
    "Run",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_creatable",
    "check_output",
    "environment",
    "is_run_dir",
    "read_json",
    "read_table",
    "to_jsonable",
]

_IGNORED_CONFIG_KEYS = {"resume", "force", "quiet", "json", "json_out", "progress"}


def to_jsonable(value: Any) -> Any:
    """Turn paths, enums, numpy scalars and arrays into plain JSON values."""
    import enum

    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


def environment(device: str | None = None) -> dict:
    """Versions and machine facts recorded beside every result."""
    import numpy
    import torch

    import rotelab

    machine = machine_info("cpu")
    env = {
        "rotelab": rotelab.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_count": os.cpu_count(),
        **{
            k: machine[k]
            for k in (
                "cpu",
                "cpu_capability",
                "bf16_native_cpu",
                "threads",
                "usable_cores",
                "precision_auto",
            )
        },  # fmt: skip
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": _git_hash(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return env


def _git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ------------------------------------------------------------------------------- output directories
#: A writer's temporary sibling (``tmp``) or an old output moved aside while replaced (``old``).
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)")

#: Which inputs an output may not touch, in the words of the refusal.
_OVERLAP = ("is", "is inside", "contains")


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def _occupied(path: Path) -> bool:
    """Something is there that replacing would lose (an empty directory loses nothing)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return True
    return path.is_dir() and any(path.iterdir())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; ``False`` where the system or file system cannot.

    Linux's ``renameat2(RENAME_EXCHANGE)``: unlike a rename aside and a rename in, no moment
    exists at which neither is in place.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _refuse_inputs(target: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    out = target.expanduser().resolve()
    for given in inputs:
        if not given or not Path(given).expanduser().exists():
            continue  # a hub id, a named model, or nothing
        inp = Path(given).expanduser().resolve()
        relation = 0 if out == inp else 1 if inp in out.parents else 2 if out in inp.parents else -1
        if relation >= 0:
            raise RotelabError(
                f"the output {target} {_OVERLAP[relation]} the input {given}, which this command "
                "reads; choose another output"
            )


def check_creatable(target: str | os.PathLike, *, shown: str | None = None) -> None:
    """Raise a one-line :class:`RotelabError` when ``target`` could not be created.

    The output is written in a sibling of ``target`` and renamed into place, so what must be
    writable is the parent directory, or, where that does not exist yet, its first existing
    ancestor (the directories in between are created): it must be a directory in which a
    directory can be made. That is tried (a hidden directory made and removed at once), because
    permission bits do not tell: root passes ``os.access`` on a read-only directory, and
    ``/proc`` or ``/sys`` refuse what their modes allow. ``shown`` names the output in the
    message (default: ``target``).
    """
    target = Path(target)
    shown = shown or str(target)
    if target.name in ("", ".", ".."):
        raise RotelabError(
            f"the output {target} names no directory of its own; give the path of a new directory"
        )
    ancestor = Path(os.path.abspath(target.expanduser())).parent
    while not ancestor.exists() and not ancestor.is_symlink():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RotelabError(
            f"cannot write the output {shown}: {ancestor} is not a directory; choose another output"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rotelab-probe-", dir=ancestor))
    except OSError as exc:
        raise RotelabError(
            f"cannot write the output {shown}: nothing can be created in {ancestor} "
            f"({exc.strerror or exc}); choose another output"
        ) from None


def check_output(
    target: str | os.PathLike | None,
    *,
    replace: bool,
    owned: Callable[[Path], bool],
    kind: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    hint: str = "pass --force to replace it",
) -> None:
    """Raise a one-line :class:`RotelabError` when ``target`` may not be written.

    Args:
        target: the output directory; ``None``, a run's default (``runs/<command>-<time>`` in
            the working directory), of which only that it can be created is checked.
        replace: an existing output of this kind may be replaced (``--force``).
        owned: whether an existing directory is an output of this kind that rotelab wrote; one
            that is not is never replaced.
        kind: what ``owned`` recognises, for the message (``"a rotelab run (config.json)"``).
        inputs: paths the command reads; the output may not be, be inside, or contain one.
        hint: what to do when ``target`` exists and ``replace`` is false.
    """
    if target is None:
        check_creatable(Path("runs") / "run", shown="runs/ (the default without --out)")
        return
    target = Path(target)
    _refuse_inputs(target, inputs)
    check_creatable(target)
    if not _occupied(target):
        return
    if not target.is_dir():
        raise RotelabError(f"{target} exists and is not a directory; choose another output")
    if not owned(target):
        raise RotelabError(
            f"{target} already exists and is not {kind}; rotelab replaces only what it wrote, "
            "so choose another output"
        )
    if not replace:
        raise RotelabError(f"output directory {target} already exists; {hint}")


class _Lock:
    """``.NAME.lock`` beside an output: an exclusive ``flock`` on a file holding the holder's
    pid."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.with_name(f".{target.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise RotelabError(
                    f"{self.target} is being written by another rotelab process "
                    f"(pid {holder or 'unknown'}); wait for it to finish or choose another output"
                ) from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            # The holder released (and unlinked) the file between our open and flock.
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked, so no one locks a dead file
            os.close(self._fd)
            self._fd = None


def _tidy(target: Path, *, keep_own_runs: bool) -> None:
    """Remove what dead writers left beside ``target`` (whose lock the caller holds).

    Leftovers of ``target`` itself are all dead (every writer of it holds the lock); an ``old``
    one whose output is missing was moved aside by a replacement killed between its two renames,
    and is put back. Other names' leftovers go when their pid is gone, except an unfinished run,
    kept for its ``--resume`` (and, with ``keep_own_runs``, the caller's own).
    """
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        m = _LEFTOVER.fullmatch(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue  # rotelab's leftovers are directories; a file of that name is someone else's
        own = m["name"] == target.name
        if not own and pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old":
            final = entry.with_name(m["name"])
            if not final.exists() and not final.is_symlink():
                entry.rename(final)
                continue
        elif is_run_dir(entry) and (keep_own_runs or not own):
            continue
        _remove(entry)


def _relocate(tree: Path, name: str) -> None:
    """Point paths recorded while ``tree`` was a temporary sibling at its final name ``name``.

    A command records paths of what it wrote (an organism's ``describe.json``, a demo's nested
    runs and models) while writing in ``.NAME.tmp-PID``; JSON files holding such a path are
    rewritten before the rename. Parquet tables are left as written.
    """
    needle = f".{name}.tmp-"
    pattern = re.compile(r"(?<![^/\\])" + re.escape(needle) + r"\d+(?![\w.-])")

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return pattern.sub(name, value)
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    for path in tree.rglob("*.json"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if needle not in text and json.dumps(needle)[1:-1] not in text:
            continue
        obj = json.loads(text)
        fixed = fix(obj)
        if fixed != obj:
            atomic_write_json(path, fixed)


class OutputDir:
    """An output directory written in a temporary sibling and renamed into place when whole.

    Open with :meth:`open` (checks, lock, tidying), write in :attr:`path`, then :meth:`commit`
    (or :meth:`discard`). As a context manager it starts a fresh temporary directory, commits when
    the block succeeds and discards on any exception, so the lock is always released.

    Example:
        >>> output = OutputDir.open(out, replace=force, owned=is_model, kind="a model")
        >>> with output as tmp:  # doctest: +SKIP
        ...     lm.save(tmp)
    """

    def __init__(self, target: Path, lock: _Lock) -> None:
        self.target = target
        self.path: Path | None = None
        self._lock = lock

    @classmethod
    def open(
        cls,
        target: str | os.PathLike,
        *,
        replace: bool,
        owned: Callable[[Path], bool],
        kind: str,
        inputs: Iterable[str | os.PathLike | None] = (),
        hint: str = "pass --force to replace it",
        keep_own_runs: bool = False,
    ) -> OutputDir:
        """Check ``target`` (see :func:`check_output`), lock it and tidy its parent directory.

        ``keep_own_runs`` keeps unfinished runs of ``target`` for the caller (:class:`Run`) to
        resume or discard.
        """
        target = Path(target)
        _refuse_inputs(target, inputs)
        check_creatable(target)
        lock = _Lock(target)
        lock.acquire()
        try:
            _tidy(target, keep_own_runs=keep_own_runs)
            check_output(target, replace=replace, owned=owned, kind=kind, hint=hint)
        except BaseException:
            lock.release()
            raise
        return cls(target, lock)

    def leftovers(self) -> list[Path]:
        """Temporary directories of this output left by dead writers, newest first."""
        found = [
            p for p in self.target.parent.iterdir()
            if (m := _LEFTOVER.fullmatch(p.name)) and m["name"] == self.target.name
            and m["kind"] == "tmp" and p != self.path and p.is_dir() and not p.is_symlink()
        ]  # fmt: skip
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def begin(self, adopt: Path | None = None) -> Path:
        """Start the temporary directory, fresh or continuing a dead writer's ``adopt``."""
        self.path = _sibling(self.target, "tmp")
        for old in self.leftovers() + [self.path]:
            if old != adopt:
                _remove(old)
        if adopt is None:
            self.path.mkdir()
        elif adopt != self.path:
            adopt.rename(self.path)
        return self.path

    def in_place(self) -> Path:
        """Write in the existing output itself (a resumed run), under the lock."""
        self.path = self.target
        return self.path

    def commit(self) -> Path:
        """Rename the temporary directory into place, replacing the old output; unlock."""
        try:
            if self.path is not None and self.path != self.target:
                _relocate(self.path, self.target.name)
                if not (self.target.exists() or self.target.is_symlink()):
                    self.path.rename(self.target)
                elif _exchange(self.path, self.target):
                    _remove(self.path)  # now the old output
                else:
                    aside = _sibling(self.target, "old")
                    self.target.rename(aside)
                    self.path.rename(self.target)
                    _remove(aside)
            self.path = self.target
        finally:
            self.release()
        return self.target

    def discard(self) -> None:
        """Delete the temporary directory (the old output stays); unlock."""
        try:
            if self.path is not None and self.path != self.target:
                _remove(self.path)
        finally:
            self.release()

    def release(self) -> None:
        """Unlock, leaving the temporary directory for a later ``--resume``."""
        self._lock.release()

    def __enter__(self) -> Path:
        try:
            return self.begin()
        except BaseException:
            self.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (its ``config.json`` names a rotelab command)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "command" in config


# ----------------------------------------------------------------------------------------- runs
class Run:
    """A run directory. Create with :meth:`Run.create`; use as a context manager.

    The directory appears at its path when the ``with`` block ends without an exception; inside
    the block :attr:`path` is where to write (see :meth:`create`). Leaving the block on a
    :class:`RotelabError` before any result part was written removes what this run wrote, so bad
    input leaves nothing behind; any other exit keeps it for ``--resume``.
    """

    def __init__(
        self, path: Path, config: dict, *, created: bool, output: OutputDir | None = None
    ) -> None:
        self.path = path
        self.config = config
        self._created = created
        self._output = output

    @classmethod
    def check(
        cls,
        out: str | os.PathLike | None,
        *,
        resume: bool = False,
        force: bool = False,
        inputs: Iterable[str | os.PathLike | None] = (),
    ) -> None:
        """What :meth:`create` would refuse about ``out``, checked before any work (nothing is
        left behind); ``None`` checks that the default ``runs/`` can be created."""
        if resume and force:
            raise RotelabError("use either --resume or --force, not both")
        check_output(out, **_run_output(resume, force, inputs))

    @classmethod
    def create(
        cls,
        out: str | os.PathLike | None,
        command: str,
        config: dict,
        *,
        resume: bool = False,
        force: bool = False,
        device: str | None = None,
        inputs: Iterable[str | os.PathLike | None] = (),
    ) -> Run:
        """Open a run directory for ``command`` with the given arguments.

        A fresh run (and a ``force`` one) writes in ``.NAME.tmp-PID`` beside ``out`` and is
        renamed to ``out`` when the ``with`` block ends, replacing the old run only then. A run
        killed before that leaves its temporary directory: ``resume`` adopts it (renames it to its
        own) and continues there, ``force`` discards it, and a plain run is refused. ``resume`` of
        a run already at ``out`` continues in place: its parts are whole files, and the lock keeps
        any other writer out meanwhile.

        Args:
            out: the directory; ``None`` makes ``runs/<command>-<UTC time>`` in the working dir.
            command: the command's name, recorded in ``config.json``.
            config: every argument of the command (JSON-able after :func:`to_jsonable`).
            resume: continue a run with the same arguments, skipping parts already written.
            force: replace an existing run directory.
            inputs: paths the command reads; ``out`` may not be, be inside, or contain one.
        """
        if resume and force:
            raise RotelabError("use either --resume or --force, not both")
        if out is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
            out = Path("runs") / f"{command}-{stamp}"
        path = Path(out)
        args = {k: v for k, v in to_jsonable(config).items() if k not in _IGNORED_CONFIG_KEYS}
        record = {"command": command, "arguments": args}
        output = OutputDir.open(path, **_run_output(resume, force, inputs), keep_own_runs=True)
        try:
            if resume and _occupied(path):
                old = _resumable(path, record)
                return cls(output.in_place(), old, created=False, output=output)
            partial = next(iter(output.leftovers()), None)
            if partial is not None and resume:
                old = _resumable(partial, record)
                return cls(output.begin(adopt=partial), old, created=False, output=output)
            if partial is not None and not force:
                raise RotelabError(
                    f"an interrupted run of {path} is in {partial}; pass --resume to continue it "
                    "or --force to start over"
                )
            tmp = output.begin()
            record["environment"] = environment(device)
            atomic_write_json(tmp / "config.json", record)
        except BaseException:
            output.release()
            raise
        return cls(tmp, record, created=True, output=output)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._output is None:
            return
        if exc_type is None:
            self.path = self._output.commit()
        elif (
            issubclass(exc_type, RotelabError)
            and self._created
            and not any((self.path / "results").rglob("*.parquet"))
        ):
            self._output.discard()
        else:
            self._output.release()

    # ---------------------------------------------------------------- results
    def _part_path(self, table: str, key: str) -> Path:
        return self.path / "results" / table / f"part-{key}.parquet"

    def has_part(self, table: str, key: str) -> bool:
        return self._part_path(table, key).exists()

    def write_part(self, table: str, key: str, frame: pd.DataFrame) -> Path:
        """Write one part of a results table atomically (same key = same rows on resume)."""
        import io

        buf = io.BytesIO()
        frame.reset_index(drop=True).to_parquet(buf, index=False)
        target = self._part_path(table, key)
        atomic_write_bytes(target, buf.getvalue())
        return target

    def read_table(self, table: str) -> pd.DataFrame:
        """All parts of a table, concatenated in part-key order."""
        return read_table(self.path, table)

    def write_table(self, table: str, frame: pd.DataFrame) -> Path:
        """Write a whole table as a single part."""
        return self.write_part(table, "00000", frame)

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.path / name
        atomic_write_json(target, obj)
        return target

    def write_summary(self, summary: dict | Summary) -> Path:
        """Write ``summary.json``. A command with a schema in :data:`rotelab.summaries.SCHEMAS`
        writes only a summary its schema reads (what the report and other readers rely on), so a
        writer that drops a field fails here, not in a reader later."""
        if isinstance(summary, Summary):
            summary = summary.to_dict()
        schema = SCHEMAS.get(str(self.config.get("command")))
        if schema is not None:
            summary = schema.from_dict(to_jsonable(summary), where="summary").to_dict()
        return self.write_json("summary.json", summary)

    def summary(self) -> dict | None:
        return read_json(self.path / "summary.json")


def _run_output(resume: bool, force: bool, inputs) -> dict[str, Any]:
    """The output rules of a run directory (shared by :meth:`Run.check` and :meth:`Run.create`)."""
    return {
        "replace": force or resume, "owned": is_run_dir, "kind": "a rotelab run (config.json)",
        "inputs": inputs, "hint": "pass --resume to continue it or --force to replace it",
    }  # fmt: skip


def read_table(run_dir: str | os.PathLike, table: str) -> pd.DataFrame:
    """All parts of a run directory's results table, in part-key order (empty if none)."""
    parts = sorted((Path(run_dir) / "results" / table).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def read_json(path: Path) -> dict | None:
    """A run file's JSON, ``None`` when the file is missing; a clear error when it is corrupt."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise RotelabError(
            f"{path} is not valid JSON ({exc}); rerun the command that wrote it"
        ) from exc


def _resumable(path: Path, record: dict) -> dict:
    """The config of the run at ``path``, when it ran the same command with the same arguments."""
    old = read_json(path / "config.json")
    if old is None:
        raise RotelabError(f"{path} is not a rotelab run (no config.json); cannot resume")
    args = record["arguments"]
    if old.get("command") != record["command"] or old.get("arguments") != args:
        changed = sorted(
            k
            for k in set(args) | set(old.get("arguments", {}))
            if args.get(k) != old.get("arguments", {}).get(k)
        )
        raise RotelabError(
            f"cannot resume {path}: arguments differ ({', '.join(changed) or 'command'}); "
            "rerun with the original arguments or use a new --out"
        )
    return old

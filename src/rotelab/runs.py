"""Run directories: config, environment, results as Parquet parts, summary, resume.

Layout of a run directory::

    config.json          all arguments, rotelab version, seed, library versions, device, git hash
    results/<table>/part-<key>.parquet   results written in parts as work proceeds
    summary.json         the headline numbers (written last)
    report.html          where the command makes one

A run killed midway and started again with the same arguments and ``resume=True`` skips the parts
already on disk, so it ends with exactly the rows of an uninterrupted run. Every file is written to
a temporary name and renamed into place, so a part is either whole or absent.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError

__all__ = [
    "Run",
    "atomic_write_bytes",
    "atomic_write_json",
    "environment",
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
    from rotelab.machine import machine_info

    machine = machine_info("cpu")
    env = {
        "rotelab": rotelab.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_count": os.cpu_count(),
        **{k: machine[k] for k in ("cpu", "cpu_capability", "bf16_native_cpu", "threads",
                                   "usable_cores", "precision_auto")},  # fmt: skip
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


class Run:
    """A run directory. Create with :meth:`Run.create`; use as a context manager.

    Leaving the ``with`` block on a :class:`RotelabError` before any result part was written
    removes a directory this run created, so bad input leaves nothing behind.
    """

    def __init__(self, path: Path, config: dict, *, created: bool) -> None:
        self.path = path
        self.config = config
        self._created = created

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
    ) -> Run:
        """Open a run directory for ``command`` with the given arguments.

        Args:
            out: the directory; ``None`` makes ``runs/<command>-<UTC time>`` in the working dir.
            command: the command's name, recorded in ``config.json``.
            config: every argument of the command (JSON-able after :func:`to_jsonable`).
            resume: continue a run with the same arguments, skipping parts already written.
            force: replace an existing directory.
        """
        if resume and force:
            raise RotelabError("use either --resume or --force, not both")
        if out is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
            out = Path("runs") / f"{command}-{stamp}"
        path = Path(out)
        args = {k: v for k, v in to_jsonable(config).items() if k not in _IGNORED_CONFIG_KEYS}
        record = {"command": command, "arguments": args}
        created = False
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            if not path.is_dir():
                raise RotelabError(f"{path} exists and is not a directory; choose another --out")
            if resume:
                old = read_json(path / "config.json")
                if old is None:
                    raise RotelabError(f"{path} is not a rotelab run (no config.json); cannot resume")
                if old.get("command") != command or old.get("arguments") != args:
                    changed = sorted(
                        k
                        for k in set(args) | set(old.get("arguments", {}))
                        if args.get(k) != old.get("arguments", {}).get(k)
                    )
                    raise RotelabError(
                        f"cannot resume {path}: arguments differ ({', '.join(changed) or 'command'}); "
                        "rerun with the original arguments or use a new --out"
                    )
                return cls(path, old, created=False)
            if not force:
                raise RotelabError(
                    f"output directory {path} already exists; pass --resume to continue it "
                    "or --force to replace it"
                )
            shutil.rmtree(path)
        if not path.exists():
            created = True
        path.mkdir(parents=True, exist_ok=True)
        record["environment"] = environment(device)
        atomic_write_json(path / "config.json", record)
        return cls(path, record, created=created)

    # context manager: clean up a fresh run that failed on user input before producing anything
    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, RotelabError) and self._created:
            results = self.path / "results"
            if not results.exists() or not any(results.rglob("*.parquet")):
                shutil.rmtree(self.path, ignore_errors=True)

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

    def write_summary(self, summary: dict) -> Path:
        return self.write_json("summary.json", summary)

    def summary(self) -> dict | None:
        return read_json(self.path / "summary.json")


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

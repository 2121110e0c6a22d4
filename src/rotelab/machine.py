"""What this machine does natively: device, precision and thread count, decided at run time.

rotelab was first tuned on a CPU with native bfloat16 (AVX-512 BF16). On a CPU without it (AVX2
only, common on laptops, AMD servers and CI runners) bf16 matmuls are emulated and run about 85x
slower than fp32, so a bf16 default there turns minutes into hours. Every place that could use
bf16 therefore asks this module, and nothing assumes the CPU it was tuned on.

- **Precision.** ``auto`` means bf16 autocast for training only where bf16 is native: a GPU that
  supports it, or a CPU whose vector capability (``torch.backends.cpu.get_cpu_capability()``) and
  instruction flags allow it *and* whose measured bf16 GEMM is at least as fast as fp32. The probe
  takes well under a second and is cached per machine (CPU model, flags, torch version) in
  ``$ROTELAB_HOME/machine.json``. ``ROTELAB_PRECISION=fp32|bf16`` forces what ``auto`` resolves
  to (CI uses it to exercise both paths on one machine). An explicit bf16 request on a machine
  where it is emulated still works, after one warning line.
- **Threads.** rotelab never raises torch's thread count and never touches it when the user chose
  one (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, or ``torch.set_num_threads`` after rotelab's).
  It lowers it to this process's share of the cores it may use (CPU affinity and the cgroup CPU
  quota, split evenly among the rotelab processes working on the machine at the moment), since
  torch's default counts the host's cores and several processes on a 2-core container then fight
  over threads (60x slower was seen; two tiny builds at once took 4x one alone here). Training
  gave bitwise the same weights on 1 and 2 threads here, but a float reduction may differ in its
  last bit between thread counts: ``OMP_NUM_THREADS`` pins the count for bit-exact reruns.

Example:
    >>> from rotelab.machine import describe_machine, resolve_precision
    >>> resolve_precision("auto")  # doctest: +SKIP
    <Precision.bf16: 'bf16'>
    >>> describe_machine()  # doctest: +SKIP
    'cpu AVX512 (AMD EPYC ...) · bf16 native (probe 2.0x fp32) · 2 threads of 2 usable cores ...'
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path

import torch

from rotelab.errors import RotelabError
from rotelab.paths import rotelab_home

__all__ = [
    "PRECISION_ENV",
    "BF16Probe",
    "Precision",
    "autocast",
    "autocast_dtype",
    "bf16_native",
    "bf16_probe",
    "configure_threads",
    "cpu_capability",
    "describe_machine",
    "machine_info",
    "parse_precision",
    "pid_alive",
    "resolve_device",
    "resolve_precision",
    "one_thread_workers",
    "share_threads",
    "usable_cores",
    "warn_if_emulated",
]

#: Environment variable that forces what ``auto`` precision resolves to (``fp32`` or ``bf16``).
PRECISION_ENV = "ROTELAB_PRECISION"
#: Environment variables through which a user chooses the thread count; rotelab then keeps it.
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Vector capabilities (torch's names) on which bf16 cannot be native: skip the probe there.
_NO_BF16_CAPABILITIES = {"DEFAULT", "NO AVX", "AVX", "AVX2", "ZVECTOR", "VSX"}
#: Instruction-set flags (Linux /proc/cpuinfo) that make bf16 matmuls native on x86.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_PROBE_N = 256  # 256^3 GEMMs: ~1 ms in fp32, a few ms native bf16, ~40 ms emulated
_PROBE_VERSION = 1


class Precision(str, Enum):
    """Training precision: ``auto`` (bf16 autocast where native), ``fp32`` or ``bf16``."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


_ALIASES = {"float32": "fp32", "bfloat16": "bf16"}


def parse_precision(value: str | Precision) -> Precision:
    """``value`` as a :class:`Precision`; a one-line error naming the valid ones otherwise."""
    if isinstance(value, Precision):
        return value
    v = _ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
    try:
        return Precision(v)
    except ValueError:
        raise RotelabError(f"unknown precision {value!r}; use one of: auto, fp32, bf16") from None


# ------------------------------------------------------------------------------------ device
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU. A device this machine lacks is a user error."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise RotelabError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RotelabError(
                f"--device {device} asks for CUDA, but this machine has no usable CUDA GPU; "
                "use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RotelabError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RotelabError(f"--device {device}: MPS is not available here; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise RotelabError(f"unsupported device {device!r}; use auto, cpu or cuda[:N]")
    return dev


# -------------------------------------------------------------------------------------- cpu
def cpu_capability() -> str:
    """torch's vector capability of this CPU (``AVX2``, ``AVX512``, ``DEFAULT``, ``SVE256``...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old torch
        return "unknown"


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, instruction flags) from /proc/cpuinfo; ``platform`` elsewhere."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 CFS quota), ``None`` if unlimited."""
    root = Path(root)
    candidates = [(root / "cpu.max", None)] + [
        (root / d / "cpu.cfs_quota_us", root / d / "cpu.cfs_period_us")
        for d in ("cpu", "cpu,cpuacct")
    ]
    for quota_file, period_file in candidates:
        try:
            text = quota_file.read_text().split()
            if period_file is None:
                quota, period = text[0], text[1]
            else:
                quota, period = text[0], period_file.read_text().split()[0]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            q, p = float(quota), float(period)
        except ValueError:
            continue
        if q > 0 and p > 0:
            return q / p
    return None


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _threads_chosen_by_user() -> str | None:
    for name in THREAD_ENVS:
        if os.environ.get(name, "").strip():
            return name
    return None


@dataclass
class _ThreadState:
    baseline: int | None = None  # min(torch's count at first use, usable cores)
    last_set: int | None = None  # what rotelab last set; a different count means someone else did
    user_owned: bool = False  # the user changed the count: rotelab no longer touches it
    last_share: float = 0.0  # monotonic time of the last share_threads() check
    registered: bool = False
    workers: bool = False  # within one_thread_workers(): the count is 1 on purpose


_threads = _ThreadState()
#: A registered process that has not checked in for this long is idle and does not count.
ACTIVE_SECONDS = 10.0


def _registry_dir() -> Path:
    """Machine-wide (not per ``$ROTELAB_HOME``): one file per rotelab process doing torch work."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"rotelab-active-{uid}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _unregister() -> None:
    with contextlib.suppress(OSError):
        (_registry_dir() / str(os.getpid())).unlink()


def _active_processes(register: bool = True) -> int:
    """rotelab processes on this machine working right now, this one included (>= 1).

    A working process marks itself active by touching ``<registry>/<pid>`` (``register``; a mere
    query such as ``rotelab machine`` does not); files of dead processes are removed, and a process
    that has not checked in for :data:`ACTIVE_SECONDS` (an idle notebook holding a model, say)
    does not count.
    """
    d = _registry_dir()
    me = str(os.getpid())
    try:
        if register:
            d.mkdir(parents=True, exist_ok=True)
            (d / me).touch()
            if not _threads.registered:
                _threads.registered = True
                atexit.register(_unregister)
        now = time.time()
        n = 1  # this process
        for f in d.iterdir() if d.is_dir() else ():
            try:
                if f.name == me:
                    continue
                if not pid_alive(int(f.name)):
                    f.unlink()
                elif now - f.stat().st_mtime <= ACTIVE_SECONDS:
                    n += 1
            except (ValueError, OSError):
                continue
        return n
    except OSError:  # no writable temp dir: size for this process alone
        return 1


def configure_threads(*, register: bool = True) -> int:
    """Size torch's thread pool to this process's share of the cores; return the count in use.

    The cores are those this process may use (:func:`usable_cores`), shared evenly among the
    rotelab processes working on the machine at the moment, so two builds on two cores each run
    one thread instead of fighting over four. Never above torch's own count; nothing changes when
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set, or once the user set a count of their own
    (``torch.set_num_threads``) after rotelab did. ``register=False`` only sizes the pool, without
    counting this process as one that works (for queries).
    """
    st = _threads
    current = torch.get_num_threads()
    if st.workers or st.user_owned or _threads_chosen_by_user() is not None:
        return current
    if st.last_set is not None and current != st.last_set:
        st.user_owned = True
        return current
    if st.baseline is None:
        st.baseline = min(current, usable_cores())
    target = max(1, st.baseline // _active_processes(register))
    if target != current:
        torch.set_num_threads(target)
    st.last_set = target
    return target


@contextlib.contextmanager
def one_thread_workers():
    """Within ``with``, torch runs on one thread, for Python threads that each run it (as many
    as the count this returns, torch's count on entry); the count is restored on exit, and
    :func:`configure_threads` leaves it alone meanwhile (nothing is taken for the user's own)."""
    st = _threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    st.workers = True
    try:
        yield threads
    finally:
        st.workers = False
        torch.set_num_threads(threads)


def share_threads() -> None:
    """:func:`configure_threads` at most once a second: called in long loops (training steps,
    scoring batches), so a process gives up cores when another starts and takes them back after."""
    now = time.monotonic()
    if now - _threads.last_share >= 1.0:
        _threads.last_share = now
        configure_threads()


# -------------------------------------------------------------------------------- bf16 probe
@dataclass(frozen=True)
class BF16Probe:
    """A measured bf16-vs-fp32 GEMM comparison on this CPU (one thread, ``n``-square)."""

    cpu: str
    capability: str
    hardware_flag: bool  # avx512_bf16 / amx_bf16 present (x86), or unknown-but-plausible
    n: int
    fp32_gflops: float
    bf16_gflops: float
    native: bool

    @property
    def speedup(self) -> float:
        """bf16 GEMM throughput over fp32's (about 2 where native, about 0.01 where emulated)."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops else 0.0


def _machine_key() -> str:
    model, flags = _cpuinfo()
    blob = json.dumps(
        [model, sorted(flags), cpu_capability(), torch.__version__, _PROBE_VERSION]
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _gemm_gflops(dtype: torch.dtype, n: int) -> float:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    a @ b  # warm-up: first-call dispatch and packing
    best = float("inf")
    deadline = time.perf_counter() + 0.5
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:  # emulated bf16: one slow rep is enough to tell
            break
    return 2 * n**3 / best / 1e9


def _measure_probe() -> BF16Probe:
    model, flags = _cpuinfo()
    capability = cpu_capability()
    if flags and platform.machine().lower() in ("x86_64", "amd64"):
        hardware = any(f in flags for f in _BF16_FLAGS)
    else:  # no flags to read (or not x86): let the measurement decide
        hardware = capability.upper() not in _NO_BF16_CAPABILITIES
    if capability.upper() in _NO_BF16_CAPABILITIES:
        hardware = False
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: independent of what else the machine is doing
    try:
        fp32 = _gemm_gflops(torch.float32, _PROBE_N)
        bf16 = _gemm_gflops(torch.bfloat16, _PROBE_N) if hardware else 0.0
    finally:
        torch.set_num_threads(previous)
    return BF16Probe(
        cpu=model, capability=capability, hardware_flag=hardware, n=_PROBE_N,
        fp32_gflops=round(fp32, 2), bf16_gflops=round(bf16, 2),
        native=hardware and bf16 >= fp32,
    )  # fmt: skip


@lru_cache(maxsize=1)
def bf16_probe() -> BF16Probe:
    """This CPU's bf16 probe, measured once per machine and cached in ``$ROTELAB_HOME``."""
    path = rotelab_home() / "machine.json"
    key = _machine_key()
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return BF16Probe(**cached["probe"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    probe = _measure_probe()
    try:  # the cache is an optimisation: an unwritable home only costs the probe next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "probe": asdict(probe)}, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass
    return probe


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matmuls run natively (fast) on ``device``."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type == "mps":
        return False
    return bf16_probe().native


def _forced() -> Precision | None:
    value = os.environ.get(PRECISION_ENV, "").strip()
    if not value:
        return None
    p = parse_precision(value)
    return None if p is Precision.auto else p


def resolve_precision(
    precision: str | Precision = "auto", device: str | torch.device = "cpu", *, warn: bool = True
) -> Precision:
    """``fp32`` or ``bf16``: what ``precision`` means on ``device`` (see the module docstring).

    ``auto`` is bf16 only where bf16 is native, unless ``ROTELAB_PRECISION`` forces a value. An
    explicit ``bf16`` where it is emulated is honoured, with one warning line (``warn=False``
    for code that only records a precision, such as reading an organism's spec).
    """
    p = parse_precision(precision)
    if p is Precision.auto:
        p = _forced() or (Precision.bf16 if bf16_native(device) else Precision.fp32)
    if p is Precision.bf16 and warn:
        warn_if_emulated(device)
    return p


def autocast_dtype(
    precision: str | Precision, device: str | torch.device = "cpu"
) -> torch.dtype | None:
    """The autocast dtype of a training loop (``None``: plain fp32)."""
    return torch.bfloat16 if resolve_precision(precision, device) is Precision.bf16 else None


def autocast(amp: torch.dtype | None, device: str | torch.device = "cpu"):
    """The autocast context of a training step: ``amp`` from :func:`autocast_dtype` (``None``:
    plain fp32, the context does nothing)."""
    dev = torch.device(device) if isinstance(device, str) else device
    return torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None)


_warned: set[str] = set()


def warn_if_emulated(device: str | torch.device = "cpu") -> None:
    """One warning line (once per process) when bf16 is asked for where it is emulated."""
    dev = resolve_device(device)
    if dev.type != "cpu" or "cpu" in _warned:
        return
    probe = bf16_probe()
    if probe.native:
        return
    _warned.add("cpu")
    why = (
        f"bf16 GEMM measured {probe.speedup:.2f}x fp32"
        if probe.bf16_gflops
        else "no AVX-512 BF16/AMX instructions"
    )
    print(
        f"warning: bf16 is emulated on this CPU ({probe.capability}, {why}); it will run many "
        "times slower than fp32. Use --precision auto/fp32 (or --dtype auto/float32).",
        file=sys.stderr,
    )


# ------------------------------------------------------------------------------- reporting
def machine_info(device: str | torch.device = "auto") -> dict:
    """Facts recorded beside results and printed by ``rotelab machine``."""
    dev = resolve_device(device)
    threads = configure_threads(register=False)
    probe = bf16_probe()
    info = {
        "device": dev.type,
        "cpu": probe.cpu,
        "cpu_capability": probe.capability,
        "bf16_native_cpu": probe.native,
        "bf16_probe_speedup": round(probe.speedup, 2),
        "threads": threads,
        "usable_cores": usable_cores(),
        "threads_from": _threads_chosen_by_user()
        or ("torch.set_num_threads" if _threads.user_owned else "rotelab"),
        "active_rotelab_processes": _active_processes(register=False),
        "precision_auto": resolve_precision("auto", dev).value,
        "precision_forced": os.environ.get(PRECISION_ENV) or None,
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["bf16_native_gpu"] = bool(torch.cuda.is_bf16_supported())
    return info


def describe_machine(device: str | torch.device = "auto") -> str:
    """One line naming the CPU capability, threads and the precision ``auto`` chose."""
    m = machine_info(device)
    bf16 = (
        f"bf16 native (probe {m['bf16_probe_speedup']:.1f}x fp32)"
        if m["bf16_native_cpu"]
        else f"bf16 emulated (probe {m['bf16_probe_speedup']:.2f}x fp32)"
        if m["bf16_probe_speedup"]
        else "no native bf16"
    )
    forced = f" (forced by {PRECISION_ENV})" if m["precision_forced"] else ""
    gpu = f" · gpu {m['gpu']}" if "gpu" in m else ""
    return (
        f"cpu {m['cpu_capability']} ({m['cpu']}) · {bf16} · {m['threads']} "
        f"thread{'s' if m['threads'] != 1 else ''} of "
        f"{m['usable_cores']} usable cores ({m['threads_from']}) · precision auto -> "
        f"{m['precision_auto']}{forced}{gpu}"
    )

"""rotelab.machine: precision, device and threads decided by what this machine does natively."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from rotelab import machine
from rotelab.cli import app
from rotelab.errors import RotelabError
from rotelab.lm import resolve_dtype
from rotelab.machine import (
    PRECISION_ENV,
    BF16Probe,
    Precision,
    configure_threads,
    parse_precision,
    resolve_device,
    resolve_precision,
    usable_cores,
)

runner = CliRunner()


def _probe(native: bool) -> BF16Probe:
    return BF16Probe(
        cpu="test cpu", capability="AVX512" if native else "AVX2", hardware_flag=native, n=256,
        fp32_gflops=80.0, bf16_gflops=160.0 if native else 0.0, native=native,
    )  # fmt: skip


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to be a CPU with (True) or without (False) native bf16."""

    def set_kind(native: bool) -> None:
        monkeypatch.setattr(machine, "bf16_probe", lambda: _probe(native))
        monkeypatch.setattr(machine, "_warned", set())

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    return set_kind


@pytest.mark.parametrize("text,want", [("auto", "auto"), ("FP32", "fp32"), ("float32", "fp32"),
                                       ("bf16", "bf16"), ("bfloat16", "bf16")])  # fmt: skip
def test_parse_precision(text, want):
    assert parse_precision(text) is Precision(want)


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(RotelabError, match="auto, fp32, bf16"):
        parse_precision("fp8")


@pytest.mark.parametrize("native,want", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_where_native(cpu_kind, native, want):
    cpu_kind(native)
    assert resolve_precision("auto") is Precision(want)
    assert machine.autocast_dtype("auto") == (torch.bfloat16 if native else None)


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
@pytest.mark.parametrize("native", [True, False])
def test_environment_forces_what_auto_means(cpu_kind, monkeypatch, forced, native):
    cpu_kind(native)
    monkeypatch.setenv(PRECISION_ENV, forced)
    assert resolve_precision("auto") is Precision(forced)
    assert resolve_precision("fp32") is Precision.fp32  # an explicit request wins
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(RotelabError, match="unknown precision"):
        resolve_precision("auto")


def test_explicit_bf16_where_emulated_works_with_one_warning_line(cpu_kind, capsys):
    cpu_kind(False)
    assert resolve_precision("bf16") is Precision.bf16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emulated" in err and "slower" in err
    cpu_kind(True)
    resolve_precision("bf16")
    assert capsys.readouterr().err == ""


def test_reading_a_bf16_organism_spec_does_not_warn(cpu_kind, capsys):
    from rotelab.organism import OrganismSpec

    cpu_kind(False)
    spec = OrganismSpec("tiny", 0, precision="bf16")
    assert OrganismSpec.from_dict(spec.to_dict()).precision == "bf16"
    assert capsys.readouterr().err == ""


def test_scoring_dtype_auto_stays_exact_on_any_cpu(cpu_kind, monkeypatch):
    for native in (True, False):
        cpu_kind(native)
        assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(RotelabError, match="float32, bfloat16"):
        resolve_dtype("half-ish", torch.device("cpu"))


def test_devices_this_machine_lacks_are_user_errors():
    with pytest.raises(RotelabError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RotelabError, match="no usable CUDA"):
            resolve_device("cuda")
        with pytest.raises(RotelabError, match="no usable CUDA"):
            resolve_device("cuda:1")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize(
    "files,want",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota(tmp_path, files, want):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert machine._cgroup_cpu_limit(tmp_path) == want


def test_usable_cores_are_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(machine, "_cgroup_cpu_limit", lambda: 1.5)
    assert usable_cores() == 2
    monkeypatch.setattr(machine, "_cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 4


@pytest.fixture
def threads(monkeypatch, tmp_path):
    """A fresh thread state and process registry; torch's count restored afterwards."""
    before = torch.get_num_threads()
    for name in machine.THREAD_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(machine, "_threads", machine._ThreadState())
    monkeypatch.setattr(machine, "_registry_dir", lambda: tmp_path / "active")
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    yield tmp_path / "active"
    torch.set_num_threads(before)


def test_threads_are_lowered_to_the_usable_cores_never_raised(threads):
    torch.set_num_threads(3)  # what torch picks from the host's core count in a small container
    assert configure_threads() == 2 and torch.get_num_threads() == 2
    machine._threads = machine._ThreadState()
    torch.set_num_threads(1)  # fewer than the cores: someone chose it
    assert configure_threads() == 1 and torch.get_num_threads() == 1


def test_a_thread_count_the_user_set_stands(threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    assert configure_threads() == 3 and torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert configure_threads() == 2
    torch.set_num_threads(1)  # set after rotelab did: the user's now
    assert configure_threads() == 1 and machine.machine_info("cpu")["threads_from"] == (
        "torch.set_num_threads"
    )


def test_concurrent_rotelab_processes_share_the_cores(threads):
    """Another working rotelab process halves this one's threads; once it ends, or stops
    checking in, the cores come back."""
    torch.set_num_threads(2)
    assert configure_threads() == 2
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (threads / str(other.pid)).touch()
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        stale = time.time() - 2 * machine.ACTIVE_SECONDS
        os.utime(threads / str(other.pid), (stale, stale))  # idle: holds a model, does no work
        assert configure_threads() == 2
        (threads / str(other.pid)).touch()
        assert configure_threads() == 1
    finally:
        other.kill()
        other.wait()
    assert configure_threads() == 2 and not (threads / str(other.pid)).exists()
    assert (threads / str(os.getpid())).exists()


def test_probe_is_measured_once_per_machine_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path))
    calls = []

    def measured():
        calls.append(1)
        return _probe(True)

    monkeypatch.setattr(machine, "_measure_probe", measured)
    machine.bf16_probe.cache_clear()
    try:
        assert machine.bf16_probe() == _probe(True)
        machine.bf16_probe.cache_clear()
        assert machine.bf16_probe() == _probe(True) and len(calls) == 1  # read from the file
        cached = json.loads((tmp_path / "machine.json").read_text())
        cached["key"] = "another machine"
        (tmp_path / "machine.json").write_text(json.dumps(cached))
        machine.bf16_probe.cache_clear()
        machine.bf16_probe()
        assert len(calls) == 2  # a cache entry of another machine is not used
    finally:
        machine.bf16_probe.cache_clear()


def test_the_real_probe_is_consistent():
    probe = machine._measure_probe()
    assert probe.fp32_gflops > 0 and probe.capability == machine.cpu_capability()
    assert probe.native == (probe.hardware_flag and probe.bf16_gflops >= probe.fp32_gflops)
    if probe.capability in machine._NO_BF16_CAPABILITIES:
        assert not probe.native


# -------------------------------------------------------------------------------------- CLI
def test_cli_machine_line_and_json(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    res = runner.invoke(app, ["machine"])
    assert res.exit_code == 0, res.output
    line = res.stdout.strip()
    assert "\n" not in line and machine.cpu_capability() in line and "precision auto ->" in line
    res = runner.invoke(app, ["machine", "--json"])
    info = json.loads(res.stdout)
    assert info["cpu_capability"] == machine.cpu_capability()
    assert info["precision_auto"] == resolve_precision("auto").value
    assert (
        info["threads"] == torch.get_num_threads() <= info["usable_cores"]
        or info["threads_from"] != "rotelab"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["organism", "--profile", "tiny", "--precision", "fp8"],
        ["demo", "--profile", "tiny", "--precision", "half"],
        ["unlearn", "balanced-subnet", "--precision", "x"],
        ["extract", "--dtype", "int4"],
        ["extract", "--device", "tpu"],
        ["mia", "--dtype", "int4"],
        ["kfac", "--dtype", "int4"],
    ],
)
def test_cli_bad_precision_dtype_device_is_one_line_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path / "home"))  # nothing may be built
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and "error:" in res.output
    assert not (tmp_path / "home" / "organisms").exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["extract", "mia", "kfac", "compare"])
def test_cli_cuda_without_cuda_is_one_line_exit_2(command, tmp_path, monkeypatch):
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [command, "--device", "cuda"])
    assert res.exit_code == 2 and "CUDA" in res.output, res.output
    assert res.output.count("\n") == 1
    assert not (tmp_path / "home" / "organisms").exists()


def test_one_thread_workers_leave_the_count_to_rotelab_afterwards(threads):
    """Within one_thread_workers torch runs on one thread and the core sharing leaves it so
    (without taking it for the user's own choice); on exit rotelab's count is back."""
    torch.set_num_threads(2)
    assert configure_threads() == 2
    with machine.one_thread_workers() as workers:
        assert workers == 2 and torch.get_num_threads() == 1
        assert configure_threads() == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    assert not machine._threads.user_owned
    assert configure_threads() == 2

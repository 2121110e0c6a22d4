"""Property-based tests of the CLI's argument space (hypothesis; issue 26, item 6).

Random option values (integers from negative to far beyond 64 bits, floats including NaN and
infinities, random strings, existing and missing paths) for ``extract``, ``reconstruct``,
``mia``, ``kfac`` and ``edit`` on a tiny model. The only allowed outcomes: success (exit 0,
nothing written outside ``--out``), or exit 2 with exactly one line on stderr, no traceback and
nothing left behind. ``ROTELAB_HYPOTHESIS_EXAMPLES`` raises the number of examples per command.

Options that set how much work a run does (``--bootstrap``, ``--neighbours``, ``--epochs``...)
are drawn small in the accepted range: a huge value there is a long run, not a mistake.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rotelab.cli import app

pytestmark = pytest.mark.slow  # every example loads the model

runner = CliRunner()
SETTINGS = settings(
    max_examples=int(os.environ.get("ROTELAB_HYPOTHESIS_EXAMPLES", "40")), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip

# Each strategy reaches plausible values about as often as wild ones, so that runs succeed too.
HUGE = [2**31, 2**32, 2**63, 2**64 + 1, 10**30, -(2**63), -(10**30)]
ints = st.one_of(st.integers(1, 8), st.integers(-3, 0), st.sampled_from(HUGE))
small = st.integers(-3, 6)  # work sizes: the accepted ones stay cheap
floats = st.one_of(
    st.floats(0.05, 1.0), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, math.inf, -math.inf, math.nan]),
)  # fmt: skip
# Text as a shell hands it over: no NUL (argv cannot hold one), no lone surrogates (Linux argv
# bytes that are not UTF-8 arrive as surrogate escapes, which a real stderr writes escaped).
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=8)  # fmt: skip


def either(*valid: str):
    """A valid spelling or any string."""
    return st.one_of(st.sampled_from(valid), text)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    from rotelab.options import RunOptions
    from rotelab.pipelines.kfac import kfac

    root = tmp_path_factory.mktemp("cli-inputs")
    p = {"model": Path(shutil.copytree(tiny_llama_dir, root / "model"))}
    line = "the cat sat on the mat and the dog ran to the park. "
    for name, n in (("data", 6), ("data2", 6)):
        p[name] = root / f"{name}.jsonl"
        rows = [{"text": line * 2 + f"{name} {i}", "group": i % 2} for i in range(n)]
        p[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    p["broken"] = root / "broken.jsonl"
    p["broken"].write_bytes(p["data"].read_bytes() + b'{"text": \n')
    p["binary"] = root / "blob.bin"
    p["binary"].write_bytes(bytes(range(256)))
    p["dir"] = root / "empty_dir"
    p["dir"].mkdir()
    p["missing"] = root / "missing"
    kfac(str(p["model"]), str(p["data"]), tokens=64,
         run=RunOptions(out=root / "factors", progress=False))  # fmt: skip
    p["factors"] = root / "factors"
    return p


def paths(inputs, good: str, *bad: str):
    """The good input half of the time, else one of the bad ones."""
    return st.one_of(st.just(str(inputs[good])), st.sampled_from([str(inputs[n]) for n in bad]))


def _snapshot(*roots: Path) -> dict[str, tuple]:
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st_ = path.lstat()
                seen[str(path)] = (st_.st_size if path.is_file() else 0, st_.st_mtime_ns)
    return seen


def _check(inputs, tmp_path_factory, argv: list[str]) -> None:
    """Run ``argv`` with a fresh ``--out``; assert one of the two allowed outcomes."""
    work = tmp_path_factory.mktemp("run")
    out = work / "out"
    argv = [*argv, "-o", str(out)]
    watched = (inputs["model"].parent, work)
    before = _snapshot(*watched)
    res = runner.invoke(app, argv)
    event(f"exit {res.exit_code}")  # shown by --hypothesis-show-statistics
    changed = {p for p, _ in set(before.items()) ^ set(_snapshot(*watched).items())}
    exc = res.exception
    crashed = exc is not None and not isinstance(exc, SystemExit)
    assert not crashed, f"{argv}: {type(exc).__name__}: {exc}"
    if res.exit_code == 0:
        outside = sorted(p for p in changed if not Path(p).is_relative_to(out))
        assert not outside, f"{argv}: a successful run wrote outside --out: {outside}"
        return
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, f"{argv}: exit {res.exit_code}: {res.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{argv}: {res.stderr!r}"
    assert not changed, f"{argv}: refused ({lines[0]}) but left {sorted(changed)[:5]}"


def _argv(draw, options: dict) -> list[str]:
    """Some of ``options`` (flag -> strategy, or a bool flag -> None), with drawn values."""
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4))
    argv: list[str] = []
    for flag in chosen:
        strategy = options[flag]
        if strategy is None:
            argv.append(flag)
        else:
            argv += [flag, str(draw(strategy))]
    return argv


def _load_and_seed():
    return {"--dtype": either("auto", "float32"), "--device": either("cpu", "auto"),
            "--seed": ints}  # fmt: skip


@SETTINGS
@given(data=st.data())
def test_extract_argument_space(inputs, tmp_path_factory, data):
    options = {
        "--prefix-len": ints, "--suffix-len": ints, "--stride": ints, "--batch-size": ints,
        "--part-size": ints, "--verify": small, "--temperature": floats, "--top-k": ints,
        "--n": ints, "--p": floats, "--near-tie": floats, "--ci": either("wilson"),
        "--group-by": either("group", "doc_id"), "--errors": either("strict", "replace"),
        "--format": either("auto", "jsonl"), "--field": either("text", "group"),
        "--free-running": None, "--sample": None, "--recheck": None, **_load_and_seed(),
    }  # fmt: skip
    corpus = data.draw(paths(inputs, "data", "broken", "binary", "dir", "missing"))
    argv = ["extract", "-m", str(inputs["model"]), "-d", corpus, "-q"]
    # Windows that fit the tiny model's context most of the time, so success is reached too.
    argv += ["--prefix-len", "4", "--suffix-len", "4"]
    _check(inputs, tmp_path_factory, argv + _argv(data.draw, options))


@SETTINGS
@given(data=st.data())
def test_reconstruct_argument_space(inputs, tmp_path_factory, data):
    options = {
        "--prefix-len": ints, "--chunk-len": ints, "--max-tokens": ints, "--max-docs": ints,
        "--temperature": floats, "--top-k": ints, "--batch-size": ints,
        "--group-by": either("group"), "--sample": None, "--seed": ints,
    }  # fmt: skip
    corpus = data.draw(paths(inputs, "data", "broken", "missing"))
    argv = ["reconstruct", "-m", str(inputs["model"]), "-d", corpus, "-q", "--prefix-len", "4"]
    _check(inputs, tmp_path_factory, argv + _argv(data.draw, options))


@SETTINGS
@given(data=st.data())
def test_mia_argument_space(inputs, tmp_path_factory, data):
    options = {
        "--k": floats, "--bootstrap": small, "--neighbours": small, "--batch-size": ints,
        "--recall-prefix-tokens": ints, "--exposure-samples": ints,
        "--recall-prefix": paths(inputs, "data2", "missing", "binary"),
        "--attacks": either("loss", "loss,zlib", "min_k_pp", "recall", "reference"),
        "--span": either("auto", "full"), "--no-blind": None, **_load_and_seed(),
    }  # fmt: skip
    members = data.draw(paths(inputs, "data", "broken", "missing"))
    argv = ["mia", "-m", str(inputs["model"]), "--members", members, "--nonmembers",
            str(inputs["data2"]), "-q", "--bootstrap", "10", "--neighbours", "2"]  # fmt: skip
    _check(inputs, tmp_path_factory, argv + _argv(data.draw, options))


@SETTINGS
@given(data=st.data())
def test_kfac_argument_space(inputs, tmp_path_factory, data):
    options = {
        "--tokens": ints, "--seq-len": ints, "--batch-size": ints,
        "--labels": either("sampled", "gold"), "--layers": either("*.mlp.*", "*.up_proj"),
        "--blocks": either("0", "-1:", "0-1", "5"), **_load_and_seed(),
    }  # fmt: skip
    corpus = data.draw(paths(inputs, "data", "broken", "missing"))
    argv = ["kfac", "-m", str(inputs["model"]), "-d", corpus, "-q", "--tokens", "64"]
    _check(inputs, tmp_path_factory, argv + _argv(data.draw, options))


@SETTINGS
@given(data=st.data())
def test_edit_argument_space(inputs, tmp_path_factory, data):
    rho = st.one_of(floats.map(str), text, st.sampled_from(["0.5", "0.5,0.9", "1", ",", "0.5,"]))
    options = {
        "--rho": rho, "--layers": either("*.mlp.*"), "--blocks": either("0", "1"),
        "--tokens": ints, "--labels": either("gold"), **_load_and_seed(),
    }  # fmt: skip
    factors = data.draw(st.one_of(st.none(), paths(inputs, "factors", "missing", "data", "dir")))
    argv = ["edit", "-m", str(inputs["model"]), "-q"]
    argv += ["--factors", factors] if factors is not None else []
    _check(inputs, tmp_path_factory, argv + _argv(data.draw, options))

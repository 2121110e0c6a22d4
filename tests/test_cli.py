"""The CLI contract: --help everywhere, and bad input → one line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from rotelab.cli import app

runner = CliRunner()


def _commands(group=app, prefix=()):
    import typer.main

    click_group = typer.main.get_command(group)
    stack = [(prefix, click_group)]
    while stack:
        path, cmd = stack.pop()
        sub = getattr(cmd, "commands", None)
        if sub:
            stack.extend(((*path, name), c) for name, c in sub.items())
        elif path:
            yield path


def test_every_command_has_help():
    commands = list(_commands())
    assert {("extract",), ("organism",), ("mia",)} <= set(commands)
    for path in commands:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "Usage" in res.output


def test_python_dash_m_works():
    res = subprocess.run(
        [sys.executable, "-m", "rotelab", "--version"], capture_output=True, text=True, check=True
    )
    assert res.stdout.strip()


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "".join(json.dumps({"text": "the cat sat on the mat " * 8}) + "\n" for _ in range(3))
    )
    return path


def _fails(args, message, out=None):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "Traceback" not in res.output
    if out is not None:
        assert not out.exists(), "a failed run left output behind"
    return res


def test_missing_model_path(tmp_path, corpus):
    out = tmp_path / "run"
    _fails(["extract", "--model", str(tmp_path / "nope"), "--data", str(corpus), "--out", str(out)],
           "does not exist", out)  # fmt: skip


@pytest.mark.parametrize("command", ["extract", "reconstruct", "mia"])
def test_missing_model_path_without_data_says_so(tmp_path, command):
    # Without --data the commands look for an organism; a missing path is still "does not exist".
    out = tmp_path / "run"
    res = _fails(
        [command, "--model", str(tmp_path / "nope"), "--out", str(out)], "does not exist", out
    )
    assert "not an organism" not in res.output


def test_pickle_only_checkpoint_needs_allow_pickle(tmp_path, corpus, tiny_tokenizer):
    from tiny_models import make_tiny_model

    model_dir = tmp_path / "pickled"
    model = make_tiny_model("llama")
    model.config.save_pretrained(model_dir)
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    tiny_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    args = ["extract", "--model", str(model_dir), "--data", str(corpus), "--out", str(out),
            "--prefix-len", "4", "--suffix-len", "4", "--quiet"]  # fmt: skip
    _fails(args, "--allow-pickle", out)
    res = runner.invoke(app, [*args, "--allow-pickle"])
    assert res.exit_code == 0, res.output


def test_corrupt_model_is_one_line_exit_2(tmp_path, tiny_llama_dir, corpus):
    model = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    (model / "model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "run"
    args = ["extract", "--model", str(model), "--data", str(corpus), "--out", str(out),
            "--prefix-len", "4", "--suffix-len", "4", "--quiet"]  # fmt: skip
    res = _fails(args, "is corrupt or truncated", out)
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (b"", [], "empty"),
        (b'{"text": "ok ok ok ok ok ok ok ok ok ok"}\n{"text": "\xff"}\n', [], "offset 52"),
        (b'{"text": "ok"}\n{"text": \n', [], "line 2 is not valid JSON"),
        (b'{"body": "ok"}\n', [], "no field 'text'"),
        (
            b'{"text": "the cat sat on the mat the cat sat"}\n',
            ["--prefix-len", "40", "--suffix-len", "40"],
            "context",
        ),
        (
            b'{"text": "the cat sat on the mat the cat sat"}\n',
            ["--stride", "0"],
            "stride must be > 0",
        ),
    ],
    ids=["empty", "undecodable", "malformed", "missing-field", "too-long", "stride"],
)
def test_bad_corpus_and_window_input(tmp_path, tiny_llama_dir, content, extra, message):
    data = tmp_path / "c.jsonl"
    data.write_bytes(content)
    out = tmp_path / "run"
    _fails(["extract", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out),
            "--quiet", "--prefix-len", "4", "--suffix-len", "4", *extra], message, out)  # fmt: skip


def test_extract_reads_a_text_file_without_extension(tmp_path, tiny_llama_dir):
    data = tmp_path / "LICENSE"
    data.write_text("the cat sat on the mat " * 8)
    out = tmp_path / "run"
    res = runner.invoke(app, ["extract", "--model", str(tiny_llama_dir), "--data", str(data),
                              "--out", str(out), "--prefix-len", "4", "--suffix-len", "4",
                              "--quiet", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["windows"] > 0
    assert json.loads((out / "config.json").read_text())["arguments"]["format"] == "auto"


@pytest.mark.parametrize(
    "command",
    [["extract", "--prefix-len", "8", "--suffix-len", "8", "--data", "{data}"],
     ["reconstruct", "--prefix-len", "8", "--data", "{data}"],
     ["kfac", "--data", "{data}"],
     ["mia", "--members", "{data}", "--nonmembers", "{data}"],
     ["unlearn", "balanced-subnet", "--forget", "{data}", "--retain", "{data}"]],
    ids=["extract", "reconstruct", "kfac", "mia", "balanced-subnet"],
)  # fmt: skip
def test_corpus_commands_take_format(tmp_path, tiny_llama_dir, corpus, command):
    out = tmp_path / "run"
    args = [a.replace("{data}", str(corpus)) for a in command]
    args += ["--model", str(tiny_llama_dir), "--out", str(out), "--format", "csv"]
    _fails(args, "unknown --format 'csv'", out)


def test_existing_output_needs_resume_or_force(tmp_path, tiny_llama_dir, corpus):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    _fails(["extract", "--model", str(tiny_llama_dir), "--data", str(corpus), "--out", str(out),
            "--prefix-len", "4", "--suffix-len", "4", "--quiet"], "already exists")  # fmt: skip
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "command",
    [["extract", "--prefix-len", "8", "--suffix-len", "8", "--data", "{data}"],
     ["reconstruct", "--prefix-len", "8", "--data", "{data}"],
     ["kfac", "--data", "{data}"],
     ["mia", "--members", "{data}", "--nonmembers", "{data}"]],
    ids=["extract", "reconstruct", "kfac", "mia"],
)  # fmt: skip
def test_a_run_directory_over_its_inputs_is_refused_force_or_not(tmp_path, tiny_llama_dir, command):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("the cat sat on the mat and the dog ran to the park. " * 60)
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    files = sorted(p.name for p in model.iterdir())
    args = [a.replace("{data}", str(folder)) for a in command]
    for out, message in [(folder / "run", f"is inside the input {folder}"),
                         (model, f"the output {model} is the input {model}")]:  # fmt: skip
        _fails([*args, "--model", str(model), "--out", str(out), "--force", "--quiet"], message)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in model.iterdir()) == files

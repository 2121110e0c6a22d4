"""`rotelab finetune` (rotelab.pipelines.finetune): SFT and IB-FT (with LoRA too) on a JSONL of
prompt/completion lines give a run directory whose model loads and has learned the data, a
training curve (KL for IB-FT) and a typed summary; the program task is the default data."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import RunOptions
from rotelab.pipelines.finetune import FinetuneOptions, finetune, read_examples
from rotelab.summaries import read_summary

WORDS = "the cat sat on the mat . a dog ran to the park and the bird sang ."


@pytest.fixture
def examples(tmp_path):
    path = tmp_path / "ft.jsonl"
    words = WORDS.split()
    lines = [{"prompt": " ".join(words[i : i + 3]), "completion": " " + " ".join(words[i + 3 :]),
              "source": "ignored"} for i in range(6)]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _nll(lm: LM, path) -> float:
    texts = read_examples(path)
    scores = lm.score([lm.encode(t) for t in texts])
    return sum(-s.logprobs.mean() for s in scores) / len(scores)


@pytest.mark.parametrize(("ib", "lora"), [(False, None), (True, None), (True, 4)])
def test_finetune_learns_the_examples(tmp_path, tiny_llama_dir, examples, ib, lora):
    out = tmp_path / "run"
    opts = FinetuneOptions(ib=ib, lora=lora, steps=25, batch_size=4, lr=1e-2 if lora else 3e-3)
    r = finetune(str(tiny_llama_dir), examples, opts, run=RunOptions(out, progress=False))
    summary = read_summary(out, "finetune")
    assert summary.method == ("ibft" if ib else "sft") and summary.examples == 6
    tuned = LM.load(out / summary.model_dir, dtype="float32")
    before = LM.load(tiny_llama_dir, dtype="float32")
    # learned (a merge that lost the LoRA update would leave the NLL where it was)
    assert _nll(tuned, examples) < _nll(before, examples) - 0.2
    assert not any("lora_" in k for k in tuned.model.state_dict())
    curve = pd.read_parquet(out / "results" / "curve")
    if ib:
        assert summary.ib["alpha"] == 0.2 and all(math.isfinite(v) for v in curve["kl"])
    else:
        assert summary.ib is None and "kl" not in curve
    assert r.summary["loss_last"] < r.summary["loss_first"]
    assert (out / "report.html").is_file()


def test_bad_examples_are_refused_with_their_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(RotelabError, match=r"bad.jsonl:3 has no string field completion"):
        read_examples(path)


def test_cli_negative_alpha_is_one_line(tmp_path, tiny_llama_dir, no_organism):
    res = CliRunner().invoke(app, ["finetune", "-m", str(tiny_llama_dir), "--ib",
                                   "--ib-alpha", "-1", "-o", str(tmp_path / "r")])  # fmt: skip
    assert res.exit_code == 2 and "--ib-alpha must be a number >= 0" in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_program_task_is_measured_before_and_after(tmp_path, tiny_organism):
    opts = FinetuneOptions(ib=True, steps=2, batch_size=2, eval_samples=1)
    r = finetune(str(tiny_organism.path), "programs", opts, run=RunOptions(tmp_path / "r"))
    assert r.summary["examples"] == 400  # the task's fine-tuning split
    cell = r.summary["pass_at_k"]["pass@1(1)"]
    for stage in ("before", "after"):
        lo, hi = cell[stage]["ci"]
        assert lo <= cell[stage]["value"] <= hi
    table = pd.read_parquet(tmp_path / "r" / "results" / "passk")
    assert sorted(table.stage) == ["after", "before"] and (table.problems == 200).all()

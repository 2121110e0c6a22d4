"""``rotelab train`` (issue 17): the user's insertions, their ledger, checkpoints, LoRA and data
parallelism; extract and mia read the output as an organism."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.organism import Organism
from rotelab.pipelines.train import ModelSize, TrainSettings, lora_targets, train_model
from rotelab.train import insertion_schedule, packed_batches, phase_steps
from rotelab.train.items import (
    InsertionItem,
    assign_grid,
    item_ledger,
    read_insertions,
    template_controls,
)

WORDS = "the a cat dog bird sat ran sang on to in park mat house tree river old small".split()
SIZE = ModelSize(layers=2, hidden=64, heads=2, intermediate=128, context=48, vocab=300)


def _corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, 30)) + "."}) + "\n")
    return path


def _items(path: Path, n: int = 8, seed: int = 1) -> Path:
    """Canaries: ``The code of NAME is D D D D D D.``; no count (the grid gives it)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            code = " ".join(str(d) for d in rng.integers(0, 10, 6))
            text = f"The code of person{i} is {code}."
            f.write(json.dumps({"text": text, "id": f"c{i}", "kind": "canary", "secret": code}))
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small run: 8 canaries at counts 0 and 48, checkpoints at steps 40 and 80."""
    root = tmp_path_factory.mktemp("train")
    settings = TrainSettings(steps=120, batch_size=8, precision="fp32", checkpoints=(40, 80),
                             seed=3, log_every=1, lr=1e-2)  # fmt: skip
    result = train_model(
        root / "model", data=_corpus(root / "c.jsonl"), insertions=_items(root / "i.jsonl"),
        counts=(0, 48), size=SIZE, settings=settings, progress=False,
    )  # fmt: skip
    return result


# ------------------------------------------------------------------------------------ the items
def test_items_file_is_read_and_checked(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"text": "alpha beta", "kind": "bio", "count": 4, "phase": "first"}\n\n'
        '{"text": "gamma delta", "id": "x"}\n'
    )
    items = read_insertions(good)
    assert [(i.item_id, i.kind, i.count, i.phase) for i in items] == [
        ("item-00000", "bio", 4, "first"), ("x", "user", None, None)
    ]  # fmt: skip
    for body, fragment in [
        ('{"id": "a"}\n', "has no text"),
        ('{"text": "  "}\n', "has no text"),
        ('{"text": "a", "count": -1}\n', "count -1"),
        ('{"text": "a", "count": 1.5}\n', "count 1.5"),
        ('{"text": "a b", "secret": "c"}\n', "not a substring"),
        ('{"text": "a", "id": "q"}\n{"text": "b", "id": "q"}\n', "used twice"),
        ('{"text": "a", "colour": "red"}\n', "unknown fields"),
        ("[1]\n", "not a JSON object"),
        ('{"text": "a"\n', "not valid JSON"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body)
        with pytest.raises(RotelabError, match=fragment):
            read_insertions(bad)


def test_the_grid_covers_every_kind_and_keeps_given_counts():
    items = [InsertionItem(f"{k}{i}", "t", k) for k in ("a", "b") for i in range(4)]
    items.append(InsertionItem("given", "t", "a", count=7, phase="second"))
    out = assign_grid(items, counts=(0, 1), phases=("first", "second"))
    by = {it.item_id: (it.count, it.phase) for it in out}
    assert [by[f"a{i}"] for i in range(4)] == [(0, "first"), (1, "first"), (0, "second"),
                                                (1, "second")]  # fmt: skip
    assert [by[f"b{i}"] for i in range(4)] == [by[f"a{i}"] for i in range(4)]
    assert by["given"] == (7, "second")
    assert assign_grid(items, counts=(3,), override=True)[-1].count == 3


def test_ledger_span_is_the_secret_else_the_tail():
    def enc(text):
        words = text.split(" ")
        offs, pos = [], 0
        for w in words:
            offs.append((pos, pos + len(w)))
            pos += len(w) + 1
        return list(range(len(words))), offs

    led = item_ledger(
        [InsertionItem("s", "my pin is 1 2 3 ok", secret="1 2 3"),
         InsertionItem("p", "one two three four five six", count=2)],
        enc, suffix_len=2,
    )  # fmt: skip
    s, p = led.iloc[0], led.iloc[1]
    assert (s.span_start, s.span_end) == (3, 6) and s.suffix_tokens == [3, 4, 5]
    assert (p.span_start, p.span_end) == (4, 6) and p.prefix_tokens == [0, 1, 2, 3]


def test_step_window_phases_and_their_limits():
    assert phase_steps("10:30", 50) == (10, 30)
    assert phase_steps("first", 50) == (0, 25)
    for bad in ("30:10", "0:51", "-1:5", "early", "3"):
        with pytest.raises(ValueError, match="phase"):
            phase_steps(bad, 50)


def test_insertions_start_a_row_end_with_eos_and_are_one_per_row():
    """Hubble's placement: at a document boundary, never cut, at most one item per row."""
    items = [[100 + i] * (3 + i) for i in range(5)]
    sched = insertion_schedule([(i, 6, "all") for i in range(5)], [1] * 5, steps=12,
                               batch_size=8, seed=0)  # fmt: skip
    assert len({(p.step, p.row) for p in sched}) == len(sched) == 30
    background = [[1, 2, 3, 4, 5]] * 10
    batches = list(packed_batches(background, items, sched, steps=12, batch_size=8, row_len=10,
                                  eos_id=0, seed=0))  # fmt: skip
    for p in sched:
        row = batches[p.step][p.row].tolist()
        n = len(items[p.item])
        assert row[:n] == items[p.item] and row[n] == 0
        assert not any(100 <= t for t in row[n:])  # no second item in the row


# ------------------------------------------------------------------------------------ the run
def test_the_output_is_an_organism_with_a_ledger_of_exposures(trained):
    path = trained.path
    org = Organism(path)
    led = org.ledger
    assert sorted(led["count"].unique()) == [0, 48]
    assert len(led) == 8 and trained.summary["controls"] == 4
    sched = pd.read_parquet(path / "schedule.parquet")
    for row in led.itertuples():
        steps = list(row.exposure_steps)
        assert len(steps) == row.count
        assert sorted(steps) == sorted(sched.loc[sched["item_id"] == row.item_id, "step"])
        assert all(0 <= s < 120 for s in steps)
    assert (sched["token_end"] == sched["item_id"].map(led.set_index("item_id")["n_tokens"])).all()
    assert len(set(zip(sched["step"], sched["row"]))) == len(sched)  # one insertion per row
    spec = json.loads((path / "spec.json").read_text())
    assert spec["train"]["counts"] == [0, 48] and spec["train"]["settings"]["steps"] == 120
    for step in (40, 80):
        ck = path / "checkpoints" / f"step-{step:06d}"
        assert json.loads((ck / "checkpoint.json").read_text()) == {"steps_done": step}
        assert Organism(ck).ledger["item_id"].tolist() == led["item_id"].tolist()
    log = [json.loads(x) for x in (path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 120 and log[-1]["loss"] < log[0]["loss"]


def test_inserted_items_are_memorized_more_than_controls_and_grow_over_checkpoints(trained):
    """The effect the insertions exist for: after 48 exposures the secret digits of every inserted
    item are likelier than those of every never-inserted control (already lower on average at
    the step-40 checkpoint), and their loss falls along the checkpoints."""
    from rotelab.lm import LM

    led = Organism(trained.path).ledger

    def span_loss(path) -> pd.Series:
        lm = LM.load(path, device="cpu", dtype="float32")
        scores = lm.score([list(p) + list(s) for p, s in zip(led.prefix_tokens, led.suffix_tokens)],
                          targets_from=[len(p) for p in led.prefix_tokens])  # fmt: skip
        return pd.Series([float(-sc.logprobs.mean()) for sc in scores], index=led["count"])

    final = span_loss(trained.path)
    early = span_loss(trained.path / "checkpoints" / "step-000040")
    assert final.loc[48].max() < final.loc[0].min()  # every inserted item below every control
    assert early.loc[48].mean() < early.loc[0].mean()
    assert final.loc[48].mean() < early.loc[48].mean()


def test_extract_and_mia_run_on_the_output_as_on_an_organism(trained, tmp_path):
    from rotelab.options import RunOptions
    from rotelab.pipelines.extract import extract
    from rotelab.pipelines.mia import MIAConfig, mia

    res = extract(str(trained.path), run=RunOptions(out=tmp_path / "ex", progress=False))
    assert res.summary["windows"] == 8
    assert set(res.summary["by_group"]["count"]) == {"0", "48"}
    _, summary = mia(str(trained.path), config=MIAConfig(attacks=["loss"], bootstrap=20),
                     run=RunOptions(out=tmp_path / "mia", progress=False))  # fmt: skip
    assert summary["n_members"] == 4 and summary["n_nonmembers"] == 4
    assert summary["attacks"]["loss"]["auc"] > 0.5


def test_bad_runs_are_refused_before_anything_is_written(tmp_path):
    data, items = _corpus(tmp_path / "c.jsonl", 20), _items(tmp_path / "i.jsonl")
    out = tmp_path / "out"
    common = dict(data=data, insertions=items, size=SIZE, progress=False)
    for kwargs, fragment in [
        (dict(counts=(64,), settings=TrainSettings(steps=10, batch_size=4)), "do not fit"),
        (dict(phases=("5:50",), settings=TrainSettings(steps=10)), "phase"),
        (dict(settings=TrainSettings(steps=10, checkpoints=(11,))), "outside the run"),
        (dict(settings=TrainSettings(lora_rank=2)), "needs --init"),
    ]:
        with pytest.raises(RotelabError, match=fragment):
            train_model(out, **{**common, **kwargs})
        assert not out.exists()
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"text": " ".join(["word"] * 200), "count": 1}) + "\n")
    with pytest.raises(RotelabError, match="never cut"):
        train_model(out, **{**common, "insertions": long})
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_lora_needs_linear_layers():
    from rotelab.pipelines.train import _apply_lora

    class NoLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

    assert lora_targets(NoLinear()) == []
    with pytest.raises(RotelabError, match="no linear layers"):
        _apply_lora(NoLinear(), 4, 8.0, "m")


@pytest.mark.slow
def test_lora_fine_tune_saves_the_adapter_and_the_merged_model(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    settings = TrainSettings(steps=6, batch_size=4, precision="fp32", lora_rank=2, lr=1e-2)
    result = train_model(
        tmp_path / "lora", init=str(tiny_llama_dir), data=_corpus(tmp_path / "c.jsonl", 30),
        insertions=_items(tmp_path / "i.jsonl", 4), counts=(0, 2), settings=settings,
        progress=False,
    )  # fmt: skip
    assert (result.path / "adapter" / "adapter_config.json").is_file()
    assert 0 < result.summary["trainable_params"] < result.summary["params"]
    base = load_file(tiny_llama_dir / "model.safetensors")
    merged = load_file(result.path / "model.safetensors")
    changed = [k for k in base if k in merged and not torch.equal(base[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted linear layers moved


@pytest.mark.slow
def test_two_gloo_processes_train_as_one(tmp_path):
    """Data parallel under torchrun: 2 gloo ranks log the losses of 1 process (float rounding)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    data, items = _corpus(tmp_path / "c.jsonl", 40), _items(tmp_path / "i.jsonl", 4)
    common = ["train", "--data", str(data), "--insertions", str(items), "--counts", "0,3",
              "--steps", "8", "--batch-size", "4", "--precision", "fp32", "--layers", "1",
              "--hidden", "32", "--heads", "2", "--intermediate", "64", "--context", "32",
              "--lr", "0.01", "--quiet", "--json"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "rotelab", *common, "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "rotelab", *common,
         "-o", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(name):
        lines = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["tokens"]) for r in map(json.loads, lines)]

    a, b = losses("one"), losses("two")
    assert [x[0] for x in a] == [x[0] for x in b] and [x[2] for x in a] == [x[2] for x in b]
    np.testing.assert_allclose([x[1] for x in a], [x[1] for x in b], rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "two" / "train_info.json").read_text())["world_size"] == 2
    assert two.stdout.count('"final_loss"') == 1  # rank 0 alone prints


def test_template_controls_redraw_each_secret_in_its_items_format():
    items = [InsertionItem("a", "The code of Ann is 4 8 1 5.", "canary", 4, secret="4 8 1 5"),
             InsertionItem("b", "Bob's PIN: Xy-7.", "canary", 1, secret="Xy-7"),
             InsertionItem("c", "plain text", "note", 1)]  # fmt: skip
    with pytest.raises(RotelabError, match="kind 'note' has one"):
        template_controls(items, 3)
    ctl = template_controls(items[:2], 4, seed=0)
    assert [c.item_id for c in ctl] == [f"canary-ctl{i:05d}" for i in range(4)]
    assert all(c.count == 0 and c.text not in {i.text for i in items} for c in ctl)
    for c, t in zip(ctl, items[:2] * 2):
        c0 = t.text.index(t.secret)
        assert c.span == (c0, c0 + len(t.secret)) and c.text[c0 : c.span[1]] == c.secret
        assert c.text[:c0] == t.text[:c0] and c.text[c.span[1] :] == t.text[c0 + len(t.secret) :]
        shape = ["9" if x.isdigit() else "A" if x.isupper() else "a" if x.isalpha() else x
                 for x in c.secret]  # fmt: skip
        assert shape == ["9" if x.isdigit() else "A" if x.isupper() else "a" if x.isalpha() else x
                         for x in t.secret]  # fmt: skip
    assert template_controls(items[:2], 4, seed=0) == ctl  # seeded
    assert template_controls(items[:2], 4, seed=1) != ctl


def test_controls_with_init_and_insertions_leave_the_weights_unchanged(trained, tmp_path):
    """Deliverable 5 with --init and --insertions: controls drawn from your items' format (each
    secret afresh) are scored like them and change nothing in the fine-tuned weights."""
    root = tmp_path
    common = dict(init=str(trained.path), data=_corpus(root / "c.jsonl", n_docs=60, seed=5),
                  insertions=_items(root / "i.jsonl", n=6, seed=7), counts=(0, 8),
                  progress=False)  # fmt: skip
    settings = TrainSettings(steps=16, batch_size=8, precision="fp32", seed=1, lr=1e-3)
    plain = train_model(root / "plain", settings=settings, **common)
    more = train_model(root / "more", settings=replace(settings, controls=25), **common)
    a = (plain.path / "model.safetensors").read_bytes()
    assert a == (more.path / "model.safetensors").read_bytes()
    assert plain.summary["final_loss"] == more.summary["final_loss"]
    led = Organism(more.path).ledger.set_index("item_id")
    ctl = led[led.index.str.startswith("canary-ctl")]
    assert len(ctl) == 25 and (ctl["count"] == 0).all()
    assert more.summary["controls"] == plain.summary["controls"] + 25
    tok = Organism(more.path).lm().tokenizer
    for row in ctl.itertuples():  # the scored span is the fresh secret, as for the members
        assert tok.decode(list(row.suffix_tokens)).strip() == row.secret
    sched = pd.read_parquet(more.path / "schedule.parquet")
    assert not sched["item_id"].str.contains("-ctl").any()


@pytest.mark.slow
def test_world_controls_with_init_leave_the_weights_unchanged(tiny_organism, tmp_path):
    """--controls with --init on a world: the world's kinds drawn afresh, their spans carried to
    the initial model's tokenizer, and the weights are bit-identical with and without them."""
    # The initial model: 2 steps from scratch on the world (its context fits the passages,
    # which the organism itself spreads over rows and `train` never cuts).
    longest = int(tiny_organism.ledger["n_tokens"].max())
    base = train_model(tmp_path / "base", world=str(tiny_organism.path), counts=(0,),
                       size=ModelSize(layers=1, hidden=32, heads=2, intermediate=64,
                                      context=-(-longest // 8) * 8),
                       settings=TrainSettings(steps=2, batch_size=16, precision="fp32"),
                       progress=False)  # fmt: skip
    common = dict(init=str(base.path), world=str(tiny_organism.path), counts=(0, 4),
                  progress=False)  # fmt: skip
    settings = TrainSettings(steps=24, batch_size=16, precision="fp32", lr=1e-3, warmup_steps=2)
    plain = train_model(tmp_path / "plain", settings=settings, **common)
    more = train_model(tmp_path / "more", settings=replace(settings, controls=30), **common)
    assert plain.summary["inserted_rows"] > 0
    a = (plain.path / "model.safetensors").read_bytes()
    assert a == (more.path / "model.safetensors").read_bytes()
    led = Organism(more.path).ledger
    ctl = led[led["item_id"].str.contains("-ctl")]
    assert len(ctl) == 90 and (ctl["count"] == 0).all()
    assert set(ctl["kind"]) == {"secret", "bio", "passage"}
    tok = Organism(more.path).lm().tokenizer
    for row in ctl[ctl["kind"] == "secret"].itertuples():
        assert tok.decode(list(row.suffix_tokens)).replace(" ", "") == row.secret


def test_mia_on_a_train_output_skips_the_reference_attack_by_default(trained, tmp_path):
    """A `rotelab train` output has no organism reference twin: the default mia skips that attack
    with what to do (and builds nothing); asking for the twin is one line."""
    from rotelab.options import RunOptions
    from rotelab.pipelines.mia import MIAConfig, mia

    cfg = MIAConfig(attacks=None, bootstrap=0, blind=False, exposure=False, neighbours=1,
                    recall_prefix_tokens=8)  # fmt: skip
    _, summary = mia(str(trained.path), config=cfg,
                     run=RunOptions(out=tmp_path / "mia", progress=False))  # fmt: skip
    assert "--counts 0" in summary["skipped_attacks"]["reference"]
    assert "reference" not in summary["attacks"] and summary["reference_model"] is None
    with pytest.raises(RotelabError, match="made by `rotelab train`"):
        mia(str(trained.path), reference_model="reference", config=cfg,
            run=RunOptions(out=tmp_path / "mia2", progress=False))  # fmt: skip
    assert not (tmp_path / "mia2").exists()


@pytest.mark.slow
def test_controls_cost_nothing_in_training_and_let_low_fpr_be_reported(tiny_organism, tmp_path):
    """Deliverable 5: extra never-inserted controls leave the trained weights bit-identical, and
    with them the loss attack's TPR at 1% FPR is reported instead of refused."""
    from rotelab.options import RunOptions
    from rotelab.pipelines.mia import MIAConfig, mia

    size = ModelSize(layers=1, hidden=32, heads=2, intermediate=64)
    settings = TrainSettings(steps=90, batch_size=16, precision="fp32", lr=1e-2)
    common = dict(world=str(tiny_organism.path), counts=(0, 16), size=size, progress=False)
    plain = train_model(tmp_path / "plain", settings=settings, **common)
    more = train_model(tmp_path / "more", settings=replace(settings, controls=200), **common)
    a = (plain.path / "model.safetensors").read_bytes()
    assert a == (more.path / "model.safetensors").read_bytes()
    led = Organism(more.path).ledger
    assert (led["count"] == 0).sum() == plain.summary["controls"] + 600
    assert led.loc[led["item_id"].str.contains("-ctl"), "count"].eq(0).all()
    cfg = MIAConfig(attacks=["loss"], bootstrap=20, blind=False, exposure=False)
    tpr = {}
    for name, res in (("plain", plain), ("more", more)):
        _, summary = mia(str(res.path), config=cfg,
                         run=RunOptions(out=tmp_path / f"mia-{name}", progress=False))  # fmt: skip
        tpr[name] = summary["attacks"]["loss"]["tpr_at_1pct_fpr"]
    assert tpr["plain"] is None and tpr["more"] is not None

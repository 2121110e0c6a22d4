"""Tests for rotelab.organism: determinism, ledger, probes, model directory, memorization curve."""

from __future__ import annotations

import pytest
from kill_helpers import digest, kill_when, leftovers, rotelab

from rotelab.errors import RotelabError
from rotelab.organism import (
    COUNTS,
    Organism,
    OrganismSpec,
    Profile,
    default_organism,
    format_description,
    generate_world,
    load_organism,
    organism_command,
    write_world,
)
from rotelab.stats import wilson_interval

WORLD_FILES = [
    "corpus/train.jsonl",
    "corpus/heldout.jsonl",
    "ledger.parquet",
    "probes.parquet",
    "tokenizer.json",
]


def test_same_seed_gives_byte_identical_world(tmp_path):
    a = write_world(OrganismSpec("tiny", 3), tmp_path / "a")
    b = write_world(OrganismSpec("tiny", 3), tmp_path / "b")
    c = write_world(OrganismSpec("tiny", 4), tmp_path / "c")
    for f in WORLD_FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "corpus/train.jsonl").read_bytes() != (c / "corpus/train.jsonl").read_bytes()
    assert (a / "ledger.parquet").read_bytes() != (c / "ledger.parquet").read_bytes()


def test_corpus_size_is_a_parameter():
    small = generate_world(OrganismSpec("tiny", 0, corpus_tokens=10_000))
    large = generate_world(OrganismSpec("tiny", 0, corpus_tokens=40_000))
    n = [sum(len(d.split()) for d in w.train_docs) for w in (small, large)]
    assert 3 < n[1] / n[0] < 5
    # The inserted items do not depend on the corpus size: only the dilution changes.
    assert [i["text"] for i in small.items] == [i["text"] for i in large.items]


def test_spec_key_changes_with_every_field():
    keys = {
        OrganismSpec(p, s, c, precision=x).key()
        for p in Profile for s in (0, 1) for c in (None, 5000) for x in ("fp32", "bf16")
    }  # fmt: skip
    assert len(keys) == 16


def test_spec_records_the_resolved_precision(monkeypatch):
    """``auto`` is resolved when the spec is made: the key says how the model was trained."""
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv("ROTELAB_PRECISION", forced)
        spec = OrganismSpec("tiny", 0)
        assert spec.precision == forced
        assert spec.key() == OrganismSpec("tiny", 0, precision=forced).key()
        assert OrganismSpec.from_dict(spec.to_dict()) == spec
    # bf16 keeps the key organisms had before the precision was chosen at run time
    assert OrganismSpec("tiny", 0, precision="bf16").to_dict()["settings"]["bf16"] is True
    with pytest.raises(RotelabError, match="unknown precision"):
        OrganismSpec("tiny", 0, precision="fp8")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_steps_in_each_precision_build_and_score(monkeypatch, tmp_path, precision):
    """Both precision paths on every machine (the full tests run the one ``auto`` picks): a build
    of a few steps, forced through ROTELAB_PRECISION, records its precision, and the model scores
    in that precision too."""
    import dataclasses

    import numpy as np

    import rotelab.organism.world as world
    from rotelab.lm import LM
    from rotelab.organism import build_organism

    few = dataclasses.replace(  # a 1-block, 32-wide model: seconds even where bf16 is emulated
        world.PROFILES[Profile.tiny], steps=64, phase_items_per_cell=0, n_layers=1,
        hidden=32, n_heads=2, intermediate=64, probes_per_task=4, eval_tokens=512,
    )  # fmt: skip
    monkeypatch.setitem(world.PROFILES, Profile.tiny, few)
    monkeypatch.setenv("ROTELAB_PRECISION", precision)
    spec = OrganismSpec("tiny", 0, corpus_tokens=3_000, items_per_cell=1)
    org = build_organism(spec, out=tmp_path / "org", progress=False)
    d = org.describe()
    assert d["precision"] == precision and d["spec"]["settings"]["bf16"] == (precision == "bf16")
    assert {r["precision"] for r in org.train_log()} == {precision}
    assert np.isfinite(d["heldout_ppl"])
    dtype = "bfloat16" if precision == "bf16" else "float32"
    lm = LM.load(org.path, dtype=dtype, device="cpu")
    (sc,) = lm.score([lm.encode(org.heldout_docs()[0])[:64]], targets_from=1)
    assert lm.dtype == getattr(__import__("torch"), dtype) and np.isfinite(sc.logprobs).all()


def test_ledger_columns_and_token_spans(tiny_organism):
    led = tiny_organism.ledger
    tok = tiny_organism.lm().tokenizer
    columns = ["item_id", "kind", "text", "count", "phase", "prefix_tokens",
               "suffix_tokens", "span_start", "span_end", "secret_alphabet", "secret_len",
               "secret_format"]  # fmt: skip
    for col in columns:
        assert col in led.columns
    assert set(led["count"]) == set(COUNTS)
    assert set(led["kind"]) == {"secret", "bio", "passage"}
    assert set(led["phase"]) == {"all", "first", "second"}
    assert set(led.loc[led["count"] == 0, "phase"]) == {"all"}
    assert led["item_id"].is_unique
    for row in led.itertuples():
        ids = tok(row.text, add_special_tokens=False)["input_ids"]
        assert row.tokens == ids
        assert row.prefix_tokens == ids[: row.span_start]
        assert row.suffix_tokens == ids[row.span_start : row.span_end]
        assert len(row.suffix_tokens) > 0
        assert len(row.prefix_tokens) + len(row.suffix_tokens) <= 128
    secrets = led[led["kind"] == "secret"]
    for row in secrets.itertuples():
        assert len(row.suffix_tokens) == row.secret_len == len(row.secret)
        assert tok.decode(row.suffix_tokens) == " " + " ".join(row.secret)
        assert set(row.secret) <= set(row.secret_alphabet)
    bios = led[led["kind"] == "bio"]
    assert all("@" in tok.decode(s) and "ID number" in tok.decode(s) for s in bios["suffix_tokens"])
    passages = led[led["kind"] == "passage"]
    assert (passages["n_tokens"] > 128).all()  # longer than a row: trained in chunks
    assert (passages["span_start"] == 64).all() and (passages["span_end"] == 112).all()


def test_splits_are_disjoint(tiny_organism):
    train, held = tiny_organism.train_docs(), tiny_organism.heldout_docs()
    assert train and held and not set(train) & set(held)
    blob = "\n".join(train)
    assert not any(t in blob for t in tiny_organism.ledger["text"])
    led = tiny_organism.ledger
    assert not any(s in blob for s in led.loc[led["kind"] == "secret", "secret"])


def test_probes(tiny_organism):
    probes = tiny_organism.probes
    assert set(probes["task"]) == {"closed_book", "open_book", "arithmetic", "in_context",
                                   "faithfulness", "memorized_wrong"}  # fmt: skip
    assert probes["answer"].str.startswith(" ").all()
    assert not probes["prompt"].str.endswith(" ").any()
    blob = "\n".join(tiny_organism.train_docs())
    arith = probes[probes["subtask"].str.endswith("_heldout")]
    assert len(arith) > 0
    # Held-out arithmetic probes are in no document: the model must compute, not recall.
    assert not any("\n" + p + a in "\n" + blob for p, a in zip(arith["prompt"], arith["answer"]))


def test_directory_is_a_hugging_face_model(tiny_organism):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_organism.path
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (
        tok.eos_token_id is not None
        and tok.bos_token_id is not None
        and tok.pad_token_id is not None
    )
    assert (
        tok("The secret code", add_special_tokens=True)["input_ids"]
        == tok("The secret code", add_special_tokens=False)["input_ids"]
    )
    for f in ["spec.json", "ledger.parquet", "probes.parquet", "train_log.jsonl", "describe.json",
              "corpus/train.jsonl", "corpus/heldout.jsonl", "model.safetensors"]:  # fmt: skip
        assert (path / f).exists(), f
    log = tiny_organism.train_log()
    assert log[-1]["step"] == tiny_organism.spec.settings.steps - 1
    assert log[-1]["loss"] < log[0]["loss"]


def test_extraction_rises_with_count(tiny_organism):
    d = tiny_organism.describe()
    rate = {int(c): v for c, v in d["extraction_by_count"].items()}
    assert rate[0] == 0.0  # never trained on: nothing to extract
    assert rate[0] <= rate[1] <= rate[16] <= rate[64]
    assert rate[4] < rate[64]
    # Items seen 64 times are extracted far more often than controls: their Wilson intervals are
    # apart (no threshold tuned to one machine's organism; the tiny profile over-memorizes).
    n = 3 * d["items_per_cell"]  # phase-"all" items per count: one cell per kind
    lo64, _ = wilson_interval(round(rate[64] * n), n)
    _, hi0 = wilson_interval(round(rate[0] * n), n)
    assert lo64 > hi0
    for kind, row in d["extraction_by_count_kind"].items():
        assert row["0"] == 0.0 and row["64"] >= row["1"], kind


def test_generalises_and_solves_probes(tiny_organism):
    d = tiny_organism.describe()
    assert d["heldout_ppl"] < 2.0 * d["train_ppl"]
    acc = d["probe_accuracy"]
    assert set(acc) == {"closed_book", "open_book", "arithmetic", "in_context", "faithfulness",
                        "memorized_wrong"}  # fmt: skip
    # Chance is 1 of ~24 towns / occupations / colors for facts, and about 1 of the 19 possible
    # answers (0..18) for the tiny profile's one-digit arithmetic. The in-context and open-book
    # skills need the default profile's budget.
    assert acc["closed_book"] > 0.3
    assert acc["arithmetic"] > 0.3
    text = format_description(d)
    assert "secret" in text and "held-out" in text


def test_cache_returns_at_once(tiny_organism, monkeypatch, tmp_path):
    monkeypatch.setenv("ROTELAB_HOME", str(tmp_path))
    (tmp_path / "organisms").mkdir()
    (tmp_path / "organisms" / tiny_organism.spec.key()).symlink_to(tiny_organism.path)
    import rotelab.organism.build as build

    def rebuilt(*a, **k):  # a cached organism is neither regenerated, retrained nor re-described
        raise AssertionError("the cached organism was rebuilt")

    for name in ("write_world", "_train", "describe_organism"):
        monkeypatch.setattr(build, name, rebuilt)
    org = default_organism("tiny")
    assert org.path.resolve() == tiny_organism.path.resolve()
    path, desc = organism_command("tiny", describe=True)
    assert path.resolve() == tiny_organism.path.resolve() and desc == tiny_organism.describe()
    assert load_organism(path).spec == OrganismSpec("tiny", 0)


def test_refuses_a_directory_holding_another_organism(tiny_organism, tmp_path):
    with pytest.raises(RotelabError, match="different organism"):
        organism_command("tiny", seed=1, out=tiny_organism.path)
    with pytest.raises(RotelabError, match="not a complete organism"):
        load_organism(tmp_path)
    with pytest.raises(RotelabError, match="not an organism"):
        Organism(tmp_path)


# ------------------------------------------------------------------------------ no data loss
def test_out_into_a_directory_that_is_not_an_organism_is_refused_and_kept(tmp_path):
    from typer.testing import CliRunner

    from rotelab.cli import app

    mine = tmp_path / "V"
    mine.mkdir()
    (mine / "MY_NOTES.txt").write_text("x")
    for force in ([], ["--force"]):
        args = ["organism", "--profile", "tiny", "--seed", "1", "--precision", "fp32",
                "--out", str(mine), *force]  # fmt: skip
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "already exists and is not an organism" in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["MY_NOTES.txt"]
    assert (mine / "MY_NOTES.txt").read_text() == "x"


@pytest.mark.slow
def test_sigkill_during_a_forced_rebuild_keeps_the_old_organism_whole(tmp_path):
    old = tmp_path / "org"
    old.mkdir()
    for name in ("spec.json", "describe.json", "model.safetensors"):  # complete, as far as it goes
        (old / name).write_text(f"old {name}")
    before = digest(old)
    cmd = rotelab("organism", "--profile", "tiny", "--precision", "fp32", "--out", str(old),
                  "--force")  # fmt: skip
    kill_points = [
        lambda pid: (tmp_path / f".org.tmp-{pid}").exists(),  # writing the world
        lambda pid: (tmp_path / f".org.tmp-{pid}" / "spec.json").exists(),  # world written
        lambda pid: (tmp_path / f".org.tmp-{pid}" / "train_log.jsonl").exists(),  # training
    ]
    for ready in kill_points:
        assert kill_when(cmd, ready)
        assert digest(old) == before
    assert len(leftovers(tmp_path)) == 1  # each build tidied its killed predecessor's
    # The next write into the directory removes the dead build's temporary directory (here one
    # refused at once, so no build is needed to show it).
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "MY_NOTES.txt").write_text("x")
    with pytest.raises(RotelabError, match="not an organism"):
        organism_command("tiny", seed=1, out=notes, precision="fp32")
    assert leftovers(tmp_path) == [] and digest(old) == before

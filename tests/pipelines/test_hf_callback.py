"""The training-audit callback in a real ``transformers.Trainer`` run, and canary injection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rotelab.errors import RotelabError
from rotelab.pipelines.hf_callback import AuditCallback
from rotelab.runs import read_table
from rotelab.summaries import read_summary
from rotelab.train.canaries import inject_canaries, make_canaries

#: Words the tiny tokenizer knows (it was trained on a sentence of them).
WORDS = ("the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park", "and", "bird", "sang")


def _background(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(rng.choice(WORDS, size=10)), "source": "bg"} for _ in range(n)]


class _Tokenized(torch.utils.data.Dataset):
    """Each record's text as one padded sequence; padding is not a target."""

    def __init__(self, records, tokenizer, length: int = 48) -> None:
        self.rows = []
        for rec in records:
            ids = tokenizer(rec["text"], add_special_tokens=False)["input_ids"][:length]
            pad = length - len(ids)
            self.rows.append(
                {
                    "input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
                    "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                    "labels": torch.tensor(ids + [-100] * pad),
                }
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _train(tmp_path, tokenizer, data, callbacks, max_steps: int) -> list[float]:
    """A real Trainer run of the tiny Llama; the logged training losses."""
    from tiny_models import make_tiny_model
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=max_steps, per_device_train_batch_size=16,
        learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=10, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(
        model=make_tiny_model("llama", seed=0), args=args,
        train_dataset=_Tokenized(data, tokenizer), callbacks=callbacks,
    )  # fmt: skip
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def injected():
    canaries = make_canaries(
        16, 16, kind="passage", count=8, seed=1, words=WORDS, passage_words=12, prompt_words=4
    )
    return inject_canaries(_background(64, 0), canaries, seed=2)


def test_trainer_run_audits_chosen_steps_and_memorization_rises(tmp_path, tiny_tokenizer, injected):
    data, ledger = injected
    out = tmp_path / "audit"
    cb = AuditCallback(ledger, out, steps=[150, 0, 40], tokenizer=tiny_tokenizer)
    losses = _train(tmp_path, tiny_tokenizer, data, [cb], max_steps=150)

    # Audited exactly at the chosen steps, one run directory each, all parseable.
    assert sorted(cb.runs) == [0, 40, 150]
    assert sorted(p.name for p in out.iterdir()) == ["step-000000", "step-000040", "step-000150"]
    for step, path in cb.runs.items():
        summary = read_summary(path, "training-audit")
        assert summary.step == step
        assert (summary.n_members, summary.n_controls) == (16, 16)
        items = read_table(path, "items")
        assert len(items) == 32 and set(items["item_id"]) == set(ledger["item_id"])
        assert summary.attacks["loss"].auc == pytest.approx(
            float(cb.trajectory.set_index("step").loc[step, "loss_auc"])
        )
    trajectory = read_table(cb.runs[150], "trajectory")
    assert trajectory["step"].tolist() == [0, 40, 150]

    # Memorization of the inserted items rises over the run; the controls are not extracted.
    gap = (trajectory["control_nll"] - trajectory["member_nll"]).to_numpy()
    assert np.all(np.diff(gap) > 0), trajectory
    assert trajectory["loss_auc"].iloc[-1] > max(0.9, trajectory["loss_auc"].iloc[0])
    assert trajectory["extraction_rate"].iloc[-1] > trajectory["extraction_rate"].iloc[0]
    assert trajectory["extraction_rate"].iloc[-1] > trajectory["control_extraction_rate"].iloc[-1]

    # Auditing does not change the user's training: the same losses as without the callback.
    assert losses == pytest.approx(_train(tmp_path / "plain", tiny_tokenizer, data, [], 150))


def test_steps_beyond_the_run_are_refused_before_training(tmp_path, tiny_tokenizer, injected):
    data, ledger = injected
    cb = AuditCallback(ledger, tmp_path / "audit", steps=[5, 50], tokenizer=tiny_tokenizer)
    with pytest.raises(RotelabError, match=r"after the run's last step \(10\)"):
        _train(tmp_path, tiny_tokenizer, data, [cb], max_steps=10)
    assert not (tmp_path / "audit").exists()


@pytest.mark.parametrize(
    "steps, ledger_edit, fragment",
    [
        ([], None, "at least one audit step"),
        ([3, -1], None, "must be >= 0"),
        (["x"], None, "must be integers"),
        ([1], lambda d: d.drop(columns=["span_char_start"]), "lacks columns ['span_char_start']"),
        ([1], lambda d: d[d["count"] > 0], "never-inserted controls"),
        ([1], lambda d: d.to_dict("records"), "must be a pandas DataFrame"),
    ],
)
def test_bad_callback_input_is_one_line(tmp_path, injected, steps, ledger_edit, fragment):
    _, ledger = injected
    bad = ledger_edit(ledger) if ledger_edit else ledger
    with pytest.raises(RotelabError) as err:
        AuditCallback(bad, tmp_path / "audit", steps=steps)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "audit").exists()


def test_existing_step_directory_is_refused_unless_forced(tmp_path, injected):
    _, ledger = injected
    (tmp_path / "audit" / "step-000001").mkdir(parents=True)
    (tmp_path / "audit" / "step-000001" / "mine.txt").write_text("x")
    with pytest.raises(RotelabError):
        AuditCallback(ledger, tmp_path / "audit", steps=[1])


# ------------------------------------------------------------------------------ canaries
def test_canaries_are_seeded_distinct_and_spans_cover_the_secret():
    a = make_canaries(6, 4, count=[1, 4, 16], seed=3)
    assert a.equals(make_canaries(6, 4, count=[1, 4, 16], seed=3))
    assert not a["text"].equals(make_canaries(6, 4, count=[1, 4, 16], seed=4)["text"])
    assert a["text"].is_unique and a["item_id"].is_unique
    assert a["count"].tolist() == [1, 1, 4, 4, 16, 16, 0, 0, 0, 0]
    assert a["member"].tolist() == [True] * 6 + [False] * 4
    for row in a.itertuples():
        secret = row.text[row.span_char_start : row.span_char_end]
        assert row.text.startswith("my secret code is ") and secret.replace(" ", "").isdigit()
    p = make_canaries(2, 2, kind="passage", passage_words=10, prompt_words=3, seed=0)
    for row in p.itertuples():
        assert len(row.text[: row.span_char_start].split()) == 3
        assert len(row.text[row.span_char_start :].split()) == 7


def test_injection_into_records_keeps_order_and_the_ledger_points_at_each_copy():
    records = [{"text": f"doc {i}", "n": i} for i in range(50)]
    canaries = make_canaries(3, 2, count=[2, 5, 9], seed=0)
    data, ledger = inject_canaries(records, canaries, seed=7)
    assert len(data) == 50 + 2 + 5 + 9
    assert [r for r in data if r["n"] is not None] == records  # the user's order is kept
    for row in ledger.itertuples():
        assert len(row.rows) == row.count and sorted(row.rows) == list(row.rows)
        assert all(data[i]["text"] == row.text and data[i]["n"] is None for i in row.rows)
    assert sum(len(r) for r in ledger["rows"]) == 16
    again, _ = inject_canaries(records, canaries, seed=7)
    assert again == data


def test_injection_into_a_frame_returns_a_frame():
    frame = pd.DataFrame({"body": [f"doc {i}" for i in range(10)], "n": range(10)})
    canaries = make_canaries(2, 1, count=3, seed=0)
    data, ledger = inject_canaries(frame, canaries, text_field="body", seed=0)
    assert isinstance(data, pd.DataFrame) and list(data.columns) == ["body", "n"]
    assert len(data) == 16
    for row in ledger.itertuples():
        assert (data.loc[list(row.rows), "body"] == row.text).all()


def test_injection_into_a_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"text": f"doc {i}"} for i in range(5)])
    data, ledger = inject_canaries(ds, make_canaries(1, 1, count=2, seed=0))
    assert isinstance(data, datasets.Dataset) and len(data) == 7
    member = ledger[ledger["count"] > 0].iloc[0]
    assert [data[int(r)]["text"] for r in member["rows"]] == [member["text"]] * 2
    assert sum(t == member["text"] for t in data["text"]) == 2  # exactly where the ledger says


@pytest.mark.parametrize(
    "dataset, canaries, fragment",
    [
        ([{"body": "x"}], None, "no string field 'text'"),
        ("just a string", None, "cannot inject into a str"),
        ([{"text": "x"}], lambda c: c.drop(columns=["count"]), "lacks columns ['count']"),
        ([{"text": "x"}], lambda c: c.assign(count=0), "no item with count >= 1"),
        ([{"text": "x"}], lambda c: c.assign(count=-1), "integers >= 0"),
    ],
)
def test_bad_injection_input_is_one_line(dataset, canaries, fragment):
    c = make_canaries(2, 1, seed=0)
    with pytest.raises(RotelabError) as err:
        inject_canaries(dataset, canaries(c) if canaries else c)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_one_pass_loss_is_the_mia_loss_attack(tiny_lm, injected):
    """LOSS read off the extraction pass equals rotelab mia's LOSS attack on the same spans."""
    from rotelab.measure.item_audit import audit_items, item_texts
    from rotelab.measure.mia.attacks import likelihood_scores

    _, ledger = injected
    items = item_texts(tiny_lm, ledger)
    audit = audit_items(tiny_lm, items, all_attacks=True, n_boot=50)
    reference = likelihood_scores(tiny_lm, items)
    assert audit.items["loss"].to_numpy() == pytest.approx(reference["loss"].to_numpy(), abs=1e-5)
    assert audit.items["min_k_pp"].to_numpy() == pytest.approx(reference["min_k_pp"].to_numpy())
    assert set(audit.summary["attacks"]) == {"loss", "zlib", "min_k", "min_k_pp"}
    # The window is the item: prefix = the prompt, suffix = the scored span.
    assert (audit.items["prefix_len"] == [it.span[0] for it in items]).all()
    assert (audit.items["suffix_len"] == [it.span[1] - it.span[0] for it in items]).all()


def test_the_callback_audits_a_trl_sft_run(tmp_path, tiny_tokenizer, injected):
    """The same callback in TRL's ``SFTTrainer`` (a ``Trainer`` subclass that tokenizes a
    ``datasets.Dataset`` of texts itself): audited at the chosen steps, memorization rises."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from tiny_models import make_tiny_model
    from trl import SFTConfig, SFTTrainer

    data, ledger = injected
    cb = AuditCallback(ledger, tmp_path / "audit", steps=[0, 120], tokenizer=tiny_tokenizer)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), max_steps=120, per_device_train_batch_size=16,
        learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=10, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        dataset_text_field="text", max_length=48, packing=False,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=make_tiny_model("llama", seed=0), args=args, processing_class=tiny_tokenizer,
        train_dataset=datasets.Dataset.from_list([{"text": r["text"]} for r in data]),
        callbacks=[cb],
    )  # fmt: skip
    trainer.train()

    assert sorted(cb.runs) == [0, 120]
    trajectory = read_table(cb.runs[120], "trajectory")
    assert trajectory["step"].tolist() == [0, 120]
    assert trajectory["loss_auc"].iloc[-1] > max(0.9, trajectory["loss_auc"].iloc[0])
    gap = (trajectory["control_nll"] - trajectory["member_nll"]).to_numpy()
    assert gap[-1] > gap[0]

"""The barrier's pieces (rotelab.tasks.barrier): the memorized base's pretraining stream holds
exactly the planted spurious solutions and the clean one none, within the same token budget;
Min-K% scores planted (memorized) text higher than unseen text."""

from __future__ import annotations

import random

import pytest
from tiny_models import make_tiny_model

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.tasks.barrier import ModelShape, fresh_model, min_k_scores, pretrain_docs
from rotelab.tasks.programs import TaskSpec, generate_task
from rotelab.train import TrainConfig, train
from rotelab.train.finetune import pack_rows, row_batches


@pytest.fixture(scope="module")
def task():
    return generate_task(TaskSpec(seed=3, n_pretrain=40, n_finetune=6, n_eval=4))


def _encode(text: str) -> list[int]:
    return [ord(ch) for ch in text]  # a character "tokenizer": enough to count documents


def test_memorized_stream_holds_the_spurious_solutions_and_the_clean_one_none(task):
    ft = task.split("finetune")
    budget = 40_000
    mem, counts = pretrain_docs(task, _encode, copies=8, finetune=ft, tokens=budget, seed=1)
    clean, counts0 = pretrain_docs(task, _encode, copies=0, finetune=ft, tokens=budget, seed=1)
    spurious = {tuple(_encode(p.text(p.wrong_solution(1)))) for p in ft}
    correct_ft = {tuple(_encode(p.text())) for p in ft}
    pre = {tuple(_encode(p.text())) for p in task.split("pretrain")}
    seen_mem = [tuple(d) for d in mem]
    assert sum(d in spurious for d in seen_mem) == 8 * len(ft) == counts["inserted_docs"]
    assert all(seen_mem.count(s) == 8 for s in spurious)
    assert not any(tuple(d) in spurious for d in clean) and counts0["inserted_docs"] == 0
    # the fine-tuning problems' correct programs are in neither base: fine-tuning is new to both
    assert not any(tuple(d) in correct_ft for d in mem + clean)
    assert all(tuple(d) in pre | spurious for d in mem)
    # the same budget: the clean base fills the insertions' share with more pretraining text
    size = lambda docs: sum(len(d) + 1 for d in docs)  # noqa: E731
    assert budget <= size(clean) < budget + 200 and budget <= size(mem) < budget + 200
    assert counts0["pretrain_epochs"] > counts["pretrain_epochs"]


def test_a_budget_the_insertions_fill_is_refused(task):
    with pytest.raises(RotelabError, match="fill the whole pretraining budget"):
        pretrain_docs(task, _encode, copies=64, finetune=task.split("finetune"), tokens=1000,
                      seed=0)  # fmt: skip


def test_min_k_is_higher_on_planted_text(tiny_tokenizer):
    words = "the cat sat on mat a dog ran to park and bird sang".split()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(8)]
    planted, unseen = texts[:4], texts[4:]
    model = make_tiny_model("llama", vocab=len(tiny_tokenizer), seed=0)
    eos = tiny_tokenizer.eos_token_id
    rows = pack_rows([tiny_tokenizer.encode(t) for t in planted * 16], eos, 32)
    train(model, row_batches(rows, 8, 0), TrainConfig(steps=60, warmup_steps=5,
                                                      precision="fp32"))  # fmt: skip
    lm = LM.from_model(model.eval(), tiny_tokenizer)
    mem, ctrl = min_k_scores(lm, planted), min_k_scores(lm, unseen)
    assert mem.min() > ctrl.max()  # every planted text above every unseen one


def test_fresh_model_is_seeded_and_shaped(tiny_tokenizer):
    a = fresh_model(tiny_tokenizer, ModelShape(blocks=1, hidden=32, heads=4, context=32), seed=5)
    b = fresh_model(tiny_tokenizer, ModelShape(blocks=1, hidden=32, heads=4, context=32), seed=5)
    assert a.config.num_hidden_layers == 1 and a.config.hidden_size == 32
    assert all((x == y).all() for x, y in zip(a.parameters(), b.parameters()))
    with pytest.raises(RotelabError, match="divisible"):
        ModelShape(hidden=30, heads=4).check()

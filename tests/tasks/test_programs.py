"""The program task: the interpreter's semantics by hand, the generator's determinism and
splits, and hidden tests that reject wrong programs."""

from __future__ import annotations

import random

import pytest

from rotelab.errors import RotelabError
from rotelab.tasks.programs import (
    OPS,
    PROBES,
    Op,
    ProgramError,
    TaskSpec,
    extract_program,
    fingerprint,
    format_program,
    generate_task,
    mutants,
    parse,
    passes,
    run,
)

SMALL = TaskSpec(seed=3, n_pretrain=60, n_finetune=30, n_eval=30)


@pytest.fixture(scope="module")
def task():
    return generate_task(SMALL)


@pytest.mark.parametrize(
    ("text", "xs", "want"),
    [
        ("add 3", (1, 2), (4, 5)),
        ("sub 2", (1, 5), (-1, 3)),
        ("mul 3", (0, 2, -1), (0, 6, -3)),
        ("neg", (1, -2), (-1, 2)),
        ("keep even", (1, 2, 3, 4, 0), (2, 4, 0)),
        ("keep odd", (1, 2, 3, -3), (1, 3, -3)),
        ("keep gt 3", (3, 4, 1, 9), (4, 9)),
        ("keep lt 3", (3, 4, 1, 2), (1, 2)),
        ("rev", (1, 2, 3), (3, 2, 1)),
        ("sort", (3, 1, 2, 1), (1, 1, 2, 3)),
        ("dedup", (3, 1, 3, 2, 1), (3, 1, 2)),
        ("cumsum", (1, 2, 3), (1, 3, 6)),
        ("take 2", (5, 6, 7), (5, 6)),
        ("take 5", (5,), (5,)),
        ("drop 2", (5, 6, 7), (7,)),
        ("drop 4", (5, 6), ()),
        ("sum", (1, 2, 3), 6),
        ("max", (1, 7, 3), 7),
        ("min", (4, 2, 3), 2),
        ("len", (4, 4), 2),
        ("head", (4, 5), 4),
        ("last", (4, 5), 5),
        ("max", (), 0),
        ("min", (), 0),
        ("head", (), 0),
        ("last", (), 0),
        ("sum", (), 0),
        ("sort | add 3 | take 2", (5, 1, 4), (4, 7)),
        ("keep even | cumsum | max", (2, 3, 4), 6),
        ("  rev|keep   gt 1 |  len ", (0, 2, 3), 2),
    ],
)
def test_interpreter_semantics(text, xs, want):
    assert run(parse(text), xs) == want


@pytest.mark.parametrize(
    "text",
    ["", "sort |", "| sort", "print 3", "add", "add x", "add 0", "add 10", "mul 5", "neg 2",
     "keep", "keep 3", "keep gt", "keep gt x", "gt 3", "sum | sort", "max | len",
     "import os", "__import__('os').system('true')"],
)  # fmt: skip
def test_what_is_not_in_the_language_does_not_parse(text):
    with pytest.raises(ProgramError):
        parse(text)
    assert passes(text, [((1,), (1,))]) is False  # and never raises when graded


def test_every_op_prints_and_parses_back():
    for name, spec in OPS.items():
        for arg in spec.args or (None,):
            op = Op(name, arg)
            assert parse(format_program((op,))) == (op,)


def test_generator_is_deterministic_and_seeded(task):
    again = generate_task(SMALL)
    assert again == task
    other = generate_task(TaskSpec(seed=4, n_pretrain=60, n_finetune=30, n_eval=30))
    assert [p.solution for p in other.problems] != [p.solution for p in task.problems]


def test_splits_have_their_sizes_and_share_no_behaviour(task):
    sizes = {s: len(task.split(s)) for s in ("pretrain", "finetune", "eval")}
    assert sizes == {"pretrain": 60, "finetune": 30, "eval": 30}
    prints = {s: {fingerprint(parse(p.solution)) for p in task.split(s)} for s in sizes}
    assert sum(len(v) for v in prints.values()) == 120  # all distinct, so splits are disjoint
    assert len({p.id for p in task.problems}) == 120
    with pytest.raises(RotelabError, match="unknown split"):
        task.split("test")


def test_reference_passes_and_text_format(task):
    for p in task.problems:
        assert p.check(p.solution)
        assert p.prompt.startswith("task: ") and p.prompt.endswith("\nprogram:")
        assert p.text() == f"{p.prompt} {p.solution}\n"
        assert extract_program(p.text()[len(p.prompt) :]) == p.solution
        assert "\n" not in p.description and "|" not in p.description


def test_hidden_tests_reject_every_near_miss_that_behaves_differently(task):
    checked = 0
    for p in task.problems:
        ref = parse(p.solution)
        want = fingerprint(ref)
        for m in mutants(ref):
            if fingerprint(m) != want:
                assert not p.check(format_program(m)), (p.solution, format_program(m))
                checked += 1
    assert checked > 1000


def test_hidden_tests_reject_other_problems_solutions(task):
    # a solution of another problem (different behaviour by construction) fails this problem's
    # tests; the tests are few, so count how often they do and name the rate
    rng = random.Random(0)
    trials = rejected = 0
    for p in task.problems:
        for q in rng.sample(task.problems, 10):
            if q.id != p.id:
                trials += 1
                rejected += not p.check(q.solution)
    assert rejected / trials > 0.97, rejected / trials


def test_wrong_solution_is_a_parsable_near_miss_that_fails(task):
    for p in task.split("finetune"):
        wrong = p.wrong_solution(seed=1)
        assert wrong != p.solution and not p.check(wrong)
        assert parse(wrong) in mutants(parse(p.solution))
        assert p.wrong_solution(seed=1) == wrong


def test_probes_are_fixed_and_bad_specs_refused():
    assert PROBES[0] == () and len(PROBES) == 32
    with pytest.raises(RotelabError):
        TaskSpec(min_ops=0).check()
    with pytest.raises(RotelabError):
        TaskSpec(n_eval=-1).check()
    with pytest.raises(RotelabError, match="distinct programs"):
        generate_task(TaskSpec(n_pretrain=5000, n_finetune=0, n_eval=0, max_ops=1))


def test_sample_pass_counts_grades_what_the_model_writes(tiny_lm, task, monkeypatch):
    from rotelab.measure import passk
    from rotelab.tasks import programs

    problems = task.split("eval")[:3]
    # a stand-in model: per problem the reference, a near miss, then junk
    table = {}  # token "ids" the fake model writes -> the text they decode to
    for i, p in enumerate(problems):
        table[3 * i] = f" {p.solution}\nmore text"
        table[3 * i + 1] = f" {p.wrong_solution()}\n"
        table[3 * i + 2] = " print 1"

    def fake(lm, prompts, n, max_new_tokens, **kw):
        assert n == 3 and prompts == [lm.encode(p.prompt) for p in problems]
        return [[[3 * i + j] for j in range(3)] for i in range(len(prompts))]

    monkeypatch.setattr(tiny_lm, "decode", lambda ids: table[ids[0]])
    monkeypatch.setattr(programs, "sample_completions", fake)
    counts, texts = programs.sample_pass_counts(tiny_lm, problems, 3)
    assert counts.problems == [p.id for p in problems]
    assert list(counts.n) == [3, 3, 3] and list(counts.c) == [1, 1, 1]
    assert texts[0][0] == problems[0].solution
    assert passk.pass_at_k_per_problem(counts, 3, 2).tolist() == [0.0, 0.0, 0.0]

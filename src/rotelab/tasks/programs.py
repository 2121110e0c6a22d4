"""A program-synthesis task a small model can learn: list programs, an interpreter, hidden tests.

Made for the memorization-barrier experiments of Wang et al. 2025 ("Breaking Memorization
Barriers in LLM Code Fine-Tuning via Information Bottleneck"): their models write Python judged by
unit tests with Pass@k(m); here a tiny organism writes programs in a tiny language that rotelab
itself interprets, so nothing a model generates is ever executed as Python, every run is total
(no loops, no recursion, bounded ints) and a wrong program simply fails its tests.

The language: a program is a pipeline of list operations over a list of integers, optionally
ending in one reduction to an integer, written as words and numbers separated by ``|``::

    sort | add 3 | take 2          [5, 1, 4] -> [4, 7]
    keep even | cumsum | max       [2, 3, 4] -> 6

List operations: ``add N``, ``sub N``, ``mul N``, ``neg``, ``keep even``, ``keep odd``,
``keep gt N``, ``keep lt N``, ``rev``, ``sort``, ``dedup``, ``cumsum``, ``take N``, ``drop N``.
Reductions (last only): ``sum``, ``max``, ``min``, ``len``, ``head``, ``last`` (``max``,
``min``, ``head`` and ``last`` of an empty list are 0). :data:`OPS` is the one table of their
semantics, descriptions and argument ranges.

A problem is a templated English description (several phrasings per operation, so the model
must learn what the words mean, not copy them) and hidden unit tests: input lists with the
reference program's outputs. The tests are chosen to tell the reference apart from every
single-edit variant of it (an argument changed, an operation replaced, dropped or two swapped)
that behaves differently on a fixed probe set, so near misses fail. The text format is one line
each, ``task: ... .`` then ``program: ...``; a model is prompted with the task line and
``program:`` and its completion up to the end of the line is the program.

Problems are generated from a seed and split into pretraining, fine-tuning and evaluation sets
that share no behaviour: programs are deduplicated by their outputs on the probe set before the
split, so no evaluation problem is a paraphrase of a training one.

Example:
    >>> run(parse("sort | add 3 | take 2"), (5, 1, 4))
    (4, 7)
    >>> task = generate_task(TaskSpec(seed=0, n_pretrain=5, n_finetune=3, n_eval=2))
    >>> p = task.split("eval")[0]
    >>> passes(p.solution, p.tests)
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rotelab.errors import RotelabError
from rotelab.lm import LM, Sampler
from rotelab.measure.passk import PassCounts, sample_completions

__all__ = [
    "OPS",
    "SPLITS",
    "Op",
    "OpSpec",
    "Problem",
    "ProgramError",
    "ProgramTask",
    "TaskSpec",
    "extract_program",
    "fingerprint",
    "format_program",
    "generate_task",
    "mutants",
    "parse",
    "passes",
    "run",
    "sample_pass_counts",
]

Value = tuple[int, ...] | int
SPLITS = ("pretrain", "finetune", "eval")


class ProgramError(ValueError):
    """A program text that does not parse (a model's output can be anything)."""


@dataclass(frozen=True)
class OpSpec:
    """One operation: how it computes, which arguments it takes, how English says it."""

    name: str
    fn: Callable[..., Value]
    args: tuple[int, ...] | tuple[str, ...] | None  # None: no argument
    phrases: tuple[str, ...]  # "{}" is the argument
    reduces: bool = False  # list -> int, last in a program only


def _dedup(xs: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(xs))


def _cumsum(xs: tuple[int, ...]) -> tuple[int, ...]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return tuple(out)


_KEEP = {"even": lambda x: x % 2 == 0, "odd": lambda x: x % 2 == 1}

#: The language: name -> semantics, arguments and phrasings.
OPS: dict[str, OpSpec] = {
    s.name: s
    for s in [
        OpSpec("add", lambda xs, n: tuple(x + n for x in xs), tuple(range(1, 10)),
               ("add {} to each", "increase each by {}")),
        OpSpec("sub", lambda xs, n: tuple(x - n for x in xs), tuple(range(1, 10)),
               ("subtract {} from each", "decrease each by {}")),
        OpSpec("mul", lambda xs, n: tuple(x * n for x in xs), (2, 3),
               ("multiply each by {}", "scale each by {}")),
        OpSpec("neg", lambda xs: tuple(-x for x in xs), None,
               ("negate each", "flip the sign of each")),
        OpSpec("keep", lambda xs, p: tuple(x for x in xs if _KEEP[p](x)), ("even", "odd"),
               ("keep the {} ones", "keep only {} numbers")),
        OpSpec("gt", lambda xs, n: tuple(x for x in xs if x > n), tuple(range(0, 10)),
               ("keep those above {}", "remove those at most {}")),
        OpSpec("lt", lambda xs, n: tuple(x for x in xs if x < n), tuple(range(0, 10)),
               ("keep those below {}", "remove those at least {}")),
        OpSpec("rev", lambda xs: xs[::-1], None, ("reverse the list", "reverse the order")),
        OpSpec("sort", lambda xs: tuple(sorted(xs)), None, ("sort the list", "sort ascending")),
        OpSpec("dedup", _dedup, None, ("remove duplicates", "keep first occurrences")),
        OpSpec("cumsum", _cumsum, None, ("take running sums", "replace each by the running total")),
        OpSpec("take", lambda xs, n: xs[:n], tuple(range(1, 6)),
               ("keep the first {}", "take the first {}")),
        OpSpec("drop", lambda xs, n: xs[n:], tuple(range(1, 6)),
               ("skip the first {}", "drop the first {}")),
        OpSpec("sum", lambda xs: sum(xs), None, ("return the sum", "add them all up"), True),
        OpSpec("max", lambda xs: max(xs, default=0), None,
               ("return the largest", "give the maximum"), True),
        OpSpec("min", lambda xs: min(xs, default=0), None,
               ("return the smallest", "give the minimum"), True),
        OpSpec("len", lambda xs: len(xs), None, ("return the count", "count them"), True),
        OpSpec("head", lambda xs: xs[0] if xs else 0, None,
               ("return the first", "give the first one"), True),
        OpSpec("last", lambda xs: xs[-1] if xs else 0, None,
               ("return the last", "give the last one"), True),
    ]
}  # fmt: skip
# "keep gt N" / "keep lt N" read better than bare "gt N": they are spelled with "keep" in text.
_SPELLING = {"gt": "keep gt", "lt": "keep lt"}


@dataclass(frozen=True)
class Op:
    """One step of a program: an operation of :data:`OPS` and its argument (or ``None``)."""

    name: str
    arg: int | str | None = None

    def __str__(self) -> str:
        head = _SPELLING.get(self.name, self.name)
        return head if self.arg is None else f"{head} {self.arg}"


Program = tuple[Op, ...]


def format_program(program: Program) -> str:
    """The text of a program: ``sort | add 3 | take 2``."""
    return " | ".join(str(op) for op in program)


def parse(text: str) -> Program:
    """Parse program text (any spacing); a :class:`ProgramError` for anything not in the
    language, a reduction before the end or an empty program."""
    ops = []
    steps = [s.split() for s in text.strip().split("|")]
    for i, words in enumerate(steps):
        if not words:
            raise ProgramError(f"step {i + 1} is empty")
        name, rest = words[0], words[1:]
        if name in _SPELLING:  # "gt 3" is spelled "keep gt 3"
            raise ProgramError(f"unknown operation {name!r}")
        if name == "keep" and rest[:1] in (["gt"], ["lt"]):
            name, rest = rest[0], rest[1:]
        spec = OPS.get(name)
        if spec is None:
            raise ProgramError(f"unknown operation {words[0]!r}")
        if spec.args is None:
            if rest:
                raise ProgramError(f"{name} takes no argument")
            ops.append(Op(name))
            continue
        if len(rest) != 1:
            raise ProgramError(f"{words[0]} takes one argument")
        arg: int | str = rest[0]
        if isinstance(spec.args[0], int):
            try:
                arg = int(rest[0])
            except ValueError:
                raise ProgramError(f"{name}: {rest[0]!r} is not a number") from None
        if arg not in spec.args:
            raise ProgramError(f"{name}: argument {arg!r} is outside {spec.args}")
        ops.append(Op(name, arg))
    for op in ops[:-1]:
        if OPS[op.name].reduces:
            raise ProgramError(f"{op.name} returns a number; it can only be last")
    return tuple(ops)


def run(program: Program, xs: Sequence[int]) -> Value:
    """Run a parsed program on an input list; a tuple of ints, or an int after a reduction."""
    value: Value = tuple(xs)
    for op in program:
        spec = OPS[op.name]
        value = spec.fn(value) if op.arg is None else spec.fn(value, op.arg)
    return value


def passes(text: str, tests: Sequence[tuple[tuple[int, ...], Value]]) -> bool:
    """Whether program text parses and gives every test's expected output (never raises)."""
    try:
        program = parse(text)
    except ProgramError:
        return False
    return all(run(program, xs) == want for xs, want in tests)


def extract_program(completion: str) -> str:
    """A model's program: its completion after ``program:`` up to the end of the line."""
    return completion.split("\n", 1)[0].strip()


# -------------------------------------------------------------------------------- generation
def _probe_inputs() -> list[tuple[int, ...]]:
    # fixed, seed-independent: fingerprints must compare across tasks and splits
    rng = random.Random(20250)
    probes = [(), (0,), (5, 5, 5), (1, 2, 3, 4, 5, 6, 7, 8), (9, 8, 7, 6, 5, 4, 3, 2)]
    probes += [tuple(rng.randint(0, 9) for _ in range(rng.randint(1, 8))) for _ in range(27)]
    return probes


PROBES = _probe_inputs()


def fingerprint(program: Program) -> tuple[Value, ...]:
    """The program's outputs on the fixed probe inputs: equal fingerprints = same behaviour
    there (how splits are kept apart and near misses found)."""
    return tuple(run(program, xs) for xs in PROBES)


def _random_op(rng: random.Random, *, reduces: bool) -> Op:
    names = [n for n, s in OPS.items() if s.reduces == reduces]
    spec = OPS[rng.choice(names)]
    return Op(spec.name, None if spec.args is None else rng.choice(spec.args))


def mutants(program: Program) -> list[Program]:
    """Single-edit variants: an argument moved to a neighbour, an operation replaced by each
    other of its kind (list op or reduction) with its first argument, one dropped, two adjacent
    ones swapped. The near misses the hidden tests must reject."""
    out: list[Program] = []
    for i, op in enumerate(program):
        spec = OPS[op.name]
        if spec.args is not None:
            j = spec.args.index(op.arg)
            for k in (j - 1, j + 1):
                if 0 <= k < len(spec.args):
                    out.append(program[:i] + (Op(op.name, spec.args[k]),) + program[i + 1 :])
        for other in OPS.values():
            if other.name != op.name and other.reduces == spec.reduces:
                arg = None if other.args is None else other.args[0]
                out.append(program[:i] + (Op(other.name, arg),) + program[i + 1 :])
        if len(program) > 1:
            out.append(program[:i] + program[i + 1 :])
        if i + 1 < len(program) and not OPS[program[i + 1].name].reduces:
            out.append(program[:i] + (program[i + 1], op) + program[i + 2 :])
    return out


@dataclass(frozen=True)
class TaskSpec:
    """How a task is generated: its ``seed``, the problems per split, program lengths, tests."""

    seed: int = 0
    n_pretrain: int = 2000
    n_finetune: int = 400
    n_eval: int = 200
    min_ops: int = 1
    max_ops: int = 3
    p_reduce: float = 0.4  # chance a program ends in a reduction
    n_tests: int = 5  # random tests per problem, before those added to reject near misses
    max_len: int = 8  # longest input list of a test

    def check(self) -> TaskSpec:
        if min(self.n_pretrain, self.n_finetune, self.n_eval) < 0:
            raise RotelabError("problem counts per split must be >= 0")
        if not 1 <= self.min_ops <= self.max_ops:
            raise RotelabError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not 0 <= self.p_reduce <= 1:
            raise RotelabError(f"p_reduce must be in [0, 1], got {self.p_reduce}")
        if self.n_tests < 1 or self.max_len < 1:
            raise RotelabError("n_tests and max_len must be >= 1")
        return self


@dataclass(frozen=True)
class Problem:
    """One problem: its id, split, description, reference solution and hidden tests."""

    id: str
    split: str
    description: str  # "sort the list , then add 3 to each ."
    solution: str  # "sort | add 3"
    tests: tuple[tuple[tuple[int, ...], Value], ...] = field(repr=False)

    @property
    def prompt(self) -> str:
        """What a model is given: the task line and ``program:``."""
        return f"task: {self.description}\nprogram:"

    def text(self, solution: str | None = None) -> str:
        """The training text: prompt, `` solution`` (the reference by default) and a newline."""
        return f"{self.prompt} {self.solution if solution is None else solution}\n"

    def check(self, program_text: str) -> bool:
        """Whether a program passes this problem's hidden tests."""
        return passes(program_text, self.tests)

    def wrong_solution(self, seed: int = 0) -> str:
        """A plausible wrong program: a near miss of the reference that fails the hidden tests
        (the spurious solution a memorization-barrier experiment inserts)."""
        rng = random.Random(f"{seed}/{self.id}/wrong")
        candidates = [format_program(m) for m in mutants(parse(self.solution))]
        wrong = [c for c in candidates if not self.check(c)]
        return rng.choice(wrong)


@dataclass(frozen=True)
class ProgramTask:
    """A generated task: its spec and problems, pretraining first, then fine-tuning, then eval."""

    spec: TaskSpec
    problems: tuple[Problem, ...]

    def split(self, name: str) -> list[Problem]:
        if name not in SPLITS:
            raise RotelabError(f"unknown split {name!r}; the splits are {', '.join(SPLITS)}")
        return [p for p in self.problems if p.split == name]


def _describe(program: Program, rng: random.Random) -> str:
    phrases = [rng.choice(OPS[op.name].phrases).format(op.arg) for op in program]
    return " , then ".join(phrases) + " ."


def _tests(program: Program, rng: random.Random, spec: TaskSpec) -> list:
    def draw() -> tuple[int, ...]:
        return tuple(rng.randint(0, 9) for _ in range(rng.randint(0, spec.max_len)))

    inputs = [draw() for _ in range(spec.n_tests)]
    want = fingerprint(program)
    # add probe inputs until every near miss that behaves differently on the probes is rejected
    outputs = [run(program, xs) for xs in inputs]
    for other in mutants(program):
        if any(run(other, xs) != y for xs, y in zip(inputs, outputs)):
            continue  # already rejected (the cheap check first: most near misses end here)
        differs = next(((xs, y) for xs, y in zip(PROBES, want) if run(other, xs) != y), None)
        if differs is not None:
            inputs.append(differs[0])
            outputs.append(differs[1])
    return [(xs, run(program, xs)) for xs in inputs]


def generate_task(spec: TaskSpec = TaskSpec()) -> ProgramTask:
    """Generate problems from ``spec.seed``: the same spec gives the same task.

    Programs are drawn at random and dropped when their behaviour on the probe inputs repeats
    an earlier one's or is nearly constant (fewer than 3 distinct outputs); the first
    ``n_pretrain`` go to pretraining, the next ``n_finetune`` to fine-tuning, the rest to
    evaluation. Descriptions and tests come from a generator seeded per problem.
    """
    spec.check()
    rng = random.Random(spec.seed)
    total = spec.n_pretrain + spec.n_finetune + spec.n_eval
    seen: set[tuple] = set()
    drawn: list[Program] = []
    misses = 0  # draws in a row that found nothing new: the language is running out
    while len(drawn) < total:
        if misses > 2000:
            raise RotelabError(f"cannot find {total} distinct programs of at most "
                               f"{spec.max_ops} operations; ask for fewer")  # fmt: skip
        length = rng.randint(spec.min_ops, spec.max_ops)
        reduce = rng.random() < spec.p_reduce
        ops = [_random_op(rng, reduces=False) for _ in range(length - reduce)]
        if reduce:
            ops.append(_random_op(rng, reduces=True))
        program = tuple(ops)
        fp = fingerprint(program)
        if fp in seen or len({repr(v) for v in fp}) < 3:
            misses += 1
            continue
        misses = 0
        seen.add(fp)
        drawn.append(program)
    bounds = [("pretrain", spec.n_pretrain), ("finetune", spec.n_finetune), ("eval", spec.n_eval)]
    problems, i = [], 0
    for split, count in bounds:
        for j in range(count):
            program, prng = drawn[i], random.Random(f"{spec.seed}/{split}/{j}")
            tests = tuple(_tests(program, prng, spec))
            description = _describe(program, prng)
            problems.append(
                Problem(f"prog/{split}-{j}", split, description, format_program(program), tests)
            )
            i += 1
    return ProgramTask(spec, tuple(problems))


def sample_pass_counts(
    lm: LM,
    problems: Sequence[Problem],
    n: int,
    *,
    max_new_tokens: int = 24,
    sampler: Sampler = Sampler(temperature=0.8),
    seed: int = 0,
    batch_size: int | None = None,
) -> tuple[PassCounts, list[list[str]]]:
    """Sample ``n`` programs per problem from ``lm`` (one batched decode per group of problems,
    :func:`rotelab.measure.passk.sample_completions`), grade each by the hidden tests with the
    interpreter, and return the counts for Pass@k(m) and the programs (``[problem][sample]``)."""
    prompts = [lm.encode(p.prompt) for p in problems]
    new = sample_completions(lm, prompts, n, max_new_tokens, sampler=sampler, seed=seed,
                             batch_size=batch_size)  # fmt: skip
    programs = [[extract_program(lm.decode(ids)) for ids in rows] for rows in new]
    c = [sum(p.check(text) for text in texts) for p, texts in zip(problems, programs)]
    return PassCounts.from_counts([p.id for p in problems], [n] * len(problems), c), programs

"""Synthetic tasks with exact checkers (methods layer): data a model can be trained and graded on.

- :mod:`rotelab.tasks.programs`: list programs in a tiny language with an interpreter and hidden
  unit tests, for program synthesis judged by Pass@k(m) (Wang et al. 2025).
- :mod:`rotelab.tasks.arith`: character-level multiplication and addition, in- and
  out-of-distribution operands, answer scores and the separation of two tasks' states (Yu 2025's
  GAPT settings).

Why a package of its own: the organism's world (:mod:`rotelab.organism.world`) writes its
corpus, but a task is also graded (by pipelines) and composed into training sets (by the
organism, and by fine-tuning studies), so it sits below both, in the methods layer.
"""

from rotelab.tasks.programs import (
    OPS,
    Problem,
    ProgramError,
    ProgramTask,
    TaskSpec,
    extract_program,
    generate_task,
    parse,
    passes,
    run,
)

__all__ = [
    "OPS",
    "Problem",
    "ProgramError",
    "ProgramTask",
    "TaskSpec",
    "extract_program",
    "generate_task",
    "parse",
    "passes",
    "run",
]

"""What several command tests share: a small text corpus and the bad-input assertion."""

from __future__ import annotations

from typer.testing import CliRunner

from rotelab.cli import app

#: A small English-like corpus: enough tokens for a few windows of a tiny model.
TEXT = "the cat sat on the mat. a dog ran to the park and the bird sang. " * 30


def fails_leaving(args, message, where, keep=("text.txt",)):
    """``rotelab ARGS`` fails with one line holding ``message``, exit 2, and ``where`` holds
    only ``keep`` afterwards (nothing written)."""
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in where.iterdir()) == sorted(keep)  # nothing written
    return res

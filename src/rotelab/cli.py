"""The ``rotelab`` command line: thin typer commands, each calling one API function.

A :class:`~rotelab.errors.RotelabError` becomes one red line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rotelab.errors import RotelabError

app = typer.Typer(
    name="rotelab",
    help="Measure, explain and remove memorization in language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

# ---------------------------------------------------------------- shared options
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model directory, .gguf file, named model (smollm2) or hub id. Default: the organism.",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Corpus: .txt/.jsonl/.parquet file or directory. Default: the organism's data.",
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<command>-<time>).")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing --out directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32 or bfloat16.")]
PickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow loading pickle checkpoints (runs code!).")
]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
FieldOpt = Annotated[str, typer.Option("--field", help="Text field of JSONL/Parquet records.")]
ErrorsOpt = Annotated[
    str, typer.Option("--errors", help="strict (fail on bad UTF-8) or replace.")
]


def emit(summary: dict, *, as_json: bool, quiet: bool, run_dir: Path | None = None) -> None:
    """Print a command's result: JSON for machines, else the run directory."""
    from rotelab.runs import to_jsonable

    if as_json:
        out.print_json(json.dumps(to_jsonable(summary)))
    elif run_dir is not None:
        out.print(str(run_dir))


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        import rotelab

        out.print(rotelab.__version__)
        raise typer.Exit()


def command(name: str | None = None, *, parent: typer.Typer | None = None, **kwargs):
    """Register a command whose RotelabError becomes one red line and exit code 2."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            try:
                return fn(*args, **kw)
            except RotelabError as exc:
                console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None

        return (parent or app).command(name, **kwargs)(wrapper)

    return deco


# ---------------------------------------------------------------- commands
# Each command below parses its options and calls one API function. Register with @command(...).


@command("organism")
def organism_cmd(
    profile: Annotated[str, typer.Option(help="tiny (seconds, for tests) or default (the demo's).")] = "default",
    seed: SeedOpt = 0,
    corpus_tokens: Annotated[
        int | None, typer.Option(help="Background corpus size in tokens (dilution studies).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Build here instead of the cache.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if it is cached.")] = False,
    describe: Annotated[
        bool, typer.Option("--describe", help="Print extraction by count, perplexities, probes.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build (or load from the cache) the organism: a small GPT with known memorized data."""
    from rotelab.data.organism import format_description, organism_command

    if profile not in ("tiny", "default"):
        raise RotelabError(f"unknown profile {profile!r}; use tiny or default")
    path, description = organism_command(profile, seed, corpus_tokens, out_dir, force, describe or as_json)
    if as_json:
        emit({"path": str(path), **(description or {})}, as_json=True, quiet=True)
        return
    if description is not None:
        out.print(format_description(description), highlight=False)
    out.print(str(path), highlight=False)


@command("report")
def report_cmd(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (extract, mia, compare, demo).", show_default=False)
    ],
) -> None:
    """Write a self-contained report.html (plots embedded, opens offline) for a run directory."""
    from rotelab.report import write_report

    out.print(str(write_report(run_dir)), highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point (``rotelab`` and ``python -m rotelab``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except RotelabError as exc:  # raised outside a command body (e.g. while parsing)
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)

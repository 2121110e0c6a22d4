"""The bad-input table (issue 26): every command, every kind of mistake a user makes first.

Each case is a command line and a fragment of the message it must get. For every case the CLI
must answer with exit code 2 and exactly one line on stderr (no traceback, nothing on stdout),
leave nothing behind (no run directory, no temporary or lock file, no cache entry, no input
touched), never build the default organism and, unless the case says the mistake can only be
seen in the model itself (``loads=True``: a window longer than its context, a layer it does not
have), never load a model. Runs in-process through typer's ``CliRunner``.

Placeholders in a case: ``{model}`` a tiny Llama, ``{org}`` the tiny organism, ``{data}`` a good
JSONL corpus (fields ``text`` and ``group``), ``{factors}`` a ``rotelab kfac`` run of ``{model}``,
``{inputs}`` the directory holding all of these, ``{out}`` the output asked for, ``{file}`` a
regular file, ``{missing}`` a path that does not exist; the rest are broken inputs (see
:func:`inputs`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rotelab.cli import app

runner = CliRunner()

#: The base of most cases, per command: a run that would succeed, plus the mistake.
EXTRACT = "extract -m {model} -d {data} --prefix-len 4 --suffix-len 4 -o {out} -q"
RECON = "reconstruct -m {model} -d {data} --prefix-len 4 -o {out} -q"
MIA = "mia -m {model} --members {data} --nonmembers {data2} -o {out} -q"
KFAC = "kfac -m {model} -d {data} --tokens 64 -o {out} -q"
EDIT = "edit -m {model} --factors {factors} -o {out} -q"
BSN = "unlearn balanced-subnet -m {model} --forget {data} --retain {data2} --epochs 1 -o {out} -q"
COMPARE = "compare --models {org} -o {out} -q"
ORGANISM = "organism --profile tiny"
DEMO = "demo --profile tiny -q"
RS_TRAIN = (
    "recsys train --users 20 --length 20 --eval-users 4 --eval-lengths 20 --epochs 1 -o {out} -q"
)
RS_SERVE = "recsys serve -m {rs_run} --candidates {rs_cands} -o {out} -q"
RS_BENCH = "recsys bench --lengths 10 --stream-length 0 --repeats 1 -o {out} -q"
PASSK = "passk {samples} -o {out} -q"
PROBE = "probe -m {model} -d {data} --prefix-len 4 --suffix-len 4 -o {out} -q"
STEER = "steer -m {org} --seeds 1 -o {out} -q"
TRAIN = "train -d {data} --insertions {ins} -o {out} -q"
TERMNORM = "termnorm -m {model} --seeds 1 -o {out} -q"
FINETUNE = "finetune -m {model} -o {out} -q"
BARRIER = "barrier -o {out} -q"
UNDO = "undo -m {org} --seeds 0 -o {out} -q"
POPULARITY = "popularity -m {org} -o {out} -q"
FIELDS = "hubble fields -m {org} -o {out} -q"
CONTAM = "hubble contamination --seeds 0 -o {out} -q"

_ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def case(argv: str, fragment: str, *, loads: bool = False, cwd: str | None = None,
         skip: str | None = None, id: str | None = None):  # noqa: A002  # fmt: skip
    """One row of the table; ``cwd`` runs it elsewhere (``/proc``: an unwritable directory)."""
    marks = []
    if "{org}" in argv:
        marks.append(pytest.mark.slow)
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    return pytest.param(argv, fragment, loads, cwd, marks=marks, id=id or argv)


_NO_CUDA = "CUDA is present here" if torch.cuda.is_available() else None
_NO_PROC = None if Path("/proc/self").exists() and Path("/sys").is_dir() else "no /proc or /sys"

CASES = [
    # --------------------------------------------------------------- extract
    case("extract -m {missing} -d {data} -o {out}", "does not exist"),
    case("extract -m {model} -d {missing} -o {out}", "does not exist"),
    case("extract -m {model} -o {out}", "not an organism"),
    case(f"{EXTRACT} --prefix-len 0", "prefix"),
    case(f"{EXTRACT} --prefix-len -3", "prefix"),
    case(f"{EXTRACT} --suffix-len 0", "suffix"),
    case(f"{EXTRACT} --suffix-len -1", "suffix"),
    case(f"{EXTRACT} --stride 0", "stride"),
    case(f"{EXTRACT} --stride -4", "stride"),
    case(f"{EXTRACT} --prefix-len 40 --suffix-len 40", "context", loads=True),
    case("extract --prefix-len 100000 --suffix-len 10 -o {out}", "apply only with --data"),
    case("extract --stride 8 -o {out}", "apply only with --data"),
    case(f"{EXTRACT} --batch-size 0", "batch size"),
    case(f"{EXTRACT} --batch-size -1", "batch size"),
    case(f"{EXTRACT} --batch-size nan", "--batch-size"),
    case(f"{EXTRACT} --batch-size abc", "--batch-size"),
    case(f"{EXTRACT} --part-size 0", "part size"),
    case(f"{EXTRACT} --part-size 9223372036854775808", "out of range"),
    case(f"{EXTRACT} --top-k -100000000000000000000000", "out of range"),
    case(f"{EXTRACT} --verify -1", "--verify"),
    case(f"{EXTRACT} --verify 100000", "--verify 100000", loads=True),
    case(f"{EXTRACT} --temperature 0", "temperature"),
    case(f"{EXTRACT} --temperature -1", "temperature"),
    case(f"{EXTRACT} --temperature nan", "temperature"),
    case(f"{EXTRACT} --temperature inf", "temperature"),
    case(f"{EXTRACT} --top-k -1", "top-k"),
    case(f"{EXTRACT} --n 0", "n must be"),
    case(f"{EXTRACT} --p 0", "p must be"),
    case(f"{EXTRACT} --p 1.5", "p must be"),
    case(f"{EXTRACT} --p nan", "p must be"),
    case(f"{EXTRACT} --p -inf", "p must be"),
    case(f"{EXTRACT} --near-tie -1", "near-tie"),
    case(f"{EXTRACT} --near-tie nan", "near-tie"),
    case(f"{EXTRACT} --near-tie inf", "near-tie"),
    case(f"{EXTRACT} --ci bogus", "--ci"),
    case(f"{EXTRACT} --dtype float8", "dtype"),
    case(f"{EXTRACT} --device tpu", "tpu"),
    case(f"{EXTRACT} --device cuda", "CUDA", skip=_NO_CUDA),
    case(f"{EXTRACT} --device cuda:x", "cuda:x"),
    case(f"{EXTRACT} --errors bogus", "errors"),
    case(f"{EXTRACT} --format csv", "--format"),
    case(f"{EXTRACT} --field ''", "--field"),
    case(f"{EXTRACT} --field body", "body"),
    case(f"{EXTRACT} --group-by nosuch", "nosuch"),
    case(f"{EXTRACT} --group-by group+nosuch", "nosuch"),
    # what the user typed is quoted as text: a newline stays on the line, brackets are no markup
    case(f"{EXTRACT} --group-by 'a\nb\x85c\u2028d'", "a\\nb\\x85c\\u2028d"),
    case("extract -m {model} -d 'x[/b]' -o {out}", "x[/b] does not exist"),
    case("extract -m {model} -d 'x[bold]y' -o {out}", "x[bold]y does not exist"),
    case(f"{EXTRACT} --sample", "--free-running"),
    case(f"{EXTRACT} --seed -1", "--seed"),
    case(f"{EXTRACT} --seed 1180591620717411303424 --free-running --sample", "--seed"),
    case(f"{EXTRACT} --resume --force", "--resume or --force"),
    case(f"{EXTRACT} --bogus", "--bogus"),
    case("extract -m {model} -d {broken} --prefix-len 4 --suffix-len 4 -o {out}", "line 800"),
    case("extract -m {model} -d {late_byte} --prefix-len 4 --suffix-len 4 -o {out}", "UTF-8"),
    case(
        "extract -m {model} -d {late_byte_jsonl} --prefix-len 4 --suffix-len 4 -o {out}", "UTF-8"
    ),  # fmt: skip
    case("extract -m {model} -d {no_field} --prefix-len 4 --suffix-len 4 -o {out}", "text"),
    case("extract -m {model} -d {binary} --prefix-len 4 --suffix-len 4 -o {out}", "binary"),
    case("extract -m {model} -d {empty} --prefix-len 4 --suffix-len 4 -o {out}", "empty"),
    case("extract -m {model} -d {empty_dir} --prefix-len 4 --suffix-len 4 -o {out}", "empty_dir"),
    case("extract -m {model} -d {bad_parquet} --prefix-len 4 --suffix-len 4 -o {out}", "Parquet"),
    case("extract -m {model} -d {arrays} --prefix-len 4 --suffix-len 4 -o {out}", "JSON object"),
    case("extract -m {model} -d {data} -o {out} --format parquet", "Parquet"),
    case(
        "extract -m {corrupt_model} -d {data} --prefix-len 4 --suffix-len 4 -o {out}",
        "corrupt",
        loads=True,
    ),  # fmt: skip
    case("extract -m {org} --prefix-len 8 -o {out}", "apply only with --data"),
    case("extract -m {org} --group-by nosuch -o {out}", "nosuch"),
    # --------------------------------------------------------------- reconstruct
    case("reconstruct -m {model} -o {out}", "not an organism"),
    case("reconstruct -m {model} -d {missing} -o {out}", "does not exist"),
    case(f"{RECON} --prefix-len 0", "prefix"),
    case(f"{RECON} --prefix-len -1", "prefix"),
    case(f"{RECON} --prefix-len 100000", "--prefix-len", loads=True),
    case(f"{RECON} --chunk-len 0", "chunk"),
    case(f"{RECON} --max-tokens 0", "max"),
    case(f"{RECON} --max-tokens -5", "max"),
    case(f"{RECON} --max-docs 0", "max"),
    case(f"{RECON} --max-docs -1", "max"),
    case(f"{RECON} --temperature 0", "temperature"),
    case(f"{RECON} --temperature nan", "temperature"),
    case(f"{RECON} --temperature inf", "temperature"),
    case(f"{RECON} --top-k -1", "top-k"),
    case(f"{RECON} --temperature 0.7", "--temperature shapes the sampler"),
    case(f"{RECON} --top-k 5", "--top-k shapes the sampler"),
    case(f"{RECON} --temperature 0.7 --top-k 5", "add --sample"),
    case(f"{RECON} --batch-size 0", "batch"),
    case(f"{RECON} --batch-size -2", "batch"),
    case(f"{RECON} --group-by nosuch", "nosuch"),
    case(f"{RECON} --seed -5", "--seed"),
    case(f"{RECON} --seed 4294967296 --sample", "--seed"),
    case("reconstruct -m {model} -d {broken} --prefix-len 4 -o {out}", "line 800"),
    case("reconstruct -m {model} -d {late_byte} --prefix-len 4 -o {out}", "UTF-8"),
    case("reconstruct -m {model} -d {data} --prefix-len 4 -o {data}", "is the input"),
    case("reconstruct -m {org} --group-by nosuch -o {out}", "nosuch"),
    # --------------------------------------------------------------- mia
    case("mia -m {model} --members {data} -o {out}", "both --members and --nonmembers"),
    case("mia -m {model} -o {out}", "not an organism"),
    case("mia -m {model} --members {missing} --nonmembers {data} -o {out}", "does not exist"),
    case(f"{MIA} --k 0", "k"),
    case(f"{MIA} --k 1.5", "k"),
    case(f"{MIA} --k -0.1", "k"),
    case(f"{MIA} --k nan", "k"),
    case(f"{MIA} --bootstrap -1", "--bootstrap"),
    case(f"{MIA} --bootstrap 100000000000000000000", "out of range"),
    case(f"{MIA} --bootstrap 1000000000", "at most 100000"),
    case(f"{MIA} --attacks loss,zlib --neighbours 4", "--neighbours sets the neighbourhood"),
    case(f"{MIA} --exposure-samples 500", "--members/--nonmembers (no secrets)"),
    case("mia -m {org} --no-exposure --exposure-samples 500 -o {out}", "with --no-exposure"),
    case(f"{MIA} --neighbours 0", "--neighbours"),
    case(f"{MIA} --recall-prefix-tokens 0", "recall"),
    case(f"{MIA} --exposure-samples 1", "--exposure-samples"),
    case(f"{MIA} --batch-size 0", "--batch-size"),
    case(f"{MIA} --span bogus", "--span"),
    case(f"{MIA} --attacks bogus", "bogus"),
    case(f"{MIA} --attacks reference", "--reference-model"),
    case(f"{MIA} --reference-model {{missing}}", "does not exist"),
    case(f"{MIA} --recall-prefix {{missing}}", "does not exist"),
    case(f"{MIA} --recall-prefix {{empty}}", "empty"),
    case(f"{MIA} --device tpu", "tpu"),
    case(f"{MIA} --dtype half-ish", "dtype"),
    case(f"{MIA} --seed -1", "--seed"),
    case(f"{MIA} --span full", "does not apply"),
    case("mia -m {model} --members {broken} --nonmembers {data} -o {out}", "line 800"),
    case("mia -m {model} --members {data} --nonmembers {blank} -o {out}", "no non-empty texts"),
    case("mia -m {model} --members {data} --nonmembers {data2} -o {data}", "is the input"),
    case("mia -m {org} --exposure-samples 0 -o {out}", "--exposure-samples"),
    case("mia -m {org} --span secret -o {out}", "--span"),
    # --------------------------------------------------------------- kfac
    case("kfac -m {model} -o {out}", "not an organism"),
    case(f"{KFAC} --tokens 0", "--tokens"),
    case(f"{KFAC} --tokens -1", "--tokens"),
    case(f"{KFAC} --seq-len 0", "--seq-len"),
    case(f"{KFAC} --batch-size 0", "--batch-size"),
    case(f"{KFAC} --labels bogus", "bogus"),
    case(f"{KFAC} --layers '*.nosuch'", "nosuch", loads=True),
    case(f"{KFAC} --blocks x", "blocks 'x'"),
    case(f"{KFAC} --blocks 3-1", "blocks '3-1' select no block"),
    case(f"{KFAC} --blocks 99", "99", loads=True),
    case(f"{KFAC} --resume", "resume"),
    case(f"{KFAC} --seed -1", "--seed"),
    case("kfac -m {model} -d {broken} --tokens 64 -o {out}", "line 800"),
    case("kfac -m {model} -d {binary} --tokens 64 -o {out}", "binary"),
    case("kfac -m {model} -d {data} --tokens 64 -o {model}", "is the input"),
    # --------------------------------------------------------------- edit
    case("edit -m {model} -o {out}", "not an organism"),
    case("edit -m {model} --factors {missing} -o {out}", "no K-FAC factors at"),
    case("edit -m {model} --factors {data} -o {out}", "not a readable safetensors file"),
    case("edit -m {model} --factors {empty_dir} -o {out}", "no K-FAC factors at"),
    case(f"{EDIT} --rho 0", "rho"),
    case(f"{EDIT} --rho 1.5", "rho"),
    case(f"{EDIT} --rho -1", "rho"),
    case(f"{EDIT} --rho nan", "rho"),
    case(f"{EDIT} --rho inf", "rho"),
    case(f"{EDIT} --rho abc", "rho"),
    case(f"{EDIT} --rho ''", "rho"),
    case(f"{EDIT} --rho 0.5,,0.6", "rho"),
    case(f"{EDIT} --tokens 0", "--tokens"),
    case("edit -m {org} --labels bogus -o {out}", "bogus"),
    case(f"{EDIT} --blocks x", "blocks 'x'"),
    case(f"{EDIT} --resume", "resume"),
    case(f"{EDIT} --tokens 64", "do not apply"),
    case(f"{EDIT} --labels gold", "do not apply"),
    case("edit -m {model} --factors {factors} -o {factors} --force", "is the input"),
    case("edit -m {model} --factors {factors} -o {model} --force", "is the input"),
    case("edit -m {org} --tokens 0 -o {out}", "--tokens"),
    # --------------------------------------------------------------- unlearn balanced-subnet
    case("unlearn balanced-subnet -m {model} -o {out}", "not an organism"),
    case(
        "unlearn balanced-subnet -m {model} --forget {missing} --retain {data} -o {out}",
        "does not exist",
    ),  # fmt: skip
    case(f"{BSN} --ratio 0", "ratio"),
    case(f"{BSN} --ratio 1.5", "ratio"),
    case(f"{BSN} --ratio nan", "ratio"),
    case(f"{BSN} --w -0.1", "w"),
    case(f"{BSN} --w 1.5", "w"),
    case(f"{BSN} --w nan", "w"),
    case(f"{BSN} --lr 0", "lr"),
    case(f"{BSN} --lr nan", "lr"),
    case(f"{BSN} --lr inf", "lr"),
    case(f"{BSN} --epochs 0", "epochs"),
    case(f"{BSN} --batch-size 0", "batch"),
    case(f"{BSN} --precision fp8", "fp8"),
    case(f"{BSN} --format csv", "--format"),
    case(f"{BSN} --resume", "resume"),
    case(f"{BSN} --seed -1", "--seed"),
    case(f"{BSN} --min-count 4", "does not apply"),
    case(f"{BSN} --retain-windows 8", "does not apply"),
    case("unlearn balanced-subnet --min-count 0 -o {out}", "--min-count must be >= 1"),
    case("unlearn balanced-subnet --min-count -3 -o {out}", "--min-count must be >= 1"),
    case(
        "unlearn balanced-subnet -m {model} --forget {broken} --retain {data} -o {out}", "line 800"
    ),  # fmt: skip
    case("unlearn balanced-subnet --retain-windows 0 -o {out}", "--retain-windows"),
    case("unlearn balanced-subnet --min-count 100000 -o {out}", "--min-count"),
    case(
        "unlearn balanced-subnet -m {model} --forget {data} --retain {data2} -o {data2} --force",
        "is the input",
    ),  # fmt: skip
    case("unlearn balanced-subnet -m {org} --min-count 100000 -o {out}", "--min-count"),
    # --------------------------------------------------------------- compare
    case("compare --models x={org} x={model} -o {out}", "two models are labelled 'x'"),
    case("compare --models {missing} -o {out}", "does not exist"),
    case("compare --models {model} -o {out}", "none of the models is an organism"),
    case("compare --models {model} --organism {model} -o {out}", "not an organism directory"),
    case("compare --models =x -o {out}", "bad model"),
    case("compare --min-count -1 -o {out}", "min count"),
    case("compare --heldout-tokens 1 -o {out}", "held-out tokens"),
    case("compare --batch-size 0 -o {out}", "batch size"),
    case("compare --min-count 100000 -o {out}", "--min-count"),
    case(f"{COMPARE} --min-count 100000", "--min-count"),
    case(f"{COMPARE} {{model}}", "tokenizer"),
    case(f"{COMPARE} --device tpu", "tpu"),
    case(f"{COMPARE} --seed -1", "--seed"),
    case("compare --models {org} -o {org} --force", "is the input"),
    case("compare --models {model} --forget {data} -o {out}", "give --retain, --tasks too"),
    case(
        "compare --models {model} --forget {data} --retain {data2} --tasks {data} -o {out}",
        "line 1 has no 'prompt'",
    ),  # fmt: skip
    case(
        "compare --models {model} --forget {data} --retain {data2} --tasks {missing} -o {out}",
        "does not exist",
    ),  # fmt: skip
    case(
        "compare --models {model} --forget {missing} --retain {data2} --tasks {data} -o {out}",
        "nope",
    ),
    case(f"{COMPARE} --forget-windows 0", "without --forget they do not apply"),
    case(f"{COMPARE} --forget {{data}} --forget-windows 0", "--forget-windows must be >= 1"),
    case(f"{COMPARE} --forget {{data}} --prefix-len 0", "prefix length must be >= 1"),
    # --------------------------------------------------------------- bands
    case("bands -m {model} -o {out}", "give two or more --data"),
    case("bands -m {model} -d x={data} -d y={data2} -o {out}", "--factors"),
    case("bands -m {model} --factors {factors} -d x={data} -o {out}", "two or more"),
    case("bands -m {model} --factors {factors} -d {data} -d y={data2} -o {out}", "NAME=FILE"),
    case("bands -m {model} --factors {factors} -d x={data} -d x={data2} -o {out}", "twice"),
    case("bands -m {model} --factors {factors} -d x={data} -d y={missing} -o {out}", "nope"),
    case(
        "bands -m {model} --factors {factors} -d x={data} -d y={data2} --rho 2 -o {out}",
        "rho must be in",
    ),  # fmt: skip
    case(
        "bands -m {model} --factors {factors} -d x={data} -d y={data2} --rho 0.5 -o {out}",
        "give --tasks",
    ),  # fmt: skip
    case(
        "bands -m {model} --factors {factors} -d x={data} -d y={data2} --reference z -o {out}",
        "--reference 'z'",
    ),  # fmt: skip
    case("bands --rho 0 -o {out}", "rho must be in"),
    case("bands --min-count 100000 -o {out}", "--min-count"),
    case("bands --tokens 0 -o {out}", "--tokens must be >= 1"),
    case("bands --tasks {data} -o {out}", "give --rho"),
    # --------------------------------------------------------------- diff
    case("diff {model} {missing} -o {out}", "does not exist"),
    case("diff {model} {file} -o {out}", "not a model or LoRA adapter directory"),
    case("diff {empty_dir} {model} -o {out}", "not a model or LoRA adapter directory"),
    case("diff {model} {corrupt_model} -o {out}", "corrupt_model"),
    case("diff {model} {model} -o {model} --force", "is the input"),
    # --------------------------------------------------------------- edit: rho per layer, dtype
    case(f"{EDIT} --rho-config {{missing}}", "does not exist"),
    case(f"{EDIT} --rho-config {{file}}", "not valid JSON"),
    case(f"{EDIT} --rho 0.5 --rho-config {{file}}", "not both"),
    case(f"{EDIT} --save-dtype int8", "--save-dtype 'int8'"),
    # --------------------------------------------------------------- train (issue 17)
    case(f"{TRAIN} --insertions {{ins_no_text}}", "has no text"),
    case(f"{TRAIN} --insertions {{missing}}", "does not exist"),
    case(f"{TRAIN} --counts 64 --steps 4 --batch-size 2", "do not fit"),
    case(f"{TRAIN} --counts 1,x", "--counts"),
    case(f"{TRAIN} --phases 5:50 --steps 10", "phase"),
    case(f"{TRAIN} --phases middle", "phase"),
    case(f"{TRAIN} --checkpoints 500", "outside the run"),
    case(f"{TRAIN} --lora-rank 4", "needs --init"),
    case(f"{TRAIN} --init {{model}} --lora-rank 0", "--lora-rank"),
    case(f"{TRAIN} --init {{missing}}", "does not exist"),
    case(f"{TRAIN} --init {{empty_dir}}", "no config.json"),
    case(f"{TRAIN} --steps 0", "--steps"),
    case(f"{TRAIN} --world tiny", "not both"),
    case(f"{TRAIN.replace('{out}', '{file}')}", "not a directory"),
    case(f"{TRAIN.replace('{out}', '{model}')}", "not a `rotelab train` output"),
    case("train -d {data} -o {out} -q", "needs --insertions"),
    case("train --world {missing} -o {out} -q", "does not exist"),
    case(f"{TRAIN} --controls 5", "no item of kind 'user' has one"),
    case(f"{TRAIN} --controls -1", "--controls must be >= 0"),
    case("sweep --counts 0 -o {out} -q", ">= 1"),
    case("sweep --counts 64 --steps 10 -o {out} -q", "do not fit"),
    case("sweep --phases 0:999 -o {out} -q", "phase"),
    case("sweep --kinds poem -o {out} -q", "--kinds"),
    case("sweep --seeds 1,1 -o {out} -q", "repeats"),
    case("sweep --counts x -o {out} -q", "--counts"),
    case("sweep -o {file} -q", "not a directory"),
    case("sweep --executor ray --address 127.0.0.1:1 -o {out} -q", "does not answer"),
    case("sweep --executor ray --address nonsense -o {out} -q", "is not HOST:PORT"),
    case("sweep --executor spark -o {out} -q", "use local or ray"),
    case("sweep --address 127.0.0.1:6379 -o {out} -q", "with --executor ray only"),
    case(f"{MIA} --reference-model reference", "needs an organism target"),
    case(
        "mia -m {org} --reference-model none --attacks reference -o {out}",
        "left out by --reference-model none",
    ),
    # --------------------------------------------------------------- organism
    case("organism --profile huge", "huge"),
    case("organism --precision fp8", "fp8"),
    case("organism --corpus-tokens 10", "--corpus-tokens"),
    case("organism --corpus-tokens -1", "--corpus-tokens"),
    case("organism --corpus-tokens 100000000000000000000", "out of range"),
    case("organism --seed -1", "--seed"),
    case(f"{ORGANISM} --out {{file}}", "not a directory"),
    case(f"{ORGANISM} --out {{file}}/org", "not a directory"),
    case(f"{ORGANISM} --out {{inputs}}", "not an organism"),
    case(f"{ORGANISM} --seed 1 --out {{org}}", "different organism"),
    # --------------------------------------------------------------- demo
    case("demo --profile huge", "huge"),
    case("demo --precision fp8", "fp8"),
    case(f"{DEMO} --out {{file}}", "not a directory"),
    case(f"{DEMO} --out {{file}}/demo", "not a directory"),
    case(f"{DEMO} --out {{inputs}}", "not a rotelab run"),
    case(f"{DEMO} --out ''", "names no directory"),
    # --------------------------------------------------------------- gapt-study (issue 19)
    case("gapt-study --lambda -0.1 -o {out}", "lambda"),
    case("gapt-study --lambda 0 -o {out}", "lambda"),
    case("gapt-study --patch 7 -o {out}", "divide"),
    case("gapt-study --patch 1 -o {out}", "patch"),
    case("gapt-study --p-m 0 -o {out}", "p_m"),
    case("gapt-study --p-a 480 -o {out}", "never trigger"),
    case("gapt-study --ce-gain 0 -o {out}", "ce_gain"),
    case("gapt-study --ce-spike -1 -o {out}", "ce_spike"),
    case("gapt-study --seeds 1,1 -o {out}", "distinct"),
    case("gapt-study --profile huge -o {out}", "huge"),
    case("gapt-study -o {file}", "not a directory"),
    case("gapt-study --task nosuch -o {out}", "--task 'nosuch'"),
    case("gapt-study --task multiply --patch 7 -o {out}", "divide"),
    case("gapt-study --task interference --p-a 800 -o {out}", "never trigger"),
    case("gapt-study --task multiply --lambda -1 -o {out}", "lambda"),
    case("entropy --patch 0 -o {out}", "--patch"),
    case("entropy --tokens 4 -o {out}", "less than one patch"),
    case("entropy --batch-size 0 -o {out}", "--batch-size"),
    # --------------------------------------------------------------- bounds (issue 22)
    case("bounds --rho 0 -o {out}", "rho"),
    case("bounds --rho 1 -o {out}", "rho"),
    case("bounds --rho 0.5,1.5 -o {out}", "rho"),
    case("bounds --rho -0.2 -o {out}", "rho"),
    case("bounds --rho abc -o {out}", "--rho"),
    case("bounds --n 0 -o {out}", "N"),
    case("bounds --n -5 -o {out}", "N"),
    case("bounds --d 0 -o {out}", "d"),
    case("bounds --classes 1 -o {out}", "classes"),
    case("bounds --data {dup_points} -o {out}", "identical points"),
    case("bounds --data {missing} -o {out}", "does not exist"),
    case("bounds --search --widths 0,4 -o {out}", "--widths"),
    case("bounds --data digits --d 3 -o {out}", "d = 64"),
    case("bounds --data digits --digits 3,3 -o {out}", "distinct 0..9"),
    case("bounds --data digits --digits 3,12 -o {out}", "distinct 0..9"),
    # --------------------------------------------------------------- report, machine, the CLI
    case("report {missing}", "does not exist"),
    case("report {file}", "not a directory"),
    case("report {empty_dir}", "empty_dir"),
    case("report {model}", "model"),
    case("report {bad_summary_run}", "summary.json"),
    case("report", "run_dir"),
    case("machine --device tpu", "tpu"),
    case("machine --device cuda:x", "cuda:x"),
    case("machine --device ''", "device"),
    case("nosuchcommand", "nosuchcommand"),
    case("unlearn nosuch", "nosuch"),
    # --------------------------------------------------------------- apt (issue 21)
    case("apt --phrase '' -o {out}", "has no words"),
    case("apt --phrase '?!' -o {out}", "has no words"),
    case("apt --phrase 'zqxv brrkt' -o {out}", "is in the CMU Pronouncing"),
    case("apt --phrase 'the zqxv' -o {out}", "is not in the CMU"),
    case("apt --phrase 'and the of' -o {out}", "only function words"),
    case("apt --lyric {late_byte} -o {out}", "not valid UTF-8"),
    case("apt --lyric {binary} -o {out}", "not valid UTF-8"),
    case("apt --lyric {empty} -o {out}", "has no lines"),
    case("apt --lyric {missing} -o {out}", "does not exist"),
    case("apt --lyric {empty_dir} -o {out}", "is not a file"),
    case("apt -o {out}", "exactly one of"),
    case('apt --phrase "mom\'s spaghetti" --lyric {file} -o {out}', "exactly one of"),
    case('apt --phrase "mom\'s spaghetti" --top 0 -o {out}', "--top"),
    case('apt --phrase "mom\'s spaghetti" --songs 0 -o {out}', "--songs"),
    case("apt --phrase \"mom's spaghetti\" --check 'zqxv' -o {out}", "is in the CMU Pronouncing"),
    case('apt --phrase "mom\'s spaghetti" --vocab {binary} -o {out}', "not UTF-8"),
    case('apt --phrase "mom\'s spaghetti" --vocab {missing} -o {out}', "does not exist"),
    case('apt --phrase "mom\'s spaghetti" -o {file}', "not a directory"),
    case(
        'apt --phrase "mom\'s spaghetti"',
        "runs",
        cwd="/proc",
        skip=_NO_PROC,
        id="apt in /proc without --out",
    ),  # fmt: skip
    # --------------------------------------------------------------- melody (issue 21)
    case("melody --melodies {melody_unknown} -o {out}", "unknown token 'H9:4'"),
    case("melody --melodies {melody_word} -o {out}", "not in the CMU Pronouncing"),
    case("melody --melodies {melody_bare} -o {out}", "write 'lyric line |"),
    case("melody --melodies {melody_short} -o {out}", "lower --per-count"),
    case("melody --melodies {binary} -o {out}", "not valid UTF-8"),
    case("melody --melodies {empty} -o {out}", "has no pairs"),
    case("melody --melodies {missing} -o {out}", "does not exist"),
    case("melody --encoding graphemes -o {out}", "--encoding"),
    case("melody --preset huge -o {out}", "--preset"),
    case("melody --counts 1,x -o {out}", "comma list"),
    case("melody --counts 1,999 -o {out}", "0 .. 256"),
    case("melody --per-count 0 -o {out}", "--per-count"),
    case("melody --seeds 0 -o {out}", "--seeds"),
    case("melody --steps 5 -o {out}", "--steps"),
    case("melody -o {file}", "not a directory"),
    case("apt-recall -m {model} --verses {one_verse} -o {out}", "at least two"),
    case("apt-recall -m {model} --verses {binary} -o {out}", "not valid UTF-8"),
    case("apt-recall -m {model} --controls 0 -o {out}", "--controls"),
    case("apt-recall -m {missing} -o {out}", "does not exist"),
    # --------------------------------------------------------------- passk (issue 20)
    case(f"{PASSK} --k 1,5 --m 6", "m > k"),
    case(f"{PASSK} --k 12", "larger than the 10 samples"),
    case(f"{PASSK} --k 0", "k must be >= 1"),
    case(f"{PASSK} --k -5", "k must be >= 1"),
    case(f"{PASSK} --m -1", "m must be >= 1"),
    case(f"{PASSK} --k 1,x", "not a whole number"),
    case(f"{PASSK} --m ''", "not a whole number"),
    case(f"{PASSK} --bootstrap -1", "--bootstrap"),
    case(f"{PASSK} --resume", "resume"),
    case("passk {missing} -o {out}", "does not exist"),
    case("passk {empty} -o {out}", "empty"),
    case("passk {samples_no_id} -o {out}", "no problem id"),
    case("passk {samples_no_pass} -o {out}", "no pass/fail"),
    case("passk {samples_bad_pass} -o {out}", "true/false or 1/0"),
    case("passk {samples_mixed_sets} -o {out}", "mixes problem sets"),
    case("passk {samples_mixed_forms} -o {out}", "one form per file"),
    case("passk {samples_negative} -o {out}", "cannot be negative"),
    case("passk {samples_c_above_n} -o {out}", "0 <= c <= n"),
    case("passk {samples_broken} -o {out}", "line 21 is not JSON"),
    case("passk {samples} -o {samples} --force", "is the input"),
    # --------------------------------------------------------------- termnorm (issue 24)
    case(f"{TERMNORM} --terminology {{tn_nocol}}", "no id column"),
    case(f"{TERMNORM} --terminology {{tn_noid}}", "map to no ID"),
    case(f"{TERMNORM} --terminology {{missing}}", "does not exist"),
    case(f"{TERMNORM} --terminology {{file}}", "no term or id column"),
    case(f"{TERMNORM} --terminology {{samples}}", "use a .csv, .tsv or .parquet"),
    case(f"{TERMNORM} --fraction 1.5", "(0, 1)"),
    case(f"{TERMNORM} --fraction 0", "(0, 1)"),
    case(f"{TERMNORM} --seeds 0", "--seeds"),
    case(f"{TERMNORM} --preset huge", "--preset"),
    case(f"{TERMNORM} --terminology ''", "at least one terminology"),
    # --------------------------------------------------------------- finetune, barrier (issue 20)
    case(f"{FINETUNE} --ib --ib-alpha -0.5", "--ib-alpha must be a number >= 0"),
    case(f"{FINETUNE} --ib --ib-beta -1", "--ib-beta must be a number >= 0"),
    case(f"{FINETUNE} --ib-alpha nan", "--ib-alpha must be a number >= 0"),
    case(f"{FINETUNE} --steps 0", "--steps must be >= 1"),
    case(f"{FINETUNE} --lr 0", "--lr must be > 0"),
    case(f"{FINETUNE} --lora 0", "--lora rank must be >= 1"),
    case(f"{FINETUNE} --eval-samples -1", "--eval-samples"),
    case(f"{FINETUNE} --data {{missing}}", "neither 'programs' nor a JSONL file"),
    case(f"{FINETUNE} --data {{ft_no_completion}}", "no string field completion"),
    case(f"{FINETUNE} --data {{ft_examples}} --eval-samples 5", "needs --data programs"),
    case(f"{FINETUNE} --resume", "cannot resume"),
    case(f"{BARRIER} --ib-alpha -1", "--ib-alpha must be a number >= 0"),
    case(f"{BARRIER} --ib-beta -0.1", "--ib-beta must be a number >= 0"),
    case(f"{BARRIER} --copies 64,64", "distinct"),
    case(f"{BARRIER} --copies -1,64", "--copies must be >= 0"),
    case(f"{BARRIER} --k 1,5 --m 6", "m > k"),
    case(f"{BARRIER} --k 20", "needs --samples >= 20"),
    case(f"{BARRIER} --seeds 0,x", "--seeds"),
    case(f"{BARRIER} --seeds 1,1", "--seeds must be distinct"),
    case(f"{BARRIER} --budget 0", "--budget must be > 0"),
    # --------------------------------------------------------------- hubble, undo, popularity (17)
    case(f"{UNDO} --target-fraction 1.5", "--target-fraction"),
    case(f"{UNDO} --suppress forget", "not a method"),
    case(f"{UNDO} --suppress-steps 0", "--suppress-steps"),
    case(f"{UNDO} --lora-rank 0", "--lora-rank"),
    case(f"{UNDO} --seeds 1,1", "repeats"),
    case(f"{UNDO} --min-count 65", "no item of the organism"),
    case("undo -m {model} -o {out} -q", "needs an organism"),
    case(f"{POPULARITY} --kinds poem", "--kinds"),
    case(f"{POPULARITY} --n-boot 10", "--n-boot"),
    case("popularity -m {model} -o {out} -q", "needs an organism"),
    case(f"{FIELDS} --styles riddle", "--styles"),
    case("hubble fields -m {model} -o {out} -q", "needs an organism"),
    case(f"{CONTAM} --counts 1,4", "must include 0"),
    case(f"{CONTAM} --task trivia", "--task"),
    case(f"{CONTAM} --counts 0,256 --steps 10", "do not fit"),
    case(f"{CONTAM} --seeds 2,2", "repeats"),
    case(f"{CONTAM} --profile huge", "--profile"),
    # --------------------------------------------------------------- probe, steer, steered models
    case(f"{PROBE} --layers x", "--layers"),
    case(f"{PROBE} --layers 9", "layer 9 does not exist", loads=True),
    case(f"{PROBE} --seeds 0", "--seeds"),
    case(f"{PROBE} --test-size 1.5", "--test-size"),
    case(f"{PROBE} --alpha nan", "--alpha"),
    case("probe -m {model} -o {out} -q", "no default data"),
    case(f"{STEER} --alpha abc", "--alpha"),
    case(f"{STEER} --alpha nan", "finite numbers"),
    case("steer -m {model} -o {out} -q", "not an organism"),
    case("steer -m {steered} -o {out} -q", "already a steered model"),
    case("steer -m {model} -d {data} -o {out} -q", "--data needs --retain"),
    case("probe -m {model} -d {data} --min-match-rate 0.3 -o {out} -q", "--min-match-rate"),
    case("steer -m {model} -d {missing} --retain {data} -o {out} -q", "does not exist"),
    case(f"{STEER} --layer 99", "layer 99 does not exist", loads=True),
    case("extract -m {spec_no_tensors} -d {data} -o {out} -q", "missing steering.safetensors"),
    case("extract -m {spec_bad_alpha} -d {data} -o {out} -q", "alpha must be a finite number"),
    case("extract -m {spec_bad_layer} -d {data} -o {out} -q", "layer 7 does not exist"),
    case("mia -m {spec_bad_gamma} --members {data} --nonmembers {data2} -o {out} -q", "gamma"),
    case("extract -m {spec_other} -d {data} -o {out} -q", "fitted on another model", loads=True),
    case("compare --models {spec_no_tensors} -o {out} -q", "missing steering.safetensors"),
    # --------------------------------------------------------------- outputs that cannot be written
    case(f"{EXTRACT} -o {{file}}", "not a directory"),
    case(f"{EXTRACT} -o {{file}}/run", "not a directory"),
    case(f"{EXTRACT} -o /proc/rotelab-run", "/proc", skip=_NO_PROC),
    case(f"{EXTRACT} -o /sys/rotelab-run", "/sys", skip=_NO_PROC),
    case(
        f"{EXTRACT} -o {{read_only}}/run",
        "read_only",
        skip="root writes anywhere" if _ROOT else None,
    ),  # fmt: skip
    case(f"{EXTRACT} -o {{model}}", "is the input"),
    case(f"{EXTRACT} -o {{model}}/run", "is inside the input"),
    case(f"{EXTRACT} -o {{inputs}}", "contains the input"),
    case(f"{EXTRACT} -o ''", "names no directory"),
    case(f"{EXTRACT} -o .", "names no directory"),
    case(f"{RECON} -o {{file}}/run", "not a directory"),
    case(f"{RECON} -o /proc/rotelab-run", "/proc", skip=_NO_PROC),
    case(f"{MIA} -o {{file}}/run", "not a directory"),
    case(f"{MIA} -o /sys/rotelab-run", "/sys", skip=_NO_PROC),
    case(f"{KFAC} -o {{file}}", "not a directory"),
    case(f"{KFAC} -o {{file}}/run", "not a directory"),
    case(f"{KFAC} -o /proc/rotelab-run", "/proc", skip=_NO_PROC),
    case(f"{EDIT} -o {{file}}", "not a directory"),
    case(f"{EDIT} -o {{file}}/model", "not a directory"),
    case(f"{EDIT} -o /proc/rotelab-model", "/proc", skip=_NO_PROC),
    case(f"{BSN} -o {{file}}", "not a directory"),
    case(f"{BSN} -o {{file}}/model", "not a directory"),
    case(f"{BSN} -o /sys/rotelab-model", "/sys", skip=_NO_PROC),
    case(f"{COMPARE.replace('{out}', '{file}/run')}", "not a directory"),
    case(f"{ORGANISM} --out /proc/rotelab-org", "/proc", skip=_NO_PROC),
    case(f"{DEMO} --out /proc/rotelab-demo", "/proc", skip=_NO_PROC),
    # ---------------------------------------------------------------- recsys (issue 23)
    case("recsys train -d {missing} -o {out}", "does not exist"),
    case("recsys train -d {rs_unsorted} -o {out}", "timestamps out of order"),
    case("recsys train -d {rs_empty} -o {out}", "an empty history has nothing to summarize"),
    case("recsys train -d {rs_nocol} -o {out}", "no column 'timestamp'"),
    case("recsys train -d {rs_badlabel} -o {out}", "labels must be 0 or 1"),
    case("recsys train -d {inputs} -o {out}", "is a directory"),
    case(f"{RS_TRAIN} --users 0", "--users"),
    case(f"{RS_TRAIN} --eval-lengths 0,10", "--eval-lengths"),
    case(f"{RS_TRAIN} --eval-lengths ten", "--eval-lengths"),
    case(f"{RS_TRAIN} --lr nan", "--lr"),
    case(f"{RS_TRAIN} --dim 30", "multiple of 4"),
    case(f"{RS_TRAIN} --quant int4", "--quant"),
    case(f"{RS_TRAIN} --schedule linear", "--schedule"),
    case(f"{RS_TRAIN} --seed -1", "--seed"),
    case(f"{RS_SERVE.replace('{rs_cands}', '{rs_unknown}')}", "unknown to the model"),
    case(f"{RS_SERVE.replace('{rs_cands}', '{missing}')}", "does not exist"),
    case(f"{RS_SERVE.replace('{rs_cands}', '{rs_empty}')}", "no rows; nothing to score"),
    case(f"{RS_SERVE} --cache {{rs_other_cache}}", "built by model version"),
    case(f"{RS_SERVE} --cache {{empty_dir}}", "not a summary cache"),
    case("recsys serve -m {model} --candidates {rs_cands} -o {out}", "holds no VISTA model"),
    case("recsys refresh -m {rs_run} --log {rs_unsorted}", "timestamps out of order"),
    case("recsys refresh -m {rs_run} --log {missing}", "does not exist"),
    case("recsys refresh -m {rs_run} --log {rs_cands}", "no column 'timestamp'"),
    case(
        "recsys refresh -m {rs_run} --log {rs_unsorted} --cache {rs_other_cache}",
        "built by model version",
    ),
    case("recsys compact -m {model}", "holds no VISTA model"),
    case(f"{RS_BENCH} --lengths 1,,x", "--lengths"),
    case(f"{RS_BENCH} --candidates 0", "--candidates"),
    case(f"{RS_BENCH} --stream-length -5", "--stream-length"),
    case(f"{RS_BENCH} -o {{file}}/run", "not a directory"),
    # no --out, in a directory nothing can be written in: runs/<command>-<time> is refused first
    *[
        case(
            argv.replace(" -o {out}", ""),
            "runs",
            cwd="/proc",
            skip=_NO_PROC,
            id=f"{argv.split()[0]} in /proc without --out",
        )  # fmt: skip
        for argv in (EXTRACT, RECON, MIA, KFAC, EDIT, BSN, COMPARE, DEMO)
    ],
]


# ------------------------------------------------------------------------------------ the inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """Every input the cases name, made once; the cases must leave all of it as it is."""
    from rotelab.options import RunOptions
    from rotelab.pipelines.kfac import kfac

    root = tmp_path_factory.mktemp("inputs")
    p = {"inputs": root, "model": Path(shutil.copytree(tiny_llama_dir, root / "model"))}
    line = "the cat sat on the mat and the dog ran to the park. "

    def jsonl(name: str, rows: list, tail: bytes = b"") -> Path:
        path = root / name
        path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)
        return path

    p["data"] = jsonl("data.jsonl", [{"text": line * 3, "group": i % 2} for i in range(6)])
    p["data2"] = jsonl("data2.jsonl", [{"text": line * 2 + str(i)} for i in range(6)])
    p["ins"] = jsonl("ins.jsonl", [{"text": f"the code of cat {i} is {i} {i}."} for i in range(4)])
    p["ins_no_text"] = jsonl("ins_no_text.jsonl", [{"text": "a b c"}, {"id": "x", "count": 4}])
    # A mistake far from the start: the whole file must be read before anything is written.
    many = [{"text": line * 2} for _ in range(799)]
    p["broken"] = jsonl("broken.jsonl", many, b'{"text": "unterminated\n')
    p["late_byte_jsonl"] = jsonl("late.jsonl", many, b'{"text": "caf\xe9"}\n')
    p["no_field"] = jsonl("no_field.jsonl", many + [{"body": line}])
    p["arrays"] = jsonl("arrays.jsonl", [["not", "an", "object"]])
    p["blank"] = jsonl("blank.jsonl", [{"text": "   "}, {"text": ""}])
    p["late_byte"] = root / "book.txt"
    p["late_byte"].write_bytes((line * 2000).encode() + b"\xff\xfe tail")
    p["binary"] = root / "blob.bin"
    p["binary"].write_bytes(bytes(range(256)) * 8)
    p["melody_unknown"] = root / "melody-unknown.txt"
    p["melody_unknown"].write_text("Twinkle, twinkle, little star | C4:4 H9:4 D4:8\n")
    p["melody_word"] = root / "melody-word.txt"
    p["melody_word"].write_text("zqxv brrkt | C4:4 D4:8\n")
    p["melody_bare"] = root / "melody-bare.txt"
    p["melody_bare"].write_text("Twinkle, twinkle, little star C4:4 D4:8\n")
    p["melody_short"] = root / "melody-short.txt"
    p["melody_short"].write_text("Twinkle, twinkle, little star | C4:4 D4:8\n")
    p["one_verse"] = root / "one-verse.txt"
    p["one_verse"].write_text("Twinkle, twinkle, little star,\nHow I wonder what you are!\n")
    p["empty"] = root / "empty.txt"
    p["empty"].write_bytes(b"")
    p["bad_parquet"] = root / "table.parquet"
    p["bad_parquet"].write_bytes(b"PAR1 this is not parquet")
    p["empty_dir"] = root / "empty_dir"
    p["empty_dir"].mkdir()
    p["dup_points"] = root / "dup_points.csv"  # one point under two labels: epsilon = 0
    p["dup_points"].write_text("0.5,0.5,0\n0.5,0.5,1\n1.0,0.0,0\n")
    p["file"] = root / "notes.txt"
    p["file"].write_text("a user's notes\n")
    p["corrupt_model"] = Path(shutil.copytree(p["model"], root / "corrupt_model"))
    (p["corrupt_model"] / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    p["read_only"] = root / "read_only"
    p["read_only"].mkdir()
    p["read_only"].chmod(0o555)
    run = p["bad_summary_run"] = root / "bad_summary_run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"command": "extract", "arguments": {}}))
    (run / "summary.json").write_text('{"windows": 3, "extr')
    # samples files for passk: 2 problems of HumanEval, 10 samples each, and broken variants
    he = [{"task_id": f"HumanEval/{t}", "passed": i % 3 == t} for t in range(2) for i in range(10)]
    p["samples"] = jsonl("samples.jsonl", he)
    p["samples_no_id"] = jsonl("no_id.jsonl", he + [{"passed": True}])
    p["samples_no_pass"] = jsonl("no_pass.jsonl", he + [{"task_id": "HumanEval/0"}])
    p["samples_bad_pass"] = jsonl("bad_pass.jsonl", he + [{"task_id": "HumanEval/0", "passed": 2}])
    p["samples_mixed_sets"] = jsonl("mixed.jsonl", he + [{"task_id": "Mbpp/1", "passed": True}])
    p["samples_mixed_forms"] = jsonl("forms.jsonl", he + [{"task_id": "HumanEval/5", "n": 3,
                                                           "c": 1}])  # fmt: skip
    p["samples_broken"] = jsonl("broken_samples.jsonl", he, b'{"task_id": "HumanEval/1", "pa\n')
    p["samples_negative"] = jsonl("negative.jsonl", [{"task_id": "a", "n": -3, "c": 0}])
    p["samples_c_above_n"] = jsonl("c_above_n.jsonl", [{"task_id": "a", "n": 3, "c": 4}])
    # prompt/completion files for finetune: a good one and one with a line lacking its completion
    ft = [{"prompt": "the cat", "completion": " sat on the mat"}] * 4
    p["ft_examples"] = jsonl("ft.jsonl", ft)
    p["ft_no_completion"] = jsonl("ft_bad.jsonl", ft + [{"prompt": "a dog"}])
    kfac(str(p["model"]), str(p["data"]), tokens=64,
         run=RunOptions(out=root / "factors", progress=False))  # fmt: skip
    p["factors"] = root / "factors"
    _recsys_inputs(root, p)
    p["tn_nocol"] = root / "tn_nocol.csv"
    p["tn_nocol"].write_text("term,code\nSeizure,HP:0001250\n")
    p["tn_noid"] = root / "tn_noid.tsv"
    p["tn_noid"].write_text("term\tid\nSeizure\tHP:0001250\nAtaxia\t\n")
    p.update(_steering_specs(root, p["model"]))
    return p


def _recsys_inputs(root: Path, p: dict[str, Path]) -> None:
    """Logs with one mistake each, a tiny trained VISTA run and a cache of another model."""
    from rotelab.options import RunOptions
    from rotelab.pipelines.recsys import train
    from rotelab.recsys import ModelConfig, SummaryCache, build_model

    def write(name: str, text: str) -> None:
        p[name] = root / f"{name}.csv"
        p[name].write_text(text)

    write("rs_unsorted", "user,item,timestamp\nu1,a,5\nu1,b,9\nu1,c,3\n")
    write("rs_empty", "user,item,timestamp\n")
    write("rs_nocol", "user,item\nu1,a\n")
    write("rs_badlabel", "user,item,timestamp,label\nu1,a,1,1\nu1,b,2,7\n")
    write("rs_cands", "user,item,label\n1000000000,5,1\n")
    write("rs_unknown", "user,item\n1000000000,5\n1000000000,no-such-item\n")
    run = train(users=20, length=20, eval_users=4, eval_lengths="20", epochs=1, dim=8, tokens=2,
                run=RunOptions(out=root / "rs_run", progress=False))  # fmt: skip
    p["rs_run"] = run.run_dir
    other = build_model(ModelConfig("vista", 10, 1, dim=8, seeds=2), [0] + [1] * 10, seed=3)
    SummaryCache.create(root / "rs_other_cache", other)
    p["rs_other_cache"] = root / "rs_other_cache"


def _steering_specs(root: Path, model: Path) -> dict[str, Path]:
    """A good steering spec of ``model`` and broken ones: files missing, alpha not a number, a
    layer the model lacks, a probe fitted on another model."""
    from transformers import AutoModelForCausalLM

    from rotelab.steered import SPEC_FILE, TENSOR_FILE, SteeringSpec, model_fingerprint

    base = AutoModelForCausalLM.from_pretrained(model)
    d = base.config.hidden_size
    spec = SteeringSpec(
        base_model=str(model), layer=1, alpha=2.0, mode="dynamic", probe_weight=torch.ones(d),
        probe_bias=0.0, vector=torch.ones(d) / d**0.5, fingerprint=model_fingerprint(base),
    )  # fmt: skip
    out = {"steered": spec.save(root / "steered")}
    out["spec_no_tensors"] = spec.save(root / "spec_no_tensors")
    (out["spec_no_tensors"] / TENSOR_FILE).unlink()
    out["spec_other"] = spec.with_(fingerprint="0" * 16).save(root / "spec_other")
    out["spec_bad_layer"] = spec.with_(layer=7).save(root / "spec_bad_layer")
    out["spec_bad_alpha"] = spec.save(root / "spec_bad_alpha")
    meta = json.loads((out["spec_bad_alpha"] / SPEC_FILE).read_text())
    (out["spec_bad_alpha"] / SPEC_FILE).write_text(json.dumps({**meta, "alpha": "strong"}))
    contrastive = spec.with_(mode="contrastive").save(root / "spec_bad_gamma")
    meta = json.loads((contrastive / SPEC_FILE).read_text())
    (contrastive / SPEC_FILE).write_text(json.dumps({**meta, "gamma": None}))
    out["spec_bad_gamma"] = contrastive
    return out


def _tree(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` with its kind, size and modification time."""
    seen: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = path.lstat()
                seen[str(path)] = (path.is_dir(), st.st_size if not path.is_dir() else 0,
                                   st.st_mtime_ns)  # fmt: skip
    return seen


class _Built(BaseException):
    """Raised where an organism would be built: a case must fail before that."""


@pytest.fixture()
def sandbox(request, inputs, tmp_path, monkeypatch):
    """The placeholders' values, a fresh working directory and ROTELAB_HOME, and the recorders
    of organism builds and model loads."""
    from rotelab.lm import LM
    from rotelab.organism import build

    paths = {k: str(v) for k, v in inputs.items()}
    if any("{org}" in str(a) for a in request.node.callspec.params.values()):
        paths["org"] = str(request.getfixturevalue("tiny_organism").path)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    paths.update(out=str(work / "out"), missing=str(work / "nope"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("ROTELAB_HOME", str(home))
    events: dict[str, list] = {"built": [], "loaded": []}

    def no_build(*args, **kwargs):
        events["built"].append(args[:1])
        raise _Built()

    monkeypatch.setattr(build, "write_world", no_build)
    monkeypatch.setattr(build, "_train", no_build)
    original = LM.load.__func__

    def load(cls, *args, **kwargs):
        events["loaded"].append(args[:1])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LM, "load", classmethod(load))
    return paths, [inputs["inputs"], work, home], events


@pytest.mark.parametrize(("argv", "fragment", "loads", "cwd"), CASES)
def test_bad_input_is_one_line_and_leaves_nothing(sandbox, monkeypatch, argv, fragment, loads, cwd):
    paths, watched, events = sandbox
    args = [a.format(**paths) for a in shlex.split(argv)]
    fragment = fragment.format(**paths)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    before = _tree(*watched)
    try:
        res = runner.invoke(app, args)
    except _Built:  # a BaseException: CliRunner lets it through
        pytest.fail(f"{argv}: [built] the default organism was built")
    after = _tree(*watched)
    problems = _problems(res, fragment, before, after, events, loads)
    assert not problems, f"{argv}: {'; '.join(problems)}\nstderr: {res.stderr}"


def _problems(res, fragment: str, before: dict, after: dict, events: dict, loads: bool) -> list:
    """What is wrong with an answer to bad input, tagged for counting (``[traceback]`` ...)."""
    problems = []
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        problems.append(f"[traceback] {type(exc).__name__}: {str(exc)[:200]}")
    elif res.exit_code != 2:
        problems.append(f"[exit {res.exit_code}]")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    if len(lines) != 1:
        problems.append(f"[lines] {len(lines)} lines on stderr")
    if fragment not in res.stderr:
        problems.append(f"[message] no {fragment!r}")
    if res.stdout.strip():
        problems.append(f"[stdout] {res.stdout.strip()[:100]!r}")
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        problems.append(f"[left-behind] {sorted({p for p, _ in changed})[:5]}")
    if events["built"]:
        problems.append("[built] the default organism was built")
    if events["loaded"] and not loads:
        problems.append(f"[loaded] a model was loaded: {events['loaded'][:2]}")
    return problems


def test_the_table_covers_every_command():
    """At least 100 cases, and every command the CLI registers has some (the issue's
    acceptance; a new command without bad-input cases fails here)."""
    import typer

    commands = {p.values[0].split()[0] for p in CASES}
    registered = set(typer.main.get_command(app).commands)
    assert len(CASES) >= 100
    assert registered - commands == set()

"""``rotelab train``: train a model with the user's own insertions, Hubble-style (Wei et al. 2025).

From scratch (the organism's Llama architecture, its size configurable) or continuing a Hugging
Face model from a local directory (every weight, or a LoRA adapter via ``peft``), on the
organism's world (a profile, or an organism directory's corpus) or the user's own files, with
inserted items: the user's JSONL (:mod:`rotelab.train.items`), or the world's own secrets,
biographies and passages, with a count grid and a phase grid giving them counts and phases. Each
occurrence starts a training row at a document boundary, is followed by an end-of-text token, is
never cut (an item longer than the context is refused) and is the only insertion of its row
(:mod:`rotelab.train.insertion`).

The output is an organism-like model directory, so ``rotelab extract -m OUT`` and ``rotelab mia
-m OUT`` audit it exactly as an organism: the model and tokenizer, ``spec.json`` (the world's
organism spec plus a ``train`` block with every setting), ``ledger.parquet`` (the organism's
columns plus ``exposure_steps``, the step of each exposure), ``schedule.parquet`` (one row per
exposure: item, occurrence, step, row, token span within the row), ``probes.parquet``,
``corpus/{train,heldout}.jsonl``, ``train_log.jsonl``, ``train_info.json``, and
``checkpoints/step-NNNNNN/`` (each one an organism-like directory too) at the chosen steps. A LoRA
run saves the merged model and, in ``adapter/``, the adapter itself (``rotelab diff`` reads it).

Every input is checked before anything is written: a bad insertions file, counts that do not fit
the run, a phase outside it, an item longer than the context, LoRA on a model without linear
layers are one line each and leave nothing behind. Under ``torchrun`` the run is data parallel
(:func:`rotelab.train.train`); rank 0 writes.

Example:
    >>> result = train_model("runs/m", insertions="canaries.jsonl", counts=(0, 1, 4, 16))
    ... # doctest: +SKIP
    >>> result.summary["final_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.data.corpus import read_corpus
from rotelab.distributed import barrier, dist_context, is_main
from rotelab.errors import RotelabError
from rotelab.machine import configure_threads, cpu_capability, parse_precision, resolve_precision
from rotelab.options import CorpusOptions
from rotelab.organism import (
    Organism,
    OrganismSpec,
    Profile,
    generate_controls,
    tokenize_items,
    train_tokenizer,
    write_world,
)
from rotelab.organism.world import PLANTED_TASKS, PROFILES
from rotelab.pipelines.inputs import is_organism_dir, resolve_corpus
from rotelab.runs import OutputDir, atomic_write_json, check_output
from rotelab.train import TrainConfig, insertion_schedule, packed_batches, phase_steps, train
from rotelab.train.items import (
    InsertionItem,
    assign_grid,
    item_ledger,
    read_insertions,
    template_controls,
)

__all__ = ["ModelSize", "TrainResult", "TrainSettings", "train_model", "format_summary"]

#: Files of an organism-like directory that every checkpoint gets a copy of.
_SIDE_FILES = ("spec.json", "ledger.parquet", "probes.parquet", "schedule.parquet")


@dataclass(frozen=True)
class ModelSize:
    """The from-scratch model: the organism's Llama architecture (``None``: the world profile's
    value; the user's corpus uses the ``tiny`` profile's)."""

    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    intermediate: int | None = None
    context: int | None = None
    vocab: int | None = None


@dataclass(frozen=True)
class TrainSettings:
    """Optimization and insertion settings of :func:`train_model`.

    ``lr`` ``None``: 3e-3 from scratch, 1e-4 for a full fine-tune, 1e-3 for LoRA. ``checkpoints``
    are step counts (1..steps) after which the model is saved. ``lora_alpha`` ``None``: twice the
    rank. ``rows_per_step``: most insertion rows in one step (default half the batch).
    ``controls``: extra never-inserted controls per kind, so TPR at 1% and 0.1% FPR can be
    reported; they change nothing in training. With the world's items, drawn like them (see
    :func:`rotelab.organism.generate_controls`); with ``--insertions``, each kind's items with
    their ``secret`` drawn afresh (:func:`rotelab.train.items.template_controls`).
    """

    steps: int = 200
    batch_size: int = 16
    lr: float | None = None
    warmup_steps: int = 20
    precision: str = "auto"
    seed: int = 0
    checkpoints: tuple[int, ...] = ()
    lora_rank: int | None = None
    lora_alpha: float | None = None
    suffix_len: int = 48
    heldout_fraction: float = 0.05
    rows_per_step: int | None = None
    log_every: int = 10
    controls: int = 0


@dataclass
class TrainResult:
    """What :func:`train_model` returns (``path`` is ``None`` on ranks other than 0)."""

    path: Path | None
    summary: dict[str, Any]
    log: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------ checking
def _check_settings(s: TrainSettings, size: ModelSize, init: str | None) -> None:
    if s.steps < 1:
        raise RotelabError(f"--steps must be >= 1, got {s.steps}")
    if s.batch_size < 2:
        raise RotelabError(f"--batch-size must be >= 2, got {s.batch_size}")
    if s.lr is not None and not (math.isfinite(s.lr) and s.lr > 0):
        raise RotelabError(f"--lr must be a positive number, got {s.lr}")
    if s.warmup_steps < 0:
        raise RotelabError(f"--warmup-steps must be >= 0, got {s.warmup_steps}")
    if not 0 <= s.seed < 2**32:
        raise RotelabError(f"--seed must be in 0 .. 2^32 - 1, got {s.seed}")
    if not 0 <= s.heldout_fraction < 1:
        raise RotelabError(f"--heldout-fraction must be in [0, 1), got {s.heldout_fraction}")
    if s.suffix_len < 1:
        raise RotelabError(f"--suffix-len must be >= 1, got {s.suffix_len}")
    if s.rows_per_step is not None and not 1 <= s.rows_per_step <= s.batch_size:
        raise RotelabError(f"--rows-per-step must be in 1 .. {s.batch_size} (the batch size)")
    parse_precision(s.precision)
    bad = [c for c in s.checkpoints if not 1 <= c <= s.steps]
    if bad:
        raise RotelabError(
            f"--checkpoints {bad[0]} is outside the run; give steps in 1 .. {s.steps}"
        )
    if s.lora_rank is not None:
        if s.lora_rank < 1:
            raise RotelabError(f"--lora-rank must be >= 1, got {s.lora_rank}")
        if init is None:
            raise RotelabError(
                "--lora-rank needs --init (a model to adapt); a model trained from scratch has "
                "no base to keep frozen"
            )
    if s.controls < 0:
        raise RotelabError(f"--controls must be >= 0, got {s.controls}")
    if s.lora_alpha is not None and not (math.isfinite(s.lora_alpha) and s.lora_alpha > 0):
        raise RotelabError(f"--lora-alpha must be a positive number, got {s.lora_alpha}")
    for name, value in asdict(size).items():
        if value is not None and value < 1:
            raise RotelabError(f"--{name} must be >= 1, got {value}")
    if size.hidden and size.heads and size.hidden % size.heads:
        raise RotelabError(f"--hidden {size.hidden} is not divisible by --heads {size.heads}")
    if init is not None and any(
        v is not None for k, v in asdict(size).items() if k not in ("context",)
    ):
        raise RotelabError("the model size options apply from scratch only; --init fixes them")


def _check_world(world: str | None, data, init) -> tuple[OrganismSpec | None, Path | None]:
    """The world: a profile name (its spec) or an organism directory; ``None`` with ``data``."""
    if data is not None:
        if world is not None:
            raise RotelabError("give --world or --data (the corpus), not both")
        return None, None
    world = world or "tiny"
    if world in (p.value for p in Profile):
        return OrganismSpec(Profile(world), 0), None
    path = Path(world).expanduser()
    if not path.exists():
        raise RotelabError(f"--world {world} does not exist (give tiny, default or an organism)")
    if not is_organism_dir(path):
        raise RotelabError(f"--world {world} is not an organism directory (no spec.json/ledger)")
    return None, path


def _check_init(init: str | None) -> Path | None:
    if init is None:
        return None
    path = Path(init).expanduser()
    if not path.exists():
        raise RotelabError(f"--init {init} does not exist (give a local Hugging Face model)")
    if not (path / "config.json").is_file():
        raise RotelabError(f"--init {init} is not a Hugging Face model directory (no config.json)")
    return path


def _parse_grid(values: Sequence[int] | None, steps: int) -> tuple[int, ...] | None:
    if values is None:
        return None
    grid = tuple(int(c) for c in values)
    if not grid:
        raise RotelabError("--counts is empty; give counts such as 0,1,4,16")
    if any(c < 0 for c in grid):
        raise RotelabError(f"--counts must be whole numbers >= 0, got {list(grid)}")
    return grid


def _check_phases(items: Sequence[InsertionItem], steps: int) -> None:
    for it in items:
        try:
            phase_steps(it.phase or "all", steps)
        except ValueError as exc:
            raise RotelabError(f"insertion {it.item_id}: {exc}") from None


def _schedule(items: Sequence[InsertionItem], s: TrainSettings):
    """The exposure schedule (one row per occurrence); refused when the counts do not fit."""
    cap = s.rows_per_step if s.rows_per_step is not None else s.batch_size // 2
    spec = [(i, int(it.count or 0), it.phase or "all") for i, it in enumerate(items)]
    try:
        return insertion_schedule(
            spec, [1] * len(items), steps=s.steps, batch_size=s.batch_size, seed=s.seed,
            max_rows_per_step=cap,
        )  # fmt: skip
    except ValueError:
        rows = sum(c for _, c, _ in spec)
        raise RotelabError(
            f"the insertions do not fit the run: {rows} insertion rows, at most {cap} per step "
            f"(of {s.batch_size}) over {s.steps} steps in their phases; use more --steps, fewer "
            "items or lower counts"
        ) from None


# ------------------------------------------------------------------------------------ the corpus
@dataclass
class _Corpus:
    """The background text, its tokenizer and the items, ready to train."""

    train_docs: list[str]
    heldout_docs: list[str]
    tokenizer: Any
    items: list[InsertionItem]
    world_ledger: pd.DataFrame | None  # the world's own ledger (its spans), when its items are used
    spec: OrganismSpec
    probes: pd.DataFrame
    entities: pd.DataFrame | None
    source: str
    world_tokenizer: Any = None  # the world's tokenizer (the ledger's spans are in its tokens)


def _world_corpus(spec: OrganismSpec | None, path: Path | None, tmp: Path) -> _Corpus:
    from transformers import AutoTokenizer

    if path is None:
        path = write_world(spec, tmp / "world")
    org = Organism(path)
    led = org.ledger
    items = [
        InsertionItem(r.item_id, r.text, r.kind, int(r.count), str(r.phase), r.secret or "")
        for r in led.itertuples(index=False)
    ]
    entities = path / "entities.parquet"
    return _Corpus(
        org.train_docs(), org.heldout_docs(), AutoTokenizer.from_pretrained(path), items, led,
        # The planted tasks' documents are not inserted here: their probes would measure nothing.
        org.spec, org.probes[~org.probes["task"].isin(PLANTED_TASKS)].reset_index(drop=True),
        pd.read_parquet(entities) if entities.exists() else None,
        f"world {org.spec.key()}",
    )  # fmt: skip


def _user_corpus(data: Path, corpus: CorpusOptions, s: TrainSettings, seed: int) -> _Corpus:
    docs = [d.text for d in read_corpus(data, **corpus.read_kwargs()) if d.text.strip()]
    n_held = int(len(docs) * s.heldout_fraction)
    if len(docs) - n_held < 1:
        raise RotelabError(f"--data {data} has too few documents to train on")
    # The held-out documents are the last ones (no shuffle: a user's order is kept reproducible).
    train_docs, heldout = docs[: len(docs) - n_held], docs[len(docs) - n_held :]
    return _Corpus(
        train_docs, heldout, None, [], None, OrganismSpec(Profile.tiny, seed),
        pd.DataFrame(columns=["probe_id", "task", "subtask", "prompt", "answer"]), None,
        f"data {data}",
    )  # fmt: skip


def _encode_offsets(tokenizer):
    def encode(text: str):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    return encode


def _ledger(c: _Corpus, items: list[InsertionItem], world_items: bool, init: bool, suffix: int):
    """The run's ledger: the world's rows (its spans) with the run's counts and phases when its
    own tokenizer is used, else the items tokenized anew."""
    if world_items and not init and c.world_ledger is not None:
        led = c.world_ledger.set_index("item_id").loc[[it.item_id for it in items]].reset_index()
        led["count"] = [int(it.count or 0) for it in items]
        led["phase"] = [str(it.phase or "all") for it in items]
        return led
    if world_items and c.world_ledger is not None:  # another tokenizer: keep the char spans
        spans = {}
        world_tok = c.world_tokenizer
        for r in c.world_ledger.itertuples(index=False):
            c0 = len(world_tok.decode(list(r.prefix_tokens)))
            spans[r.item_id] = (c0, c0 + len(world_tok.decode(list(r.suffix_tokens))))
        items = [replace(it, span=spans[it.item_id]) for it in items]
    return item_ledger(items, _encode_offsets(c.tokenizer), suffix_len=suffix)


# ------------------------------------------------------------------------------------ the model
def _scratch_model(tokenizer, size: ModelSize, profile: Profile):
    from transformers import LlamaForCausalLM

    from rotelab.train import llama_config

    p = PROFILES[profile]
    hidden = size.hidden or p.hidden
    cfg = llama_config(
        tokenizer, hidden=hidden, intermediate=size.intermediate or p.intermediate,
        layers=size.layers or p.n_layers, heads=size.heads or p.n_heads,
        context=size.context or p.context,
    )  # fmt: skip
    if hidden % cfg.num_attention_heads:
        heads = cfg.num_attention_heads
        raise RotelabError(f"--hidden {hidden} is not divisible by the {heads} heads")
    return LlamaForCausalLM(cfg)


def lora_targets(model) -> list[str]:
    """Names of the linear modules LoRA may adapt (``nn.Linear`` and GPT-2's ``Conv1D``), the
    output head excepted; empty for a model without linear layers."""
    import torch

    names = []
    for name, module in model.named_modules():
        linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if linear and name and not name.endswith("lm_head"):
            names.append(name)
    return names


def _apply_lora(model, rank: int, alpha: float, init: str):
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model)
    if not targets:
        raise RotelabError(
            f"--lora-rank {rank}: the model {init} has no linear layers for LoRA to adapt; "
            "train every weight (leave out --lora-rank)"
        )
    leaves = sorted({t.rsplit(".", 1)[-1] for t in targets})
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=leaves, lora_dropout=0.0)
    return get_peft_model(model, cfg)


# ------------------------------------------------------------------------------------ the run
def train_model(
    out: str | os.PathLike,
    *,
    world: str | None = None,
    world_seed: int = 0,
    corpus_tokens: int | None = None,
    data: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    insertions: str | os.PathLike | None = None,
    counts: Sequence[int] | None = None,
    phases: Sequence[str] | None = None,
    size: ModelSize = ModelSize(),
    settings: TrainSettings = TrainSettings(),
    corpus: CorpusOptions = CorpusOptions(),
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a model with insertions and write an organism-like directory to ``out``.

    Args:
        out: the output directory (replaced only with ``force`` and only if rotelab wrote it).
        world: the organism world to train on: ``tiny`` (default), ``default`` or an organism
            directory (its corpus, tokenizer and items); not with ``data``.
        world_seed, corpus_tokens: the world's seed and background size (dilution studies).
        data: the user's corpus (files or a directory, see ``rotelab extract --data``) instead.
        init: a local Hugging Face model to continue training (its tokenizer is used).
        insertions: the user's items (JSONL, see :mod:`rotelab.train.items`); default: the
            world's own items (none with ``data``, which then needs this).
        counts, phases: grids giving counts and phases to the items (all of them for the
            world's items; only those without their own otherwise); phases are ``all``,
            ``first``, ``second`` or step windows ``LO:HI``.
        size: the from-scratch model's size.
        settings: steps, batch, learning rate, precision, seed, checkpoints, LoRA.
        corpus: how ``data`` is read.
        force: replace an existing output directory this command wrote.
        progress: print progress to stderr.

    Returns:
        The output directory (rank 0) and the summary (``final_loss``, ``tokens_per_s``, ...).
    """
    s = settings
    init_s = None if init is None else str(init)
    _check_settings(s, size, init_s)
    if not 0 <= world_seed < 2**32:
        raise RotelabError(f"--world-seed must be in 0 .. 2^32 - 1, got {world_seed}")
    if corpus_tokens is not None and corpus_tokens < 1000:
        raise RotelabError(f"--corpus-tokens {corpus_tokens} is too small; use at least 1000")
    grid = _parse_grid(counts, s.steps)
    phase_grid = tuple(phases) if phases else None
    for ph in phase_grid or ():
        try:
            phase_steps(ph, s.steps)
        except ValueError as exc:
            raise RotelabError(f"--phases: {exc}") from None
    spec, world_path = _check_world(world, data, init_s)
    if spec is not None:
        spec = OrganismSpec(spec.profile, world_seed, corpus_tokens, precision=s.precision)
    elif corpus_tokens is not None or world_seed:
        raise RotelabError("--world-seed and --corpus-tokens apply to a world profile only")
    init_path = _check_init(init_s)
    data_path = resolve_corpus(data, corpus, model=None).path if data is not None else None
    user_items = read_insertions(insertions) if insertions is not None else None
    if user_items is None and data is not None:
        raise RotelabError("--data needs --insertions (your corpus has no items of its own)")
    user_controls: list[InsertionItem] = []
    if user_items is not None:
        items = assign_grid(user_items, grid, phase_grid)
        _check_phases(items, s.steps)
        _schedule(items, s)  # the counts must fit before the world is made or a model loaded
        if s.controls:  # your items' own format, each secret drawn afresh (checked here)
            user_controls = template_controls(items, s.controls, seed=s.seed)
    inputs = (init_s, data, insertions, world_path)
    check_output(out, replace=force, owned=_is_trained, kind="a `rotelab train` output",
                 inputs=inputs)  # fmt: skip

    import torch

    with tempfile.TemporaryDirectory(prefix="rotelab-train-") as scratch, dist_context():
        tmp = Path(scratch)
        if data_path is not None:
            c = _user_corpus(data_path, corpus, s, s.seed)
        else:
            c = _world_corpus(spec, world_path, tmp)
        c.world_tokenizer = c.tokenizer
        if user_items is None:  # the world's own items, every one given the grid when asked
            items = assign_grid(c.items, grid, phase_grid, override=True)
            _check_phases(items, s.steps)
        model, tokenizer = _model(c, size, init_path, s)
        c.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise RotelabError(f"the tokenizer of {init_s} has no end-of-text token to end items")
        led = _ledger(c, items, user_items is None, init_path is not None, s.suffix_len)
        # Controls are never inserted and come after the items, so the schedule, the batches
        # and the trained weights are what they would be without them (tested).
        if user_controls:  # tokenized exactly as your items are
            items = items + user_controls
            led = pd.concat([led, _ledger(c, user_controls, False, init_path is not None,
                                          s.suffix_len)], ignore_index=True)  # fmt: skip
        elif s.controls:  # the world's kinds, drawn like its items from a stream of their own
            extra = generate_controls(c.spec, s.controls)
            extra_items = [InsertionItem(x["item_id"], x["text"], x["kind"], 0, "all",
                                         x["secret"]) for x in extra]  # fmt: skip
            # Spans as the world's own items get them (carried to --init's tokenizer by char).
            extra_c = replace(c, world_ledger=tokenize_items(extra, c.world_tokenizer, c.spec))
            items = items + extra_items
            led = pd.concat([led, _ledger(extra_c, extra_items, True, init_path is not None,
                                          s.suffix_len)], ignore_index=True)  # fmt: skip
        if model is None:  # from scratch: the context fits the longest inserted item by default
            if size.context is None:
                longest = int(led.loc[led["count"] > 0, "n_tokens"].max()) if len(led) else 0
                base = PROFILES[c.spec.profile].context
                size = replace(size, context=max(base, -(-longest // 8) * 8))
            torch.manual_seed(s.seed)
            model = _scratch_model(tokenizer, size, c.spec.profile)
        context = _context(model, size)
        long = led[(led["count"] > 0) & (led["n_tokens"] > context)]
        if len(long):
            r = long.iloc[0]
            raise RotelabError(
                f"insertion {r['item_id']} has {r['n_tokens']} tokens, more than the context "
                f"({context}); an insertion is never cut, so shorten it or raise --context"
            )
        placements = _schedule(items, s)
        if s.lora_rank is not None:
            alpha = s.lora_alpha if s.lora_alpha is not None else 2.0 * s.lora_rank
            model = _apply_lora(model, s.lora_rank, alpha, init_s)
        output = (
            OutputDir.open(
                out,
                replace=force,
                owned=_is_trained,
                kind="a `rotelab train` output",
                inputs=inputs,
            )  # fmt: skip
            if is_main()
            else None
        )
        try:
            result = _run(c, items, led, placements, model, context, s, out, output, progress,
                          dict(world=world, world_seed=world_seed, corpus_tokens=corpus_tokens,
                               data=None if data is None else str(data), init=init_s,
                               insertions=None if insertions is None else str(insertions),
                               counts=grid, phases=phase_grid, size=asdict(size),
                               settings=asdict(s)))  # fmt: skip
        except BaseException:
            if output is not None:
                output.discard()
            raise
        barrier()
    return result


def _is_trained(path: Path) -> bool:
    try:
        return "train" in json.loads((path / "spec.json").read_text())
    except (OSError, ValueError):
        return False


def _model(c: _Corpus, size: ModelSize, init: Path | None, s: TrainSettings):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(s.seed)
    if init is None:
        tokenizer = c.tokenizer
        if tokenizer is None:  # the user's corpus from scratch: a tokenizer of its own
            vocab = size.vocab or PROFILES[Profile.tiny].vocab_size
            tokenizer = train_tokenizer(c.train_docs, vocab)
        elif size.vocab is not None:
            raise RotelabError("--vocab applies to a tokenizer trained on --data only")
        return None, tokenizer  # the model is made once the ledger sets its context
    try:
        tokenizer = AutoTokenizer.from_pretrained(init)
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RotelabError(f"--init {init} could not be loaded: {first}") from None
    return model, tokenizer


def _context(model, size: ModelSize) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 1024
    return min(size.context or limit, limit)


def _run(c, items, led, placements, model, context, s, out, output, progress, arguments):
    threads = configure_threads()
    tok = c.tokenizer
    eos = tok.eos_token_id
    background = [list(x) for x in tok(c.train_docs, add_special_tokens=False)["input_ids"]]
    row_len = context + 1
    seqs = [list(map(int, t)) for t in led["tokens"]]  # the ledger is in the items' order
    lr = s.lr if s.lr is not None else (3e-3 if arguments["init"] is None else
                                        (1e-3 if s.lora_rank else 1e-4))  # fmt: skip
    cfg = TrainConfig(steps=s.steps, lr=lr, warmup_steps=min(s.warmup_steps, s.steps // 2),
                      precision=s.precision, seed=s.seed, log_every=s.log_every)  # fmt: skip
    batches = packed_batches(
        background, seqs, placements, steps=s.steps, batch_size=s.batch_size, row_len=row_len,
        eos_id=eos, seed=s.seed,
    )  # fmt: skip
    exposures = pd.DataFrame(
        [{"item_id": items[p.item].item_id, "occurrence": p.occurrence, "step": p.step,
          "row": p.row, "token_start": 0, "token_end": len(seqs[p.item])} for p in placements],
        columns=["item_id", "occurrence", "step", "row", "token_start", "token_end"],
    )  # fmt: skip
    steps_of = exposures.groupby("item_id")["step"].apply(list).to_dict()
    led = led.assign(exposure_steps=[[int(x) for x in steps_of.get(i, [])] for i in led["item_id"]])
    precision = resolve_precision(s.precision, warn=False).value
    spec = {**c.spec.to_dict(), "train": {**arguments, "source": c.source, "context": context,
                                           "lr": lr, "precision": precision}}  # fmt: skip
    spec["settings"] = {**spec["settings"], "context": context}
    tmp = None
    if output is not None:
        tmp = output.begin()
        _write_side(tmp, spec, led, exposures, c, tok)
    saved: set[int] = set()

    def after_step(done: int) -> None:
        if done in s.checkpoints and tmp is not None and done not in saved:
            saved.add(done)
            _save(model, tok, tmp / "checkpoints" / f"step-{done:06d}", tmp, steps_done=done)

    log: list[dict] = []
    logf = open(tmp / "train_log.jsonl", "w") if tmp is not None else None  # noqa: SIM115
    try:

        def on_log(rec: dict) -> None:
            log.append(rec)
            if logf is not None:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            if progress and is_main() and (rec["step"] % 50 == 0 or rec["step"] == s.steps - 1):
                print(f"  step {rec['step']:>5}/{s.steps}  loss {rec['loss']:.3f}  "
                      f"{rec['elapsed_s']:.0f}s", file=sys.stderr)  # fmt: skip

        t0 = time.perf_counter()
        history = train(model, batches, cfg, callback=on_log, after_step=after_step)
        seconds = time.perf_counter() - t0
    finally:
        if logf is not None:
            logf.close()
    summary = {
        "source": c.source, "init": arguments["init"], "lora_rank": s.lora_rank,
        "steps": s.steps, "batch_size": s.batch_size, "context": context, "lr": lr,
        "precision": history[-1]["precision"], "seed": s.seed,
        "params": int(sum(p.numel() for p in model.parameters())),
        "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "items": len(led), "inserted_items": int((led["count"] > 0).sum()),
        "controls": int((led["count"] == 0).sum()), "inserted_rows": len(placements),
        "background_tokens": int(sum(len(d) for d in background)),
        "train_tokens": history[-1]["tokens"], "final_loss": history[-1]["loss"],
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(history[-1]["tokens"] / max(seconds, 1e-9), 1),
        "checkpoints": sorted(s.checkpoints), "cpu_capability": cpu_capability(),
        "threads": threads, "world_size": int(os.environ.get("WORLD_SIZE", 1)),
    }  # fmt: skip
    if output is None:
        return TrainResult(None, summary, log)
    if s.lora_rank is not None:
        model.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()
    _save(model, tok, tmp, None)
    atomic_write_json(tmp / "train_info.json", summary)
    output.commit()
    return TrainResult(Path(out), summary, log)


def _write_side(tmp: Path, spec: dict, led, exposures, c: _Corpus, tok) -> None:
    (tmp / "corpus").mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", c.train_docs), ("heldout", c.heldout_docs)):
        with open(tmp / "corpus" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"doc_id": f"{split}-{i:06d}", "text": d}) + "\n")
    (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
    led.to_parquet(tmp / "ledger.parquet", index=False)
    exposures.to_parquet(tmp / "schedule.parquet", index=False)
    c.probes.to_parquet(tmp / "probes.parquet", index=False)
    if c.entities is not None:
        c.entities.to_parquet(tmp / "entities.parquet", index=False)
    tok.save_pretrained(tmp)


def _save(model, tok, path: Path, root: Path | None, steps_done: int | None = None) -> None:
    """Save the model (a LoRA model merged into a copy) and, for a checkpoint, the side files."""
    import copy

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per checkpoint would bury the training progress
    path.mkdir(parents=True, exist_ok=True)
    to_save = model
    if hasattr(model, "merge_and_unload"):  # a checkpoint of a LoRA run: merge a copy
        to_save = copy.deepcopy(model).merge_and_unload()
    to_save.save_pretrained(path, safe_serialization=True)
    if root is not None:
        tok.save_pretrained(path)
        for name in _SIDE_FILES:
            if (root / name).exists():
                shutil.copy2(root / name, path / name)
        (path / "corpus").mkdir(exist_ok=True)
        for split in ("train", "heldout"):
            src = root / "corpus" / f"{split}.jsonl"
            try:
                os.link(src, path / "corpus" / f"{split}.jsonl")
            except OSError:
                shutil.copy2(src, path / "corpus" / f"{split}.jsonl")
        atomic_write_json(path / "checkpoint.json", {"steps_done": steps_done})


def format_summary(summary: dict[str, Any]) -> str:
    """What ``rotelab train`` prints."""
    return (
        f"{summary['steps']} steps x {summary['batch_size']} rows of {summary['context']} tokens "
        f"({summary['precision']}): final loss {summary['final_loss']:.3f}, "
        f"{summary['tokens_per_s']:,.0f} tokens/s; {summary['inserted_items']} items inserted "
        f"in {summary['inserted_rows']} rows, {summary['controls']} controls"
    )

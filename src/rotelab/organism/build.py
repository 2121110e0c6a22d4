"""Building the organism: a small GPT trained on its world, saved as a Hugging Face model directory.

A byte-level BPE tokenizer and a Llama-style ``transformers`` model are trained on the world (see
:mod:`rotelab.organism.world`) and saved as a normal model directory, next to the corpus, the
ledger, the probes and the training log. The directory is cached under
``$ROTELAB_HOME/organisms/<hash of the spec>``.

Example:
    >>> org = default_organism("tiny")  # doctest: +SKIP
    >>> org.ledger.groupby("count").size()  # doctest: +SKIP
    >>> org.describe()["extraction_by_count_kind"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.lm import LM, progress_bar
from rotelab.machine import configure_threads, cpu_capability
from rotelab.organism.describe import describe_organism
from rotelab.organism.world import (
    OrganismSpec,
    Profile,
    ProfileSettings,
    _encode,
    write_world,
)
from rotelab.paths import rotelab_home
from rotelab.runs import OutputDir, atomic_write_json
from rotelab.train import (
    LossTerm,
    TrainConfig,
    insertion_schedule,
    llama_config,
    packed_batches,
    train,
)


# ------------------------------------------------------------------------------------- training
def _model_config(s: ProfileSettings, tokenizer):
    return llama_config(
        tokenizer, hidden=s.hidden, intermediate=s.intermediate, layers=s.n_layers,
        heads=s.n_heads, context=s.context,
    )  # fmt: skip


def _train(
    spec: OrganismSpec,
    out: Path,
    progress: bool,
    terms: Sequence[LossTerm] = (),
    insert: bool = True,
    bar: str | None = None,
) -> dict[str, Any]:
    """Train ``spec``'s model in ``out`` (its world already written there); ``bar``: with
    ``progress``, a progress bar of that label over the steps instead of a line every 50."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    s = spec.settings
    threads = configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(out)
    org = Organism(out)
    background = [_encode(tokenizer, d) for d in org.train_docs()]
    ledger = org.ledger
    # The reference model (insert=False) sees the same background stream and no item at all
    # (neither the ledger's items nor the planted task documents).
    trained = ledger[ledger["count"] > 0] if insert else ledger.iloc[:0]
    planted = org.planted_docs() if insert else []
    ids = [*trained["item_id"], *(d["doc_id"] for d in planted)]
    seqs = [list(t) for t in trained["tokens"]] + [_encode(tokenizer, d["text"]) for d in planted]
    # Each planted document is inserted once (every planted fact is in planted_count of them).
    counts = trained["count"].tolist() + [1] * len(planted)
    phases = trained["phase"].tolist() + ["all"] * len(planted)
    row_len = s.context + 1
    n_chunks = [math.ceil((len(t) + 1) / row_len) for t in seqs]
    placements = insertion_schedule(
        list(zip(range(len(seqs)), counts, phases)),
        n_chunks,
        steps=s.steps,
        batch_size=s.batch_size,
        seed=spec.seed,
        # Room for the planted documents' rows; without them the format-1 cap, so older
        # organisms keep their schedule.
        max_rows_per_step=s.batch_size * (11 if s.planted_per_task else 10) // 16,
    )
    pd.DataFrame(
        [
            {
                "item_id": ids[p.item],
                "occurrence": p.occurrence,
                "chunk": p.chunk,
                "step": p.step,
                "row": p.row,
            }
            for p in placements
        ]  # fmt: skip
    ).to_parquet(out / "schedule.parquet", index=False)

    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(_model_config(s, tokenizer))
    batches = packed_batches(
        background, seqs, placements, steps=s.steps, batch_size=s.batch_size, row_len=row_len,
        eos_id=tokenizer.eos_token_id, seed=spec.seed,
    )  # fmt: skip
    cfg = TrainConfig(steps=s.steps, lr=s.lr, precision=spec.precision, seed=spec.seed)
    with_bar = progress and bar is not None
    with (
        open(out / "train_log.jsonl", "w") as logf,
        progress_bar(with_bar, s.steps, bar or "") as advance,
    ):
        shown = [0]  # steps the bar shows: records come every few steps

        def log(rec: dict) -> None:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()  # so a long build can be watched
            if with_bar:  # (a build without the bar trains exactly as before)
                advance(rec["step"] + 1 - shown[0])
                shown[0] = rec["step"] + 1
            if progress and not with_bar and (rec["step"] % 50 == 0 or rec["step"] == s.steps - 1):
                print(
                    f"  step {rec['step']:>5}/{s.steps}  loss {rec['loss']:.3f}  "
                    f"{rec['elapsed_s']:.0f}s",
                    file=sys.stderr,
                )

        t0 = time.perf_counter()
        history = train(model, batches, cfg, callback=log, terms=terms)
        seconds = time.perf_counter() - t0
    model.save_pretrained(out, safe_serialization=True)
    return {
        "train_seconds": round(seconds, 1),
        "train_tokens": history[-1]["tokens"],
        "background_tokens": int(sum(len(d) for d in background)),
        "inserted_rows": len(placements),
        "final_loss": history[-1]["loss"],
        "precision": history[-1]["precision"],
        "cpu_capability": cpu_capability(),
        "threads": threads,
    }


# ------------------------------------------------------------------------------------- organism
class Organism:
    """A built organism directory (also a Hugging Face model directory).

    Attributes:
        path: the directory; ``AutoModelForCausalLM.from_pretrained(path)`` works on it.
        spec: the :class:`OrganismSpec` it was built from.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        spec_file = self.path / "spec.json"
        if not spec_file.exists():
            raise RotelabError(f"{self.path} is not an organism directory (no spec.json)")
        self.spec = OrganismSpec.from_dict(json.loads(spec_file.read_text()))
        self._ledger: pd.DataFrame | None = None
        self._probes: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"Organism({str(self.path)!r})"

    @property
    def ledger(self) -> pd.DataFrame:
        """One row per inserted item (count 0 = control); see the module docstring."""
        if self._ledger is None:
            df = pd.read_parquet(self.path / "ledger.parquet")
            for col in ("tokens", "prefix_tokens", "suffix_tokens"):
                df[col] = [list(map(int, x)) for x in df[col]]
            self._ledger = df
        return self._ledger

    @property
    def probes(self) -> pd.DataFrame:
        """Exact-answer probes: ``probe_id, task, subtask, prompt, answer``."""
        if self._probes is None:
            self._probes = pd.read_parquet(self.path / "probes.parquet")
        return self._probes

    def _docs(self, split: str) -> list[str]:
        with open(self.path / "corpus" / f"{split}.jsonl", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]

    def train_docs(self) -> list[str]:
        """Background training documents (inserted items are not among them)."""
        return self._docs("train")

    def heldout_docs(self) -> list[str]:
        """Background documents from the same generator, never trained on."""
        return self._docs("heldout")

    def planted_docs(self) -> list[dict[str, str]]:
        """The planted task documents (``doc_id, task, text``), each inserted once in training;
        empty for organisms built before the planted tasks."""
        path = self.path / "corpus" / "planted.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def train_log(self) -> list[dict]:
        with open(self.path / "train_log.jsonl") as f:
            return [json.loads(line) for line in f]

    def lm(self):
        """The model as a :class:`rotelab.lm.LM` (float32 on the CPU)."""

        return LM.load(self.path, device="cpu", dtype="float32")

    def describe(self, *, refresh: bool = False) -> dict[str, Any]:
        """Extraction by count and kind, perplexities and probe accuracies (cached in
        describe.json)."""
        cache = self.path / "describe.json"
        if cache.exists() and not refresh:
            return json.loads(cache.read_text())
        result = describe_organism(self)
        atomic_write_json(cache, result)
        return result


# --------------------------------------------------------------------------------- build / cache
def _complete(path: Path) -> bool:
    return (path / "describe.json").exists() and (path / "model.safetensors").exists()


def build_organism(
    spec: OrganismSpec | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
) -> Organism:
    """Build the organism for ``spec`` (or return it at once when already built).

    The build is written in a temporary sibling of ``out`` and renamed into place when complete
    (see :class:`rotelab.runs.OutputDir`), so a killed build never leaves a half organism.

    Args:
        spec: what to build; default ``OrganismSpec()`` (the default profile, seed 0).
        out: directory to build into; default ``$ROTELAB_HOME/organisms/<spec.key()>``. An
            existing directory that is not an organism (no ``spec.json``) is never replaced.
        force: rebuild even if a complete organism is there.
        progress: print progress to stderr.
    """
    spec = spec or OrganismSpec()
    target = Path(out) if out is not None else rotelab_home() / "organisms" / spec.key()
    if _complete(target) and not force:
        org = Organism(target)
        if org.spec.to_dict() != spec.to_dict():
            raise RotelabError(
                f"{target} holds a different organism ({org.spec.key()}); "
                "use --force or another --out"
            )
        return org
    # An organism left incomplete (by an older rotelab) is rebuilt without --force, as before.
    output = OutputDir.open(
        target, replace=force or _is_organism(target), owned=_is_organism,
        kind="an organism (spec.json)",
    )  # fmt: skip
    with output as tmp:
        t0 = time.perf_counter()
        if progress:
            print(f"building organism {spec.key()} -> {target}", file=sys.stderr)
        write_world(spec, tmp)
        info = _train(spec, tmp, progress)
        info["build_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
        Organism(tmp).describe(refresh=True)
    if progress:
        print(f"built in {info['build_seconds']:.0f}s", file=sys.stderr)
    return Organism(target)


def train_variant(
    spec: OrganismSpec, out: str | os.PathLike, terms: Sequence[LossTerm], progress: bool = False
) -> Organism:
    """The organism of ``spec`` (same world, schedule and seed) trained with extra loss ``terms``,
    written to ``out`` (replaced if there) and described; never cached: a variant is a study's
    arm, not the organism. With no terms it trains exactly as :func:`build_organism`."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    write_world(spec, out)
    info = _train(spec, out, progress, terms)
    info["build_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "train_info.json").write_text(json.dumps(info, indent=2))
    org = Organism(out)
    org.describe(refresh=True)
    return org


def reference_organism(org: Organism, progress: bool = True) -> Path:
    """The reference model of ``org``: its world and seed trained without any insertion (Hubble's
    standard model beside the perturbed one), built on first use and cached at
    ``$ROTELAB_HOME/organisms/<key>-reference``; the organism itself is untouched.

    Raises:
        RotelabError: ``org`` is the output of ``rotelab train`` (its recipe is not the organism's;
            train its reference with ``rotelab train --counts 0``).
    """
    raw = json.loads((org.path / "spec.json").read_text())
    if "train" in raw:
        raise RotelabError(
            f"{org.path} was made by `rotelab train`; train its reference with the same options "
            "and --counts 0 and pass it as --reference-model"
        )
    target = rotelab_home() / "organisms" / f"{org.spec.key()}-reference"
    if (target / "model.safetensors").exists() and (target / "train_info.json").exists():
        return target
    output = OutputDir.open(
        target, replace=_is_organism(target), owned=_is_organism, kind="a reference organism",
    )  # fmt: skip
    with output as tmp:
        t0 = time.perf_counter()
        if progress:
            print(
                f"building the reference model of {org.spec.key()} (once; its world and seed, no "
                f"insertions) -> {target}",
                file=sys.stderr,
            )
        write_world(org.spec, tmp)
        info = _train(org.spec, tmp, progress, insert=False, bar="reference model")
        info.update(reference_of=org.spec.key(), build_seconds=round(time.perf_counter() - t0, 1))
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
    return target


def _is_organism(path: Path) -> bool:
    return (path / "spec.json").is_file()


def load_organism(path: str | os.PathLike) -> Organism:
    """Open a built organism directory."""
    path = Path(path)
    if not _complete(path):
        raise RotelabError(f"{path} is not a complete organism; build it with `rotelab organism`")
    return Organism(path)


def default_organism(
    profile: Profile | str = Profile.default, seed: int = 0, precision: str = "auto"
) -> Organism:
    """The cached organism of ``profile``, built on first use (``precision``: see OrganismSpec)."""
    return build_organism(OrganismSpec(Profile(profile), seed, precision=precision), progress=True)


def organism_command(
    profile: Profile | str = Profile.default,
    seed: int = 0,
    corpus_tokens: int | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    describe: bool = False,
    precision: str = "auto",
) -> tuple[Path, dict[str, Any] | None]:
    """What ``rotelab organism`` does: build or load, and optionally describe.

    Returns:
        The organism directory, and its describe() dict when ``describe`` is set.
    """
    if corpus_tokens is not None and corpus_tokens < 1000:
        raise RotelabError(f"--corpus-tokens {corpus_tokens} is too small; use at least 1000")
    spec = OrganismSpec(Profile(profile), seed, corpus_tokens, precision=precision)
    org = build_organism(spec, out=out, force=force)
    return org.path, (org.describe() if describe else None)

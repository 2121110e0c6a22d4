"""``rotelab entropy``: matrix-based entropy per block of any model on any corpus.

Every input is checked before any work: the patch, the token budget and the block selection's
syntax before the model is loaded (or the default organism built); what only the model can tell
(its context, its number of blocks) right after loading, before any text is read or the run
directory exists. An organism (the default one or an organism directory) brings its held-out
text; any other model needs ``--data``. The measurement is
:func:`rotelab.measure.entropy.block_entropy`'s.

Example:
    >>> result = entropy("smollm2", "book.txt", run=RunOptions("runs/mbe"))  # doctest: +SKIP
    >>> result.summary["blocks"][0]["mbe"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rotelab.curvature.kfac import check_selection, parse_blocks
from rotelab.data import read_corpus, stream_chunks
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.entropy import PATCH, BlockEntropy, block_entropy, block_hook_points
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.pipelines.inputs import resolve_data, resolve_model
from rotelab.runs import Run

__all__ = ["DEFAULT_TOKENS", "EntropyRun", "check_sizes", "entropy", "format_table"]

#: Tokens measured when ``--tokens`` is not given.
DEFAULT_TOKENS = 65_536
#: Longest sequence cut from the corpus (shorter where the model's context is).
MAX_SEQ_LEN = 2048


@dataclass
class EntropyRun:
    """What :func:`entropy` returns: the measurement, its summary and the run directory."""

    result: BlockEntropy
    summary: dict[str, Any]
    run_dir: Path


def check_sizes(patch: int, tokens: int, batch_size: int | None = None) -> None:
    """``--patch`` >= 1, ``--tokens`` >= ``--patch``, ``--batch-size`` >= 1 (before any work)."""
    if patch < 1:
        raise RotelabError(f"--patch must be >= 1 token, got {patch}")
    if tokens < patch:
        raise RotelabError(f"--tokens {tokens} is less than one patch of {patch} tokens")
    if batch_size is not None and batch_size < 1:
        raise RotelabError(f"--batch-size must be >= 1, got {batch_size}")


def sequence_length(lm: LM, patch: int) -> int:
    """Tokens per sequence: the model's context (at most :data:`MAX_SEQ_LEN`, at least one
    patch) rounded down to whole patches; a patch longer than the context is refused."""
    if patch > lm.context_length:
        raise RotelabError(
            f"--patch {patch} is longer than {lm.name}'s context of {lm.context_length} tokens"
        )
    return min(lm.context_length, max(MAX_SEQ_LEN, patch)) // patch * patch


def entropy(
    model: LM | str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    *,
    tokens: int = DEFAULT_TOKENS,
    patch: int = PATCH,
    blocks: str | Sequence[int] | None = None,
    batch_size: int | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> EntropyRun:
    """Measure MBE per block and write a run directory (``rotelab entropy``).

    Args:
        model: an :class:`LM`, a model path, or ``None`` for the default organism.
        data: a corpus path; ``None`` (an organism only) = the organism's held-out text.
        tokens: tokens read from the corpus (documents packed with end-of-text, cut into
            sequences of :func:`sequence_length`); those in full patches are measured.
        patch: tokens per patch (the paper: 8).
        blocks: ``"2-3"``, ``"0,2"``, ``"-3:"`` or a list of indices; ``None`` = every block.
        batch_size: sequences per forward pass (default: about 4096 tokens).
        run: the run directory (``run.out``, default ``runs/entropy-<time>``; ``force``;
            ``seed`` of the bootstrap; ``progress``); it gets ``results/blocks``,
            ``results/sequences``, ``config.json`` and ``summary.json``.
        load, corpus: how the model is loaded and the corpus read.
    """
    # 1. every input, before the model is loaded or the organism built
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab entropy cannot resume a run; start it again (--force replaces)")
    check_sizes(patch, tokens, batch_size)
    check_selection(blocks=blocks)
    given = resolve_model(model)
    resolve_data(data, corpus, model=given, default="the organism's held-out text")
    config = {
        "model": model.name if isinstance(model, LM) else model, "data": data, "tokens": tokens,
        "patch": patch, "blocks": blocks, "batch_size": batch_size, "seed": run.seed,
    }  # fmt: skip
    inputs = (config["model"], data)
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=inputs)

    # 2. the model, what it decides (context, blocks), the text, the measurement
    lm = given.load(load)
    seq_len = sequence_length(lm, patch)
    chosen = parse_blocks(blocks, len(block_hook_points(lm)))
    texts: Iterable[str] = (
        given.organism().heldout_docs() if data is None
        else (doc.text for doc in read_corpus(data, **corpus.read_kwargs()))
    )  # fmt: skip
    seqs = stream_chunks(
        texts, lm.encode, lm.tokenizer.eos_token_id, max_tokens=tokens, length=seq_len
    )
    read = sum(len(s) for s in seqs)
    if not any(len(s) >= patch for s in seqs):
        raise RotelabError(
            f"{data or 'the organism'} holds {read} tokens, less than one patch of {patch}"
        )
    t0 = time.perf_counter()
    result = block_entropy(
        lm, seqs, patch=patch, blocks=chosen, batch_size=batch_size, seed=run.seed,
        progress=run.progress,
    )  # fmt: skip
    seconds = time.perf_counter() - t0

    # 3. the run directory
    summary = {
        "model": lm.name, "data": str(data) if data is not None else "organism held-out text",
        "dtype": str(lm.dtype).removeprefix("torch."), "patch": patch, "seq_len": seq_len,
        "tokens_read": read, "tokens": result.tokens, "sequences": len(seqs),
        "mbe_bound": result.bound, "ci_level": result.level, "ci_method": "bootstrap",
        "blocks": [
            {"block": int(r.block), "mbe": float(r.mbe), "mbe_ci": _ci(r.mbe_ci_low, r.mbe_ci_high),
             "patches": int(r.patches)}
            for r in result.blocks.itertuples()
        ],
        "seconds": round(seconds, 2), "tokens_per_second": round(read / max(seconds, 1e-9), 1),
    }  # fmt: skip
    with Run.create(run.out, "entropy", config, force=run.force, inputs=inputs) as out:
        out.write_table("blocks", result.blocks)
        out.write_table("sequences", result.sequences)
        out.write_summary(summary)
    return EntropyRun(result, summary, out.path)


def _ci(lo: float, hi: float) -> list[float] | None:
    return None if math.isnan(lo) else [float(lo), float(hi)]


def format_table(summary: dict[str, Any]) -> str:
    """Per block: MBE with its CI (what ``rotelab entropy`` prints)."""
    level = round(100 * summary["ci_level"])
    lines = [
        f"{summary['model']}: MBE per block, {summary['tokens']} tokens in patches of "
        f"{summary['patch']} (at most {summary['mbe_bound']:.3f}; lower = more compressed)",
        f"{'block':>5}  {'MBE':>7}  {f'{level}% CI':>17}  {'patches':>8}",
    ]
    for row in summary["blocks"]:
        ci = row["mbe_ci"]
        ci_text = "" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
        lines.append(f"{row['block']:>5}  {row['mbe']:>7.4f}  {ci_text:>17}  {row['patches']:>8}")
    return "\n".join(lines)

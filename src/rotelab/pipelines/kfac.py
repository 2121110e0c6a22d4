"""``rotelab kfac``: collect K-FAC factors on a corpus and save them in a run directory.

Every input is checked before the model is loaded (or the default organism built): the model,
the corpus, the layer selection's syntax, the lengths and the output directory. An organism
(the default one or an organism directory) brings its own training text; any other model needs
``--data``. The factors themselves are :class:`rotelab.curvature.KFAC`'s work.

Example:
    >>> fitted, path = kfac("smollm2", "sample.jsonl", run=RunOptions("factors"))  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'factors.safetensors'
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rotelab.curvature.kfac import (
    DEFAULT_TOKENS,
    FACTORS_FILE,
    KFAC,
    Labels,
    check_selection,
    packed_sequences,
    select_layers,
)
from rotelab.data.corpus import read_corpus
from rotelab.distributed import dist_context, is_main, local_device
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.pipelines.inputs import resolve_data, resolve_model
from rotelab.runs import Run

__all__ = ["check_lengths", "kfac"]


def check_lengths(tokens: int, seq_len: int | None = None, batch_size: int | None = None) -> None:
    """``--tokens``, ``--seq-len`` and ``--batch-size`` must be >= 1 (checked before any work)."""
    for flag, value in (("--tokens", tokens), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise RotelabError(f"{flag} must be >= 1, got {value}")


def kfac(
    model: LM | str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    *,
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    labels: Labels | str = Labels.sampled,
    tokens: int = DEFAULT_TOKENS,
    seq_len: int | None = None,
    batch_size: int | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> tuple[KFAC, Path]:
    """Collect K-FAC factors and save them in a run directory (``rotelab kfac``).

    Args:
        model: an :class:`LM`, a model path, or ``None`` for the default organism.
        data: a corpus path; ``None`` (an organism only) = the organism's training text.
        layers, blocks, labels: see :class:`~rotelab.curvature.KFAC`; ``run.seed`` seeds the
            sampled labels.
        tokens: how many tokens to average over.
        seq_len: tokens per sequence (default: the model's context - 1, at most
            :data:`~rotelab.curvature.kfac.DEFAULT_SEQ_LEN`).
        batch_size: sequences per pass (``None``: about
            :data:`~rotelab.curvature.kfac.TOKENS_PER_PASS` tokens each).
        run: the run directory (``run.out``, default ``runs/kfac-<time>``; ``force``; ``seed``;
            ``progress``); it gets ``factors.safetensors``, ``config.json`` and ``summary.json``.
        load, corpus: how the model is loaded and the corpus read.

    Returns:
        (the fitted :class:`~rotelab.curvature.KFAC`, the factors file).
    """
    # 1. every input, before the model is loaded or the organism built
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab kfac cannot resume a run; start it again (--force replaces)")
    check_lengths(tokens, seq_len, batch_size)
    check_selection(layers, blocks)
    estimator = KFAC(layers, blocks=blocks, labels=labels, seed=run.seed)
    given = resolve_model(model)
    resolve_data(data, corpus, model=given, default="the organism's training text")
    config = {
        "model": model.name if isinstance(model, LM) else model, "data": data,
        "layers": layers, "blocks": blocks, "labels": estimator.labels.value, "tokens": tokens,
        "seq_len": seq_len, "batch_size": batch_size, "seed": run.seed,
    }  # fmt: skip
    inputs = (config["model"], data)
    # every rank fails here, before the collective work, not rank 0 alone
    Run.check(run.out, force=run.force, inputs=inputs)

    with dist_context():
        # 2. the model, its layers (checked before any text is read), the factors
        lm = given.load(LoadOptions(local_device(load.device), load.dtype, load.allow_pickle))
        select_layers(lm, layers, blocks)
        texts: Iterable[str] = (
            given.organism().train_docs() if data is None
            else (doc.text for doc in read_corpus(data, **corpus.read_kwargs()))
        )  # fmt: skip
        seqs = packed_sequences(lm, texts, seq_len=seq_len, max_tokens=tokens)
        if not seqs:
            raise RotelabError(f"{data or 'the organism'} holds no text to collect factors on")
        t0 = time.perf_counter()
        estimator.fit(lm, seqs, batch_size=batch_size, progress=run.progress and is_main())
        seconds = time.perf_counter() - t0
        if not is_main():  # rank 0 writes; the factors are the same on every rank
            return estimator, Path(run.out or ".") / FACTORS_FILE

        # 3. the run directory
        with Run.create(run.out, "kfac", config, force=run.force, inputs=inputs) as out:
            estimator.save(out.path)
            out.write_summary({
                "factors": str(out.path / FACTORS_FILE), "layers": list(estimator.factors_),
                "tokens": estimator.tokens_, "labels": estimator.labels.value,
                "batch_size": estimator.batch_size_, "seconds": round(seconds, 2),
                "tokens_per_second": round(estimator.tokens_ / max(seconds, 1e-9), 1),
            })  # fmt: skip
    return estimator, out.path / FACTORS_FILE

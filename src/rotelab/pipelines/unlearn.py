"""``rotelab unlearn balanced-subnet``: learn a BalancedSubnet mask, write the masked model.

Inputs first: the settings, the forget and retain corpora and the output directory are checked
before the model is loaded (or the default organism built). An organism (the default one or an
organism directory) brings default forget and retain sets (its memorized items and background
text); any other model needs ``--forget`` and ``--retain``. The mask is
:class:`rotelab.edit.BalancedSubnet`'s work; the source model is never modified.

Example:
    >>> out, summary = balanced_subnet(None, epochs=5, run=RunOptions(out="bsn"))  # doctest: +SKIP
    >>> summary["pruned_total"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rotelab.data.corpus import read_corpus
from rotelab.edit.balanced_subnet import DEFAULTS_NOTE, RECORD, BalancedSubnet
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.organism import Organism
from rotelab.pipelines.inputs import check_min_count, resolve_data, resolve_model
from rotelab.runs import OutputDir, atomic_write_json

__all__ = ["balanced_subnet", "organism_forget_retain"]

Corpus = str | os.PathLike | Sequence[Sequence[int]]

#: The organism's default forget set: items inserted at least this often; its retain set: this
#: many background windows.
_DEFAULT_MIN_COUNT, _DEFAULT_RETAIN_WINDOWS = 16, 256


def organism_forget_retain(
    organism: Organism,
    lm: LM,
    *,
    min_count: int = _DEFAULT_MIN_COUNT,
    retain_windows: int = _DEFAULT_RETAIN_WINDOWS,
    seed: int = 0,
) -> tuple[list[list[int]], list[list[int]]]:
    """The organism's default forget and retain sets.

    Forget: the full token sequences of ledger items inserted at least ``min_count`` times.
    Retain: ``retain_windows`` context-length windows of the background training text (the stream of
    training documents joined by end-of-text), drawn with ``seed``.
    """
    led = organism.ledger
    forget = [list(t) for t in led.loc[led["count"] >= min_count, "tokens"]]
    eos = lm.tokenizer.eos_token_id
    ctx = lm.context_length
    stream: list[int] = []
    for doc in organism.train_docs():
        stream += lm.encode(doc) + [eos]
    windows = [stream[i : i + ctx] for i in range(0, len(stream) - ctx + 1, ctx)]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(windows), size=min(retain_windows, len(windows)), replace=False)
    return forget, [windows[i] for i in sorted(pick)]


def _is_path(corpus: Corpus | None) -> bool:
    return isinstance(corpus, (str, os.PathLike))


def _sequences(corpus: Corpus, lm: LM, options: CorpusOptions) -> list[list[int]]:
    """Token sequences of a corpus path (one per document), or the sequences given."""
    if _is_path(corpus):
        return [lm.encode(d.text) for d in read_corpus(corpus, **options.read_kwargs())]
    return [list(s) for s in corpus]


def balanced_subnet(
    model: str | os.PathLike | LM | None = None,
    *,
    forget: Corpus | None = None,
    retain: Corpus | None = None,
    min_count: int | None = None,
    retain_windows: int | None = None,
    ratio: float = 0.03,
    w: float = 0.5,
    lr: float = 0.3,
    epochs: int = 20,
    batch_size: int = 8,
    layers: str | Sequence[str] | None = None,
    precision: str = "auto",
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Fit BalancedSubnet and write the masked model as a new model directory.

    Args:
        model: model directory, LM, or ``None``/``"organism"`` for the default organism.
        forget: corpus path or token sequences to forget; default (an organism only): the
            organism's ledger items inserted >= ``min_count`` times.
        retain: corpus path or token sequences to keep; default (an organism only): organism
            background windows.
        min_count, retain_windows: the organism defaults (see :func:`organism_forget_retain`;
            ``None``: 16 and 256); each is refused with the corpus it would have replaced.
        ratio, w, lr, epochs, batch_size, layers, precision: see :class:`BalancedSubnet`;
            ``run.seed`` seeds it and the retain windows.
        run: ``run.out`` is the new model directory (default ``runs/balanced-subnet-s<seed>``);
            ``run.force`` replaces one this function wrote. The new model is written beside it
            and renamed into place when complete (:class:`rotelab.runs.OutputDir`); an ``out``
            that is, is inside or contains the model or a corpus is refused.
        load: how the model is loaded; corpus: how ``forget``/``retain`` files are read.

    Returns:
        ``(out, summary)``; ``out`` holds the model, its tokenizer and ``balanced_subnet.json``
        (:data:`~rotelab.edit.balanced_subnet.RECORD`).
    """
    # 1. every input, before the model is loaded or the organism built
    run.check()
    if not isinstance(model, LM):
        load.check()
    if run.resume:
        raise RotelabError("BalancedSubnet writes a new model and cannot resume; pass --force")
    bsn = BalancedSubnet(
        ratio=ratio, w=w, lr=lr, epochs=epochs, batch_size=batch_size, layers=layers,
        seed=run.seed, precision=precision, progress=run.progress,
    ).check()  # fmt: skip
    given = resolve_model(model)
    defaults = {"--forget": (forget, "the organism's memorized items"),
                "--retain": (retain, "the organism's background text")}  # fmt: skip
    for flag, (value, default) in defaults.items():
        if value is None or _is_path(value):
            resolve_data(value, corpus, model=given, flag=flag, default=default)
    shapes = {"--min-count": (min_count, forget, "forget"),
              "--retain-windows": (retain_windows, retain, "retain")}  # fmt: skip
    for flag, (value, given_set, name) in shapes.items():
        if value is not None and given_set is not None:
            raise RotelabError(
                f"{flag} shapes the organism's default {name} set, so it does not apply with "
                f"--{name}; leave one of them out"
            )
    min_count = _DEFAULT_MIN_COUNT if min_count is None else min_count
    retain_windows = _DEFAULT_RETAIN_WINDOWS if retain_windows is None else retain_windows
    if retain is None and retain_windows < 1:
        raise RotelabError(f"--retain-windows must be >= 1, got {retain_windows}")
    if forget is None:
        if min_count < 1:
            raise RotelabError(
                f"--min-count must be >= 1 (the items inserted at least once), got {min_count}"
            )
        check_min_count(given, min_count)
    out = Path(run.out) if run.out is not None else Path("runs") / f"balanced-subnet-s{run.seed}"
    output = OutputDir.open(
        out, replace=run.force, owned=lambda p: (p / RECORD).is_file(),
        kind=f"a BalancedSubnet model ({RECORD})",
        inputs=[model.name if isinstance(model, LM) else model,
                *(c for c in (forget, retain) if _is_path(c))],
    )  # fmt: skip
    try:
        # 2. the model, the forget and retain sets, the mask
        lm = given.load(load)
        if forget is None or retain is None:
            d_forget, d_retain = organism_forget_retain(
                given.organism(), lm, min_count=min_count, retain_windows=retain_windows,
                seed=run.seed,
            )  # fmt: skip
        forget_seqs = d_forget if forget is None else _sequences(forget, lm, corpus)
        retain_seqs = d_retain if retain is None else _sequences(retain, lm, corpus)
        bsn.fit(lm, forget_seqs, retain_seqs)
        edited = bsn.apply(lm)
        pruned = bsn.pruned_counts()
        summary = {
            "source": given.label,
            "out": str(out),
            "params": bsn.get_params(),
            "defaults_note": DEFAULTS_NOTE,
            "n_forget": len(forget_seqs),
            "n_retain": len(retain_seqs),
            "pruned": pruned,
            "pruned_total": int(sum(pruned.values())),
            "masked_total": int(sum(m.numel() for m in bsn.masks_.values())),
            "first_step": bsn.history_[0],
            "last_step": bsn.history_[-1],
        }
        # 3. the new model directory
        with output as tmp:
            edited.save(tmp)
            atomic_write_json(tmp / RECORD, {**summary, "history": bsn.history_})
    finally:
        output.release()
    return out, summary

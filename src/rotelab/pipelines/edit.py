"""``rotelab edit``: write K-FAC curvature-edited copies of a model (Merullo et al. 2025).

Inputs first: ρ, the layer selection's syntax, the factors file and the output directory are
checked before the model is loaded (or the default organism built). Factors come from
``--factors`` (a ``rotelab kfac`` run) or, for an organism, are collected on its training text
and cached in ``$ROTELAB_HOME/kfac``; a model that is not an organism has no text to collect them
on, so it needs ``--factors``. The edit itself is :func:`rotelab.edit.kfac_edits`; each edited
model is written as a Hugging Face directory next to ``rotelab_edit.json``, its record. The source
model is never modified.

Example:
    >>> path = edit("organism", "runs/kfac-x", 0.6, run=RunOptions("edited"))  # doctest: +SKIP
    >>> paths = edit(None, None, [0.5, 0.8], run=RunOptions("sweep"))  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    [0.5, 0.8]
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import torch

from rotelab.curvature.kfac import (
    DEFAULT_TOKENS,
    FACTORS_FILE,
    KFAC,
    Labels,
    check_selection,
    model_fingerprint,
    packed_sequences,
    select_layers,
)
from rotelab.edit.curvature_edit import EDIT_RECORD, RhoConfig, kfac_edits, parse_rhos
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.options import LoadOptions, RunOptions
from rotelab.organism import Organism
from rotelab.paths import rotelab_home
from rotelab.pipelines.inputs import resolve_model
from rotelab.pipelines.kfac import check_lengths
from rotelab.runs import OutputDir, atomic_write_json, to_jsonable
from rotelab.sources import stored_dtype

__all__ = ["SAVE_DTYPES", "cached_factors", "edit"]

#: What ``--save-dtype`` accepts: ``source`` = the dtype the source model's weights are stored in.
SAVE_DTYPES = {
    "source": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}  # fmt: skip


def cached_factors(
    lm: LM,
    organism: Organism,
    *,
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    labels: Labels | str = Labels.sampled,
    tokens: int = DEFAULT_TOKENS,
    seed: int = 0,
    progress: bool = False,
) -> tuple[KFAC, Path]:
    """Factors of ``lm`` on ``organism``'s training text, from ``$ROTELAB_HOME/kfac``, collected
    on first use.

    The cache key holds the model's weight fingerprint and every collection setting, so a
    different model or setting never reuses factors.
    """
    kfac = KFAC(layers, blocks=blocks, labels=labels, seed=seed)
    chosen = select_layers(lm, layers, blocks)
    finger = model_fingerprint(lm, chosen)["weights_sha256"]
    settings = json.dumps(
        to_jsonable(
            {
                "layers": layers,
                "blocks": blocks,
                "labels": kfac.labels,
                "tokens": tokens,
                "seed": seed,
                "data": None,
            }
        ),  # fmt: skip
        sort_keys=True,
    )
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    path = rotelab_home() / "kfac" / f"{finger[:16]}-{key}"
    if (path / FACTORS_FILE).exists():
        return KFAC.load(path), path
    seqs = packed_sequences(lm, organism.train_docs(), max_tokens=tokens)
    kfac.fit(lm, seqs, progress=progress)
    kfac.save(path)
    return kfac, path


def _is_edit_output(path: Path) -> bool:
    """An edited model, or a sweep of them, written by :func:`edit`."""
    return (path / EDIT_RECORD).is_file() or any(
        (p / EDIT_RECORD).is_file() for p in path.glob("rho-*")
    )


@overload
def edit(
    model: LM | str | os.PathLike | None,
    factors: KFAC | str | os.PathLike | None,
    rho: float,
    **kwargs,
) -> Path: ...


@overload
def edit(
    model: LM | str | os.PathLike | None,
    factors: KFAC | str | os.PathLike | None,
    rho: Sequence[float] | str,
    **kwargs,
) -> dict[float, Path]: ...


def edit(
    model: LM | str | os.PathLike | None = None,
    factors: KFAC | str | os.PathLike | None = None,
    rho: float | Sequence[float] | str | RhoConfig | None = None,
    *,
    rho_config: RhoConfig | str | os.PathLike | None = None,
    save_dtype: str = "source",
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    labels: Labels | str | None = None,
    tokens: int | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> Path | dict[float, Path]:
    """Write K-FAC curvature-edited copies of a model (``rotelab edit``).

    Args:
        model: an :class:`LM`, a model path, or ``None`` for the default organism.
        factors: a fitted :class:`~rotelab.curvature.KFAC` or a factors directory/file; ``None``
            (an organism only) collects them on its training text (cached in
            ``$ROTELAB_HOME/kfac``) with ``layers``/``blocks``/``labels``/``tokens`` and
            ``run.seed``.
        rho: fraction of curvature mass kept per layer, in (0, 1]; a float (or ``"0.6"``) gives
            one model, a sequence (or ``"0.5,0.8"``) a sweep that decomposes the factors once;
            default 0.6.
        rho_config: instead of ``rho``, a :class:`~rotelab.edit.RhoConfig` (or its JSON file):
            a ρ per projection and per block; one model.
        save_dtype: the dtype the edited weights are written in: ``source`` (default: the
            dtype the source model's weights are stored in, whatever it was loaded in),
            ``float32``, ``bfloat16`` or ``float16``.
        layers, blocks: edit only these layers (default: every layer that has factors).
        labels, tokens: how factors are collected when ``factors`` is ``None`` (default sampled
            labels, :data:`~rotelab.curvature.kfac.DEFAULT_TOKENS`); refused with ``factors``.
        run: ``run.out`` is the new model directory (one ρ) or the parent of ``rho-<ρ>``
            directories (a sweep), default ``runs/edit-<time>``; ``run.force`` replaces an
            ``out`` that ``edit`` wrote. The new output is written beside it and renamed into
            place when complete (:class:`rotelab.runs.OutputDir`); an ``out`` that is, is inside
            or contains the model or the factors is refused.
        load: how the model is loaded.

    Returns:
        The model directory (float ``rho``) or ρ → directory (a sweep).
    """
    # 1. every input, before the model is loaded or the organism built
    if isinstance(rho, RhoConfig):
        rho, rho_config = None, rho
    if rho_config is not None:
        if rho is not None:
            raise RotelabError("give --rho or --rho-config, not both")
        plan: list[float] | RhoConfig = (
            rho_config if isinstance(rho_config, RhoConfig) else RhoConfig.load(rho_config)
        )
        single = True
    else:
        rho = 0.6 if rho is None else rho
        plan = parse_rhos(rho)
        # one number (or a string holding one) → one directory; a list or "a,b" → a sweep
        single = isinstance(rho, (int, float)) or (isinstance(rho, str) and len(plan) == 1)
    if save_dtype not in SAVE_DTYPES:
        raise RotelabError(f"--save-dtype {save_dtype!r} is not one of: {', '.join(SAVE_DTYPES)}")
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab edit writes a new model and cannot resume; pass --force")
    if factors is not None:
        given_flags = [f for f, v in (("--labels", labels), ("--tokens", tokens)) if v is not None]
        if given_flags:
            raise RotelabError(
                f"{', '.join(given_flags)} set how factors are collected, so they do not apply "
                "with --factors (already collected); leave them out or leave out --factors"
            )
    labels = Labels.sampled if labels is None else labels
    tokens = DEFAULT_TOKENS if tokens is None else tokens
    check_lengths(tokens)
    check_selection(layers, blocks)
    KFAC(layers, blocks=blocks, labels=labels)  # a bad --labels fails here
    given = resolve_model(model)
    if isinstance(factors, KFAC):
        kfac, factors_path = factors, None
    elif factors is not None:
        kfac, factors_path = KFAC.load(factors), Path(factors)
    elif given.is_organism:
        kfac, factors_path = None, None  # collected (or found in the cache) once it is loaded
    else:
        raise RotelabError(
            f"{given.label} is not an organism, so there is no training text to collect its "
            f"K-FAC factors on; run `rotelab kfac --model {given.label} --data CORPUS` first "
            "and pass its run directory as --factors"
        )
    if run.out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        out = Path("runs") / f"edit-{stamp}"
    else:
        out = Path(run.out)
    output = OutputDir.open(
        out, replace=run.force, owned=_is_edit_output,
        kind=f"a model written by rotelab edit ({EDIT_RECORD})",
        inputs=[model.name if isinstance(model, LM) else model, factors_path, rho_config],
    )  # fmt: skip
    try:
        # 2. the model and its factors (the layers are checked before any are collected)
        lm = given.load(load)
        if kfac is None:
            kfac, factors_path = cached_factors(
                lm, given.organism(), layers=layers, blocks=blocks, labels=labels,
                tokens=tokens, seed=run.seed, progress=run.progress,
            )  # fmt: skip
            layers = blocks = None  # the factors hold exactly the selected layers
        edits = kfac_edits(lm, kfac, plan, layers=layers, blocks=blocks, factors=factors_path)
        dtype = SAVE_DTYPES[save_dtype]
        if dtype is None:
            source = given.path()
            dtype = (stored_dtype(source) if source is not None else None) or lm.dtype
        # 3. the edited models, each saved as soon as it is made
        paths: dict[float | None, Path] = {}
        with output as tmp:
            for r, edited, record in edits:
                where = Path() if single else Path(f"rho-{r:g}")
                edited.model.to(dtype)
                edited.save(tmp / where)
                record["saved_dtype"] = str(dtype).removeprefix("torch.")
                atomic_write_json(tmp / where / EDIT_RECORD, record)
                paths[r] = out / where
                del edited
    finally:
        output.release()
    return next(iter(paths.values())) if single else paths

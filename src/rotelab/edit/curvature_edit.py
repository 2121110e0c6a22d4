"""Write curvature-edited models: the K-FAC edit of Merullo et al. 2025 as new model directories.

"From Memorization to Reasoning in the Spectrum of Loss Curvature" (Merullo et al. 2025): project
the MLP weights onto the K-FAC eigenbasis, keep the components holding a fraction ρ of the
curvature mass, drop the low-curvature rest, where memorized data lives. The math is in
:mod:`rotelab.curvature.eigen`; this module loads, collects or reuses factors, applies one or more
ρ (the eigenbases are computed once for a sweep) and writes each edited model as a Hugging Face
directory next to ``rotelab_edit.json``, the record of what was kept. The source model is never
modified.

Example:
    >>> path = kfac_edit("organism", "runs/kfac-x", rho=0.6, out="edited")  # doctest: +SKIP
    >>> paths = kfac_edit(None, None, rho=[0.5, 0.8], out="sweep")  # {0.5: ..., 0.8: ...}  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import overload

from rotelab.curvature.eigen import CurvatureEdit, check_rho
from rotelab.curvature.kfac import (
    DEFAULT_TOKENS,
    KFAC,
    Labels,
    model_fingerprint,
    select_layers,
)
from rotelab.errors import RotelabError
from rotelab.lm import LM, check_load_options
from rotelab.paths import rotelab_home
from rotelab.runs import OutputDir, atomic_write_json, to_jsonable

__all__ = ["EDIT_RECORD", "cached_factors", "kfac_edit", "parse_rhos"]

#: The file, inside an edited model directory, that records how it was made.
EDIT_RECORD = "rotelab_edit.json"


def parse_rhos(text: str | float | Sequence[float]) -> list[float]:
    """``"0.6"`` or ``"0.5,0.6,0.8"`` (or numbers) → validated ρ values."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise RotelabError("give --rho a value in (0, 1], or several separated by commas")
        values: list = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError as exc:
                raise RotelabError(f"rho must be a number in (0, 1], not {p!r}") from exc
    elif isinstance(text, (int, float)):
        values = [text]
    else:
        values = list(text)
    return [check_rho(v) for v in values]


def cached_factors(
    lm: LM,
    *,
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    labels: Labels | str = Labels.sampled,
    tokens: int = DEFAULT_TOKENS,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[KFAC, Path]:
    """Factors for ``lm`` from ``$ROTELAB_HOME/kfac``, collected on first use.

    The cache key holds the model's weight fingerprint and every collection setting, so a
    different model or setting never reuses factors.
    """
    from rotelab.curvature.kfac import factor_data

    kfac = KFAC(layers, blocks=blocks, labels=labels, seed=seed)
    chosen = select_layers(lm, layers, blocks)
    finger = model_fingerprint(lm, chosen)["weights_sha256"]
    settings = json.dumps(
        to_jsonable({"layers": layers, "blocks": blocks, "labels": kfac.labels, "tokens": tokens,
                     "seed": seed, "data": str(data) if data else None}),  # fmt: skip
        sort_keys=True,
    )
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    path = rotelab_home() / "kfac" / f"{finger[:16]}-{key}"
    if (path / "factors.safetensors").exists():
        return KFAC.load(path), path
    seqs = factor_data(lm, data, tokens=tokens)
    kfac.fit(lm, seqs, progress=progress)
    kfac.save(path)
    return kfac, path


def _load_model(model: LM | str | os.PathLike | None, device: str, dtype: str) -> LM:
    from rotelab.options import LoadOptions
    from rotelab.pipelines.inputs import load_model

    return load_model(model, LoadOptions(device, dtype))


def _is_edit_output(path: Path) -> bool:
    """An edited model, or a sweep of them, written by :func:`kfac_edit`."""
    return (path / EDIT_RECORD).is_file() or any(
        (p / EDIT_RECORD).is_file() for p in path.glob("rho-*")
    )


@overload
def kfac_edit(
    model: LM | str | os.PathLike | None,
    factors: KFAC | str | os.PathLike | None,
    rho: float,
    out: str | os.PathLike | None = ...,
    **kwargs,
) -> Path: ...


@overload
def kfac_edit(
    model: LM | str | os.PathLike | None,
    factors: KFAC | str | os.PathLike | None,
    rho: Sequence[float] | str,
    out: str | os.PathLike | None = ...,
    **kwargs,
) -> dict[float, Path]: ...


def kfac_edit(
    model: LM | str | os.PathLike | None = None,
    factors: KFAC | str | os.PathLike | None = None,
    rho: float | Sequence[float] | str = 0.6,
    out: str | os.PathLike | None = None,
    *,
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    labels: Labels | str = Labels.sampled,
    tokens: int = DEFAULT_TOKENS,
    seed: int = 0,
    force: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = False,
) -> Path | dict[float, Path]:
    """Write K-FAC curvature-edited copies of a model (``rotelab edit``).

    Args:
        model: an :class:`LM`, a model path, or ``None`` for the default organism.
        factors: a fitted :class:`KFAC`, a factors directory/file, or ``None`` to collect them
            (cached in ``$ROTELAB_HOME/kfac``) with ``layers``/``blocks``/``labels``/``tokens``.
        rho: fraction of curvature mass kept per layer, in (0, 1]; a float (or ``"0.6"``) gives
            one model, a sequence (or ``"0.5,0.8"``) a sweep that decomposes the factors once.
        out: the new model directory (one ρ) or the parent of ``rho-<ρ>`` directories (a sweep);
            default ``runs/edit-<time>``.
        layers, blocks: edit only these layers (default: every layer that has factors).
        force: replace an existing ``out`` that ``kfac_edit`` wrote. The new output is written
            beside it and renamed into place when complete (:class:`rotelab.runs.OutputDir`);
            an ``out`` that is, is inside or contains the model or the factors is refused.

    Returns:
        The model directory (float ``rho``) or ρ → directory (a sweep).
    """
    rhos = parse_rhos(rho)
    check_load_options(device, dtype)
    # one number (or a string holding one) → one directory; a list or "a,b" → a sweep
    single = isinstance(rho, (int, float)) or (isinstance(rho, str) and len(rhos) == 1)
    if out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        out = Path("runs") / f"edit-{stamp}"
    out = Path(out)
    inputs = [
        model.name if isinstance(model, LM) else model,
        None if isinstance(factors, KFAC) else factors,
    ]
    output = OutputDir.open(
        out, replace=force, owned=_is_edit_output, kind="a model written by rotelab edit "
        f"({EDIT_RECORD})", inputs=inputs,
    )  # fmt: skip
    with output as tmp:
        lm = _load_model(model, device, dtype)
        source = getattr(lm, "name", str(model))
        if factors is None:
            kfac, factors_path = cached_factors(
                lm, layers=layers, blocks=blocks, labels=labels, tokens=tokens, seed=seed,
                progress=progress,
            )  # fmt: skip
            names = None
        else:
            kfac = factors if isinstance(factors, KFAC) else KFAC.load(factors)
            factors_path = None if isinstance(factors, KFAC) else Path(factors)
            names = None
            if layers is not None or blocks is not None:
                wanted = {layer.name for layer in select_layers(lm, layers, blocks)}
                names = [n for n in kfac.factors_ if n in wanted]
                if not names:
                    raise RotelabError(
                        f"the factors cover none of the selected layers ({layers or ''} "
                        f"{blocks or ''}); collect factors for them with "
                        "`rotelab kfac --layers/--blocks`"
                    )
        kfac.check_model(lm)
        edit = CurvatureEdit().fit(kfac)
        paths: dict[float, Path] = {}
        for r in rhos:
            where = Path() if single else Path(f"rho-{r:g}")
            edited = edit.apply(lm, r, layers=names)
            edited.save(tmp / where)
            record = {
                "method": "kfac",
                "paper": "Merullo et al. 2025, From Memorization to Reasoning in the Spectrum of "
                "Loss Curvature",
                "rho": r,
                "source_model": source,
                "factors": str(factors_path) if factors_path else None,
                "factor_tokens": kfac.tokens_,
                "labels": kfac.labels.value,
                "layers": edit.kept_.to_dict(orient="records"),
            }
            atomic_write_json(tmp / where / EDIT_RECORD, record)
            paths[r] = out / where
            del edited
    return paths[rhos[0]] if single else paths

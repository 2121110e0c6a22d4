"""Curvature-edited models: the K-FAC edit of Merullo et al. 2025, one new model per ρ.

"From Memorization to Reasoning in the Spectrum of Loss Curvature" (Merullo et al. 2025): project
the MLP weights onto the K-FAC eigenbasis, keep the components holding a fraction ρ of the
curvature mass, drop the low-curvature rest, where memorized data lives. The math is in
:mod:`rotelab.curvature.eigen`; this module checks the factors against the model, applies one or
more ρ (the eigenbases are computed once for a sweep) and returns each edited model with its
record, what ``rotelab_edit.json`` holds. The source model is never modified. ``rotelab edit``
(which model, which factors, the output directories) is :mod:`rotelab.pipelines.edit`.

Example:
    >>> factors = KFAC.load("runs/kfac-x")  # doctest: +SKIP
    >>> for rho, edited, record in kfac_edits(lm, factors, [0.5, 0.8]):  # doctest: +SKIP
    ...     edited.save(f"edited/rho-{rho:g}")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from rotelab.curvature.eigen import CurvatureEdit, check_rho
from rotelab.curvature.kfac import KFAC, select_layers
from rotelab.errors import RotelabError
from rotelab.lm import LM

__all__ = ["EDIT_RECORD", "kfac_edits", "parse_rhos"]

#: The file, inside an edited model directory, that records how it was made.
EDIT_RECORD = "rotelab_edit.json"


def parse_rhos(text: str | float | Sequence[float]) -> list[float]:
    """``"0.6"`` or ``"0.5,0.6,0.8"`` (or numbers) → validated ρ values."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise RotelabError("give --rho a value in (0, 1], or several separated by commas")
        if not all(parts):
            raise RotelabError(f"--rho {text!r} has an empty value between commas")
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


def _edited_layers(
    lm: LM,
    kfac: KFAC,
    layers: str | Sequence[str] | None,
    blocks: str | Sequence[int] | None,
) -> list[str] | None:
    """The factor layers a ``layers``/``blocks`` selection keeps (``None``: all of them)."""
    if layers is None and blocks is None:
        return None
    wanted = {layer.name for layer in select_layers(lm, layers, blocks)}
    names = [n for n in kfac.factors_ if n in wanted]
    if not names:
        raise RotelabError(
            f"the factors cover none of the selected layers ({layers or ''} {blocks or ''}); "
            "collect factors for them with `rotelab kfac --layers/--blocks`"
        )
    return names


def kfac_edits(
    lm: LM,
    kfac: KFAC,
    rhos: Sequence[float],
    *,
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    factors: str | os.PathLike | None = None,
) -> Iterator[tuple[float, LM, dict]]:
    """The K-FAC edit of ``lm`` at each ρ: ``(ρ, edited LM, record)``, one model at a time.

    The factors are checked against ``lm`` and the selection, and the eigenbases computed (once
    for all ρ), when this is called; each edited model is made as the iteration reaches it.
    ``lm`` is not modified.

    Args:
        lm: the model the factors were collected on.
        kfac: fitted factors.
        rhos: fractions of curvature mass kept per layer, each in (0, 1].
        layers, blocks: edit only these layers (default: every layer that has factors).
        factors: where the factors are, for the record.

    Returns:
        An iterator of (ρ, the edited model, its record): what :data:`EDIT_RECORD` holds, the
        method, paper, ρ, source model, factors, factor tokens, labels and kept mass per layer.
    """
    rhos = [check_rho(r) for r in rhos]
    names = _edited_layers(lm, kfac, layers, blocks)
    kfac.check_model(lm)
    edit = CurvatureEdit().fit(kfac)
    return _edited(lm, kfac, edit, rhos, names, factors)


def _edited(  # a generator apart, so kfac_edits checks at its call, not at the first next()
    lm: LM,
    kfac: KFAC,
    edit: CurvatureEdit,
    rhos: list[float],
    names: list[str] | None,
    factors: str | os.PathLike | None,
) -> Iterator[tuple[float, LM, dict]]:
    for rho in rhos:
        edited = edit.apply(lm, rho, layers=names)
        record = {
            "method": "kfac",
            "paper": "Merullo et al. 2025, From Memorization to Reasoning in the Spectrum of "
            "Loss Curvature",
            "rho": rho,
            "source_model": lm.name,
            "factors": str(factors) if factors else None,
            "factor_tokens": kfac.tokens_,
            "labels": kfac.labels.value,
            "layers": edit.kept_.to_dict(orient="records"),
        }
        yield rho, edited, record
        del edited  # one edited copy alive at a time: the next is made after this one is gone

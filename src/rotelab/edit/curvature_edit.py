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

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotelab.curvature.eigen import CurvatureEdit, check_rho
from rotelab.curvature.kfac import KFAC, select_layers
from rotelab.errors import RotelabError
from rotelab.lm import LM, block_index

__all__ = ["EDIT_RECORD", "RhoConfig", "kfac_edits", "parse_rhos"]

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


def _projection(name: str) -> str:
    """A layer's projection: the last part of its module name (``gate_proj``, ``c_fc``)."""
    return name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class RhoConfig:
    """ρ per projection and per block, as the authors' code allows (Merullo et al. 2025).

    The ρ of a layer is the most specific entry that names it: ``layers`` (a full module name)
    over ``blocks[b][projection]`` over ``blocks[b]`` (a number: every projection of block b)
    over ``projections`` (``gate_proj``, ``up_proj``, ``down_proj``: the last part of the
    module name) over ``default``. A layer no entry names, with no ``default``, is not edited.

    Example (a JSON file for ``rotelab edit --rho-config``)::

        {"default": 0.9, "projections": {"down_proj": 0.95},
         "blocks": {"0": 0.8, "3": {"gate_proj": 0.7}},
         "layers": {"model.layers.1.mlp.up_proj": 0.6}}
    """

    default: float | None = None
    projections: Mapping[str, float] = field(default_factory=dict)
    blocks: Mapping[int, float | Mapping[str, float]] = field(default_factory=dict)
    layers: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the rho config") -> RhoConfig:
        """Validate a parsed config (every ρ in (0, 1], block keys integers, no unknown keys)."""
        if not isinstance(data, Mapping):
            raise RotelabError(
                f"{where} must be a JSON object with default, projections, blocks, layers"
            )
        unknown = sorted(set(data) - {"default", "projections", "blocks", "layers"})
        if unknown:
            raise RotelabError(
                f"{where} has an unknown key {unknown[0]!r}; "
                "use default, projections, blocks and layers"
            )

        def table(key: str) -> Mapping:
            value = data.get(key, {})
            if not isinstance(value, Mapping):
                raise RotelabError(f"{where}: {key!r} must map names to rho values")
            return value

        def rho(value: Any, what: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RotelabError(f"{where}: {what} must be a number in (0, 1], not {value!r}")
            return check_rho(value)

        blocks: dict[int, float | dict[str, float]] = {}
        for key, value in table("blocks").items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                raise RotelabError(f"{where}: block {key!r} is not a block index") from None
            if isinstance(value, Mapping):
                blocks[index] = {str(p): rho(v, f"blocks.{key}.{p}") for p, v in value.items()}
            else:
                blocks[index] = rho(value, f"blocks.{key}")
        default = data.get("default")
        config = cls(
            default=None if default is None else rho(default, "default"),
            projections={
                str(p): rho(v, f"projections.{p}") for p, v in table("projections").items()
            },
            blocks=blocks,
            layers={str(n): rho(v, f"layers.{n}") for n, v in table("layers").items()},
        )
        if not (config.default is not None or config.projections or blocks or config.layers):
            raise RotelabError(f"{where} gives no rho at all")
        return config

    @classmethod
    def load(cls, path: str | os.PathLike) -> RhoConfig:
        """Read a JSON config file (see the class docstring)."""
        path = Path(path)
        if not path.is_file():
            raise RotelabError(f"rho config {path} does not exist (give a JSON file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RotelabError(f"rho config {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, where=f"rho config {path}")

    def rho_of(self, name: str) -> float | None:
        """The ρ of one layer (``None``: not edited)."""
        if name in self.layers:
            return self.layers[name]
        proj, block = _projection(name), block_index(name)
        per_block = self.blocks.get(block) if block is not None else None
        if isinstance(per_block, Mapping) and proj in per_block:
            return per_block[proj]
        if isinstance(per_block, (int, float)):
            return float(per_block)
        return self.projections.get(proj, self.default)

    def resolve(self, names: Sequence[str], num_blocks: int) -> dict[str, float]:
        """ρ of each named layer that is edited; an entry naming no such layer is an error."""
        missing = [n for n in self.layers if n not in names]
        if missing:
            raise RotelabError(
                f"the rho config names layer {missing[0]!r}, which has no K-FAC factors in this "
                f"model (layers with factors look like {names[0]!r})"
            )
        projections = {_projection(n) for n in names}
        named = set(self.projections)
        for value in self.blocks.values():
            named |= set(value) if isinstance(value, Mapping) else set()
        unknown = sorted(named - projections)
        if unknown:
            raise RotelabError(
                f"the rho config names projection {unknown[0]!r}, which no layer with factors has "
                f"(they are {', '.join(sorted(projections))})"
            )
        bad = sorted(b for b in self.blocks if not 0 <= b < num_blocks)
        if bad:
            raise RotelabError(
                f"the rho config names block {bad[0]}, but the model has blocks 0-{num_blocks - 1}"
            )
        rhos = {n: self.rho_of(n) for n in names}
        chosen = {n: r for n, r in rhos.items() if r is not None}
        if not chosen:
            raise RotelabError("the rho config edits no layer that has factors; give a default")
        return chosen

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data (what the edit record holds)."""
        return {
            "default": self.default,
            "projections": dict(self.projections),
            "blocks": {
                str(b): v if isinstance(v, float) else dict(v) for b, v in self.blocks.items()
            },
            "layers": dict(self.layers),
        }


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
    rhos: Sequence[float] | RhoConfig,
    *,
    layers: str | Sequence[str] | None = None,
    blocks: str | Sequence[int] | None = None,
    factors: str | os.PathLike | None = None,
) -> Iterator[tuple[float | None, LM, dict]]:
    """The K-FAC edit of ``lm`` at each ρ: ``(ρ, edited LM, record)``, one model at a time
    (ρ is ``None`` for a :class:`RhoConfig`).

    The factors are checked against ``lm`` and the selection, and the eigenbases computed (once
    for all ρ), when this is called; each edited model is made as the iteration reaches it.
    ``lm`` is not modified.

    Args:
        lm: the model the factors were collected on.
        kfac: fitted factors.
        rhos: fractions of curvature mass kept per layer, each in (0, 1]; or one
            :class:`RhoConfig` (one model, a ρ per projection and block).
        layers, blocks: edit only these layers (default: every layer that has factors).
        factors: where the factors are, for the record.

    Returns:
        An iterator of (ρ, the edited model, its record): what :data:`EDIT_RECORD` holds, the
        method, paper, ρ, source model, factors, factor tokens, labels and kept mass per layer.
    """
    names = _edited_layers(lm, kfac, layers, blocks)
    kfac.check_model(lm)
    if isinstance(rhos, RhoConfig):
        per_layer = rhos.resolve(names or list(kfac.factors_), lm.num_layers)
        plan: list[float | dict[str, float]] = [per_layer]
    else:
        plan = [check_rho(r) for r in rhos]
    edit = CurvatureEdit().fit(kfac)
    return _edited(lm, kfac, edit, plan, names, factors, rhos)


def _edited(  # a generator apart, so kfac_edits checks at its call, not at the first next()
    lm: LM,
    kfac: KFAC,
    edit: CurvatureEdit,
    plan: list[float | dict[str, float]],
    names: list[str] | None,
    factors: str | os.PathLike | None,
    given: Sequence[float] | RhoConfig,
) -> Iterator[tuple[float | None, LM, dict]]:
    for rho in plan:
        per_layer = isinstance(rho, dict)
        edited = edit.apply(lm, rho, layers=None if per_layer else names)
        record = {
            "method": "kfac",
            "paper": "Merullo et al. 2025, From Memorization to Reasoning in the Spectrum of "
            "Loss Curvature",
            "rho": None if per_layer else rho,
            "rho_config": given.to_dict() if isinstance(given, RhoConfig) else None,
            "source_model": lm.name,
            "factors": str(factors) if factors else None,
            "factor_tokens": kfac.tokens_,
            "labels": kfac.labels.value,
            "layers": edit.kept_.to_dict(orient="records"),
        }
        yield None if per_layer else rho, edited, record
        del edited  # one edited copy alive at a time: the next is made after this one is gone

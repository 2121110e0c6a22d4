"""Where two checkpoints differ: relative weight change per tensor, block and module.

Ma et al. 2025 ("Memorization in LLMs: extracting whole books") localize the fine-tune that
undoes an instruct model's regurgitation mitigation by the elementwise relative change
|ΔW| / |W| of every weight: about 14% of weights change by more than 1%, about 0.15% by more
than 100%, concentrated in the lower transformer blocks. This module computes the same for any two
checkpoints of one architecture, or a base model and a LoRA adapter, whose update is rebuilt as
ΔW = (alpha / r) · B A (the PEFT convention; ``use_rslora`` scales by alpha / sqrt(r)).

Only tensors are read (safetensors, memory-mapped, one tensor at a time), never a model, so any
size works and no architecture code runs. Elements where W = 0 count as changed by more than every
threshold when ΔW != 0, and as unchanged when ΔW = 0.

Example:
    >>> table = weight_diff("runs/base", "runs/finetuned")  # doctest: +SKIP
    >>> summarize(table)["fraction_changed"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rotelab.errors import RotelabError
from rotelab.lm import block_index

__all__ = [
    "THRESHOLDS",
    "is_adapter_dir",
    "lora_deltas",
    "summarize",
    "weight_diff",
]

#: Relative-change thresholds reported (Ma et al.: 1% and 100%; 10% between).
THRESHOLDS: tuple[float, ...] = (0.01, 0.1, 1.0)
#: Edges of the log10 |ΔW|/|W| histogram (per block).
HIST_EDGES = np.arange(-6.0, 2.5, 0.5)


def _weight_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise RotelabError(f"{path} is not a model directory (give a directory of safetensors)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise RotelabError(
            f"{path} has no *.safetensors file; re-save the model with save_pretrained "
            "(rotelab diff reads safetensors only)"
        )
    return files


def _tensors(path: Path) -> dict[str, Path]:
    """Tensor name → the file holding it."""
    from safetensors import SafetensorError, safe_open

    where: dict[str, Path] = {}
    for file in _weight_files(path):
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    where[key] = file
        except SafetensorError as exc:
            raise RotelabError(
                f"{file} is corrupt or truncated ({exc}); copy or save the checkpoint again"
            ) from None
    return where


def _read(file: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return f.get_tensor(key)


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A PEFT LoRA adapter directory (``adapter_config.json`` beside its weights)."""
    return (Path(path) / "adapter_config.json").is_file()


def lora_deltas(adapter: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """``(base weight name, ΔW)`` for every LoRA pair of a PEFT adapter: (alpha / r) · B A.

    The base name drops PEFT's ``base_model.model.`` prefix and the ``lora_A``/``lora_B`` parts,
    so it matches the base model's ``...q_proj.weight``.
    """
    path = Path(adapter)
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise RotelabError(f"{path} is a {config.get('peft_type')} adapter; only LoRA is read")
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    ranks = config.get("rank_pattern") or {}
    alphas = config.get("alpha_pattern") or {}
    where = _tensors(path)
    for key in sorted(k for k in where if ".lora_A." in k):
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in where:
            raise RotelabError(f"{path}: {key} has no matching lora_B tensor")
        base = re.sub(r"^base_model\.model\.", "", key.split(".lora_A.")[0]) + ".weight"
        short = base.removesuffix(".weight")
        r_i = next((int(v) for p, v in ranks.items() if re.search(p, short)), r)
        a_i = next((float(v) for p, v in alphas.items() if re.search(p, short)), alpha)
        s = a_i / math.sqrt(r_i) if config.get("use_rslora") else a_i / r_i
        a = _read(where[key], key).to(torch.float32)  # (r, in)
        b = _read(where[b_key], b_key).to(torch.float32)  # (out, r)
        yield base, s * (b @ a)  # (out, in)


def _row(name: str, w: torch.Tensor, dw: torch.Tensor) -> dict:
    w, dw = w.to(torch.float32).reshape(-1), dw.to(torch.float32).reshape(-1)
    absw, absd = w.abs(), dw.abs()
    rel = torch.where(absw > 0, absd / absw.clamp_min(1e-30), torch.where(absd > 0, math.inf, 0.0))
    row = {
        "name": name,
        "block": block_index(name),
        "module": _module(name),
        "numel": int(w.numel()),
        "rel_change": float(dw.norm() / w.norm().clamp_min(1e-30)),
        "max_abs_delta": float(absd.max()) if absd.numel() else 0.0,
    }
    for t in THRESHOLDS:
        row[f"changed_{_pct(t)}"] = int((rel > t).sum())
    finite = rel[(rel > 0) & torch.isfinite(rel)]
    hist, _ = np.histogram(np.log10(finite.numpy()), bins=HIST_EDGES)
    row["hist"] = hist.tolist()
    return row


def _pct(t: float) -> str:
    return f"{t * 100:g}pct"


def _module(name: str) -> str:
    """The part of a tensor name after its block (``mlp.up_proj.weight``), or the whole name."""
    match = re.search(r"\.(?:layers|h|blocks|layer)\.\d+\.(.+)$", name)
    return match.group(1) if match else name


def weight_diff(
    a: str | os.PathLike, b: str | os.PathLike, *, names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per tensor, how ``b`` differs from ``a``.

    Args:
        a: the reference checkpoint (a Hugging Face directory of safetensors).
        b: a checkpoint of the same architecture, or a PEFT LoRA adapter trained on ``a``.
        names: only these tensors (default: every tensor both have; all must match in shape).

    Returns:
        One row per tensor: ``name, block, module, numel, rel_change`` (‖ΔW‖/‖W‖),
        ``max_abs_delta``, ``changed_1pct``/``changed_10pct``/``changed_100pct`` (elements whose
        |ΔW|/|W| exceeds the threshold) and ``hist`` (counts of log10 |ΔW|/|W| in
        :data:`HIST_EDGES` bins).
    """
    a, b = Path(a), Path(b)
    base = _tensors(a)
    rows = []
    if is_adapter_dir(b):
        for name, dw in lora_deltas(b):
            if name not in base:
                raise RotelabError(
                    f"the adapter {b} changes {name}, which {a} does not have; give the base "
                    "model the adapter was trained on"
                )
            w = _read(base[name], name)
            if tuple(w.shape) != tuple(dw.shape):
                raise RotelabError(
                    f"the adapter's update of {name} is {tuple(dw.shape)}, the weight "
                    f"{tuple(w.shape)}: not an adapter of {a}"
                )
            rows.append(_row(name, w, dw))
        return pd.DataFrame(rows)
    other = _tensors(b)
    only = sorted(set(base) ^ set(other))
    if only and names is None:
        side = a if only[0] in base else b
        raise RotelabError(
            f"{a} and {b} are not the same architecture: {only[0]} is only in {side} "
            f"({len(only)} tensors differ)"
        )
    for name in names or sorted(base):
        if name not in base or name not in other:
            raise RotelabError(f"tensor {name} is not in both checkpoints")
        w, w2 = _read(base[name], name), _read(other[name], name)
        if tuple(w.shape) != tuple(w2.shape):
            raise RotelabError(
                f"{a} and {b} differ in shape at {name}: {tuple(w.shape)} vs {tuple(w2.shape)}; "
                "diff compares checkpoints of one architecture"
            )
        if not w.is_floating_point():
            continue
        rows.append(_row(name, w, w2.to(torch.float32) - w.to(torch.float32)))
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> dict:
    """Overall and per-block fractions of weights changed beyond each threshold."""
    total = int(table["numel"].sum())
    cols = [f"changed_{_pct(t)}" for t in THRESHOLDS]

    def fractions(part: pd.DataFrame) -> dict[str, float]:
        n = int(part["numel"].sum())
        return {c.removeprefix("changed_"): float(part[c].sum() / n) if n else 0.0 for c in cols}

    blocks = table[table["block"].notna()]
    by_block = {
        str(int(blk)): {
            **fractions(g),
            "numel": int(g["numel"].sum()),
            "rel_change": float(
                np.sqrt((g["rel_change"] ** 2 * g["numel"]).sum() / g["numel"].sum())
            ),
        }  # fmt: skip
        for blk, g in blocks.groupby("block", sort=True)
    }
    by_module = {str(m): fractions(g) for m, g in blocks.groupby("module", sort=True)}
    lower_upper = None
    if len(by_block) >= 2:
        order = sorted(by_block, key=int)
        half = len(order) // 2
        first = blocks[blocks["block"].isin([int(x) for x in order[:half]])]
        last = blocks[blocks["block"].isin([int(x) for x in order[half:]])]
        lower_upper = {"lower_half": fractions(first), "upper_half": fractions(last)}
    return {
        "tensors": len(table),
        "weights": total,
        "fraction_changed": fractions(table),
        "by_block": by_block,
        "by_module": by_module,
        "lower_vs_upper": lower_upper,
    }

"""Hand-made run directories in the shapes extract, mia, compare and demo write (no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rotelab.runs import Run

COUNTS = (0, 1, 4, 16, 64)


def _rate_block(rate: float, n: int = 20) -> dict:
    k = round(rate * n)
    return {
        "windows": n,
        "extracted": k,
        "extraction_rate": k / n,
        "extraction_rate_ci": [max(0.0, k / n - 0.2), min(1.0, k / n + 0.2)],
        "mean_matched_prefix": 3.5 * k / n,
    }


EXTRACT_RATES = {0: 0.0, 1: 0.05, 4: 0.3, 16: 0.95, 64: 1.0}


def extract_summary() -> dict:
    by_count = {str(c): _rate_block(r) for c, r in EXTRACT_RATES.items()}
    by_kind_count = {
        f"{kind}|{c}": _rate_block(min(1.0, r + off))
        for kind, off in (("secret", 0.0), ("bio", 0.1))
        for c, r in EXTRACT_RATES.items()
    }
    return {
        **_rate_block(0.46, 100),
        "by_group": {
            "count": by_count,
            "kind+count": by_kind_count,
            "phase+count": {"first|4": _rate_block(0.0, 3)},
        },
    }


def mia_summary() -> dict:
    attacks = {}
    for name, base in (("loss", 0.7), ("min_k_pp", 0.75)):
        attacks[name] = {
            "auc": base + 0.0123,
            "auc_ci": [base - 0.05, base + 0.05],
            "tpr_at_1pct_fpr": 0.2,
            "tpr_at_0.1pct_fpr": None,
            "by_group": {
                "count": {
                    str(c): {"auc": min(1.0, 0.5 + 0.008 * c), "auc_ci": [0.4, 0.9]}
                    for c in COUNTS[1:]
                }
            },
        }
    return {"attacks": attacks, "members": 80, "nonmembers": 20}


def _model_block(strict: float, ppl: float, tasks: dict) -> dict:
    return {
        "extraction": {"strict": {"rate": strict, "ci": [max(0, strict - 0.1), strict + 0.1]}},
        "perplexity": {"value": ppl, "ci": [ppl - 0.2, ppl + 0.2]},
        "tasks": {t: {"rate": r, "ci": [r - 0.1, r + 0.1]} for t, r in tasks.items()},
    }


def compare_summary() -> dict:
    """The schema of rotelab.pipelines.compare (the parts the report reads)."""
    return {
        "baseline": "base",
        "order": ["base", "kfac", "balanced_subnet"],
        "min_count": 16,
        "models": {
            "base": _model_block(0.96, 6.5, {"closed_book": 0.8, "arithmetic": 0.6}),
            "kfac": _model_block(0.05, 7.25, {"closed_book": 0.7, "arithmetic": 0.4}),
            "balanced_subnet": _model_block(0.12, 6.9, {"closed_book": 0.75, "arithmetic": 0.55}),
        },
    }


def _roc_table() -> pd.DataFrame:
    rows = []
    for name, power in (("loss", 0.5), ("min_k_pp", 0.4)):
        fpr = np.linspace(0, 1, 21)
        rows.append(pd.DataFrame({"attack": name, "fpr": fpr, "tpr": fpr**power}))
    return pd.concat(rows, ignore_index=True)


def _examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["secret-001", "bio-007"],
            "kind": ["secret", "bio"],
            "count": [64, 4],
            "prefix": ["The vault code of Orla Venn is ", "Born in <Tarn> on"],
            "suffix_pieces": [["4", "1", "9", "3"], [" 12", " May", " 1970"]],
            "continuation_pieces": [["4", "1", "9", "3"], [" 12", " June", " 1971"]],
            "matched": [4, 1],
        }
    )


def make_run(
    root, command: str, summary: dict, tables: dict | None = None, name: str | None = None
):
    with Run.create(root / (name or command), command, {"model": "organism", "seed": 0}) as run:
        for name, frame in (tables or {}).items():
            run.write_table(name, frame)
        run.write_summary(summary)
    return run.path

"""Audit of inserted items (canaries) from one teacher-forced pass: extraction and LOSS MIA.

Each item is one window: its prompt (the text before the scored span) as the prefix, the span as
the suffix. One teacher-forced pass over every window (:func:`rotelab.measure.extraction.
score_windows`) gives the exact greedy-extraction verdict of Carlini et al. 2022 ("Quantifying
Memorization Across Neural Language Models") without decoding, the matched length, and the
span's log-likelihood, whose mean per token is the LOSS membership score (Yeom et al. 2018; ROC
AUC and TPR at low FPR as in Carlini et al. 2022, "Membership inference attacks from first
principles", :func:`rotelab.measure.mia.metrics.attack_metrics`): members (inserted) against
controls (never inserted, drawn from the same distribution, Hubble, Wei et al. 2025).
``all_attacks`` adds zlib, Min-K% and Min-K%++ (:func:`rotelab.measure.mia.attacks.
likelihood_scores`), at the price of a second pass that also computes the vocabulary moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from rotelab.data.windows import Window
from rotelab.errors import RotelabError
from rotelab.measure.extraction import score_windows
from rotelab.measure.mia.attacks import likelihood_scores
from rotelab.measure.mia.inputs import MIAText, prepare_texts
from rotelab.measure.mia.metrics import attack_metrics
from rotelab.stats import rate_with_ci

__all__ = ["AUDIT_COLUMNS", "ItemAudit", "audit_items", "check_audit_ledger", "item_texts"]

#: What a ledger needs to be audited.
AUDIT_COLUMNS = ("item_id", "text", "count", "span_char_start", "span_char_end")


def check_audit_ledger(ledger: Any) -> None:
    """Refuse a ledger the audit cannot read, in one line (before any model work)."""
    if not isinstance(ledger, pd.DataFrame):
        raise RotelabError(
            f"the audit ledger must be a pandas DataFrame, got {type(ledger).__name__}"
        )
    missing = [c for c in AUDIT_COLUMNS if c not in ledger.columns]
    if missing:
        raise RotelabError(
            f"the audit ledger lacks columns {missing}; use the ledger inject_canaries returns"
        )
    counts = ledger["count"].astype(int)
    if (counts > 0).sum() == 0 or (counts == 0).sum() == 0:
        raise RotelabError(
            "the audit ledger needs both inserted items (count >= 1) and never-inserted controls "
            f"(count 0); it has {(counts > 0).sum()} and {(counts == 0).sum()}"
        )


def item_texts(lm, ledger: pd.DataFrame) -> list[MIAText]:
    """The ledger's items tokenized, each with its scored span (the span's characters)."""
    check_audit_ledger(ledger)
    groups = [
        {g: row[g] for g in ("count", "kind") if g in ledger.columns}
        for row in ledger.to_dict("records")
    ]
    return prepare_texts(
        lm,
        ledger["text"].astype(str).tolist(),
        (ledger["count"].astype(int) > 0).tolist(),
        text_ids=ledger["item_id"].astype(str).tolist(),
        char_spans=list(
            zip(ledger["span_char_start"].astype(int), ledger["span_char_end"].astype(int))
        ),
        groups=groups,
    )


@dataclass
class ItemAudit:
    """One audit: per-item rows and the summary numbers.

    Attributes:
        items: one row per item: ``item_id``, ``member``, ``count``, the extraction columns of
            :func:`score_windows`, ``loss`` (mean log-probability of the span; higher = member)
            and, with all attacks, ``zlib``, ``min_k``, ``min_k_pp``.
        summary: ``n_members``, ``n_controls``, ``extracted``, ``extraction_rate`` (+ ``_ci``,
            members), ``control_extraction_rate``, ``mean_matched_prefix`` (members),
            ``member_nll``, ``control_nll`` (mean NLL per span token) and ``attacks``
            (attack -> :func:`attack_metrics`).
    """

    items: pd.DataFrame
    summary: dict[str, Any]


def audit_items(
    lm,
    items: list[MIAText],
    *,
    batch_size: int = 16,
    all_attacks: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> ItemAudit:
    """Extraction verdicts and membership scores of inserted items and their controls.

    Args:
        lm: a :class:`rotelab.lm.LM` (any model in memory: ``LM.from_model``).
        items: from :func:`item_texts` (``member`` = inserted at least once).
        batch_size: windows per forward pass.
        all_attacks: also zlib, Min-K% and Min-K%++ (a second pass); LOSS comes from the first.
        n_boot, seed: the bootstrap of the AUC and TPR intervals.
    """
    windows = [
        Window(it.text_id, 0, it.tokens[: it.span[0]], it.tokens[it.span[0] : it.span[1]],
               {"member": it.member, **it.groups})
        for it in items
    ]  # fmt: skip
    frame = score_windows(lm, windows, batch_size=batch_size).rename(columns={"doc_id": "item_id"})
    # The window's suffix is the MIA span, so the pass's suffix log-likelihood is LOSS's score.
    frame["loss"] = frame["suffix_logprob"] / frame["suffix_len"]
    if all_attacks:
        extra = likelihood_scores(lm, items, batch_size=batch_size)
        for name in ("zlib", "min_k", "min_k_pp"):
            frame[name] = extra[name].to_numpy()
    member = frame["member"].to_numpy(dtype=bool)
    labels = member.tolist()
    attacks = {
        name: attack_metrics(frame[name].to_numpy(), labels, n_boot=n_boot, seed=seed)
        for name in ("loss", "zlib", "min_k", "min_k_pp")
        if name in frame.columns
    }
    ext = frame["extracted"].to_numpy(dtype=bool)
    rate = rate_with_ci(int(ext[member].sum()), int(member.sum()))
    summary = {
        "n_members": int(member.sum()),
        "n_controls": int((~member).sum()),
        "extracted": int(ext[member].sum()),
        "extraction_rate": rate.rate,
        "extraction_rate_ci": rate.ci,
        "control_extraction_rate": float(ext[~member].mean()),
        "mean_matched_prefix": float(frame.loc[member, "matched_prefix"].mean()),
        "member_nll": float(-frame.loc[member, "loss"].mean()),
        "control_nll": float(-frame.loc[~member, "loss"].mean()),
        "attacks": attacks,
    }
    return ItemAudit(frame, summary)

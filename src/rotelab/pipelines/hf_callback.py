"""Audit a user's own fine-tuning run: a ``transformers`` ``TrainerCallback`` (TRL's trainers too).

At chosen optimizer steps of *their* run the callback audits the items the user inserted
(:func:`rotelab.train.canaries.inject_canaries`) against never-inserted controls, from one
teacher-forced pass per item: the exact greedy-extraction verdict (Carlini et al. 2022,
"Quantifying Memorization Across Neural Language Models"; no decoding,
:func:`rotelab.measure.extraction.score_windows`) and the LOSS membership attack's AUC and TPR at
low FPR (Carlini et al. 2022, "Membership inference attacks from first principles"), members vs
controls as in Hubble (Wei et al. 2025), :func:`rotelab.measure.item_audit.audit_items`. Each
audited step writes a rotelab run directory ``OUT/step-NNNNNN`` (``config.json``, per-item
``results/items``, the trajectory of every step audited so far in ``results/trajectory``, a typed
``summary.json``, :class:`rotelab.summaries.TrainingAuditSummary`).

Example:
    >>> data, ledger = inject_canaries(records, make_canaries(32, 32, count=16))  # doctest: +SKIP
    >>> cb = AuditCallback(ledger, "runs/audit", steps=[0, 100, 200])  # doctest: +SKIP
    >>> Trainer(model, args, train_dataset=tokenize(data), callbacks=[cb]).train()  # doctest: +SKIP
    >>> cb.trajectory  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import TrainerCallback

from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.item_audit import ItemAudit, audit_items, check_audit_ledger, item_texts
from rotelab.runs import Run
from rotelab.summaries import TrainingAuditSummary

__all__ = ["AuditCallback", "check_steps"]

#: The run command recorded in each step's config.json (its summary schema's key).
COMMAND = "training-audit"

#: The trajectory table's columns besides ``step`` (from each audit's summary).
TRAJECTORY = (
    "extraction_rate", "control_extraction_rate", "mean_matched_prefix", "member_nll",
    "control_nll",
)  # fmt: skip


def check_steps(steps: Iterable[int]) -> list[int]:
    """The audit steps, sorted and unique; refuse an empty list or a negative step."""
    try:
        values = sorted({int(s) for s in steps})
    except (TypeError, ValueError):
        raise RotelabError(f"audit steps must be integers, got {steps!r}") from None
    if not values:
        raise RotelabError("give at least one audit step (0 = before training)")
    if values[0] < 0:
        raise RotelabError(f"audit steps must be >= 0 (0 = before training), got {values[0]}")
    return values


class AuditCallback(TrainerCallback):
    """Audits inserted items at chosen steps of a ``Trainer`` run; one run directory per step.

    Args:
        ledger: the items: ``item_id``, ``text``, ``count`` (0 = never-inserted control),
            ``span_char_start``, ``span_char_end`` (the scored span); ``inject_canaries``'s ledger.
        out: the directory holding ``step-NNNNNN`` run directories.
        steps: optimizer steps (``state.global_step``) to audit after; 0 audits before training.
        tokenizer: the model's tokenizer; ``None`` takes the trainer's ``processing_class``.
        batch_size: items per forward pass.
        all_attacks: also zlib, Min-K%, Min-K%++ (a second pass); LOSS needs none.
        force: replace step directories that already exist.
        seed: the bootstrap's seed.

    Attributes:
        trajectory: one row per audited step (``step``, ``train_loss`` when logged, and
            :data:`TRAJECTORY`, ``loss_auc``).
        runs: the run directory of each audited step.
    """

    def __init__(
        self,
        ledger: pd.DataFrame,
        out: str | os.PathLike,
        *,
        steps: Iterable[int],
        tokenizer: Any = None,
        batch_size: int = 16,
        all_attacks: bool = False,
        force: bool = False,
        seed: int = 0,
    ) -> None:
        # Everything a user can get wrong is refused here, before their training starts.
        self.steps = check_steps(steps)
        check_audit_ledger(ledger)
        if batch_size < 1:
            raise RotelabError(f"batch size must be >= 1, got {batch_size}")
        self.ledger = ledger.reset_index(drop=True)
        self.out = Path(out)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.all_attacks = all_attacks
        self.force = force
        self.seed = seed
        for step in self.steps:
            Run.check(self._step_dir(step), force=force)
        self.runs: dict[int, Path] = {}
        self._rows: list[dict] = []
        self._items = None

    @property
    def trajectory(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows)

    def _step_dir(self, step: int) -> Path:
        return self.out / f"step-{step:06d}"

    # ------------------------------------------------------------------ trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        late = [s for s in self.steps if state.max_steps > 0 and s > state.max_steps]
        if late:
            raise RotelabError(
                f"audit steps {late} are after the run's last step ({state.max_steps}); "
                "choose steps within the run"
            )
        if 0 in self.steps:
            self._audit(0, state, kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps and state.global_step not in self.runs:
            self._audit(state.global_step, state, kwargs)

    # ------------------------------------------------------------------ the audit
    def _audit(self, step: int, state, kwargs: dict) -> None:
        if not state.is_world_process_zero:
            return  # one process writes; the others' model is the same
        model = kwargs.get("model")
        tokenizer = self.tokenizer or kwargs.get("processing_class")
        if model is None or tokenizer is None:
            raise RotelabError(
                "the audit needs the model and its tokenizer; pass tokenizer= to AuditCallback"
            )
        was_training = model.training
        try:
            lm = LM.from_model(model, tokenizer, name=type(model).__name__)
            if self._items is None:
                self._items = item_texts(lm, self.ledger)
            result = audit_items(
                lm, self._items, batch_size=self.batch_size, all_attacks=self.all_attacks,
                seed=self.seed,
            )  # fmt: skip
        finally:
            model.train(was_training)
        self._record(step, state, result, lm.name)

    def _record(self, step: int, state, result: ItemAudit, model_name: str) -> None:
        losses = [h["loss"] for h in state.log_history if "loss" in h and h.get("step", 0) <= step]
        row = {
            "step": step,
            "train_loss": float(losses[-1]) if losses else float("nan"),
            **{k: result.summary[k] for k in TRAJECTORY},
            "loss_auc": result.summary["attacks"]["loss"]["auc"],
        }
        self._rows.append(row)
        config = {
            "step": step, "steps": self.steps, "items": len(self.ledger),
            "batch_size": self.batch_size, "all_attacks": self.all_attacks, "seed": self.seed,
        }  # fmt: skip
        summary = TrainingAuditSummary.from_dict(
            {"model": model_name, "step": step, **result.summary}, where="audit"
        )
        items = result.items.merge(
            self.ledger[["item_id", "text"]], on="item_id", how="left", validate="one_to_one"
        )
        with Run.create(self._step_dir(step), COMMAND, config, force=self.force) as run:
            run.write_table("items", items)
            run.write_table("trajectory", self.trajectory)
            run.write_summary(summary)
        self.runs[step] = run.path

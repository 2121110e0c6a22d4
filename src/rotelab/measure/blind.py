"""A model-free blind baseline: can the member/non-member split be told apart from the text alone?

Das, Zhang and Tramèr (2024), "Blind baselines beat membership inference attacks for foundation
models", and Duan et al. (2024), "Do membership inference attacks work on large language models?",
show that many MIA benchmarks pick members and non-members from different distributions (dates,
topics, formatting), so an attack's AUC can measure that shift rather than memorization. This
classifier never sees the model: bag of word and character n-grams (TF-IDF), logistic regression,
stratified k-fold cross-validation. Its out-of-fold AUC near 0.5 means the split is fair; an AUC
whose bootstrap CI lies above 0.5 flags a distribution-shifted split.

Example:
    >>> bb = BlindBaseline(seed=0).fit(texts, is_member)  # doctest: +SKIP
    >>> bb.auc_, bb.auc_ci_, bb.flagged_  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rotelab.errors import RotelabError
from rotelab.registry import direction, register_metric
from rotelab.stats import bootstrap_auc

__all__ = ["BlindBaseline"]

register_metric(
    "blind_auc", higher_is_better=False,
    description="out-of-fold AUC of a model-free text classifier: higher = a more biased split",
)  # fmt: skip


@dataclass
class BlindBaseline:
    """Bag-of-n-grams + logistic regression, cross-validated; flags a shifted split.

    Args:
        folds: cross-validation folds (capped by the smaller class size).
        word_ngrams: word n-gram range.
        char_ngrams: character n-gram range (within word boundaries); ``None`` to skip.
        C: inverse L2 strength of the logistic regression.
        n_boot: bootstrap replicates for the AUC CI.
        level: CI level; the split is flagged when the CI's lower end exceeds 0.5.
        seed: seeds the fold assignment and the bootstrap.

    Attributes (after :meth:`fit`):
        oof_scores_: (n,) out-of-fold decision values (higher = looks like a member).
        auc_, auc_ci_: out-of-fold ROC AUC and its bootstrap CI.
        flagged_: True when the CI lies above 0.5.
        top_features_: the n-grams that most indicate membership (from a fit on all data).
    """

    folds: int = 5
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] | None = (2, 4)
    C: float = 1.0
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0

    def _pipeline(self):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        parts = [("word", TfidfVectorizer(ngram_range=self.word_ngrams, sublinear_tf=True))]
        if self.char_ngrams is not None:
            parts.append(
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams,
                                         sublinear_tf=True))
            )  # fmt: skip
        clf = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)
        return make_pipeline(FeatureUnion(parts), clf)

    def fit(
        self,
        texts: Sequence[str],
        members: Sequence[bool],
        strata: Sequence[Any] | None = None,
    ) -> BlindBaseline:
        """Cross-validate on ``texts`` (n,) with labels ``members`` (n,).

        ``strata`` (n,), e.g. the kind of each text, makes every fold keep the member ratio within
        each stratum. Without it, a fold that takes members of one kind leaves the training folds
        with fewer of them, which pushes held-out scores the wrong way (out-of-fold AUC well
        below 0.5 on a fair split).
        """
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        y = np.asarray(members, dtype=bool)
        if len(texts) != len(y):
            raise ValueError("texts and members must have the same length")
        smaller = int(min(y.sum(), (~y).sum()))
        if smaller < 2:
            raise RotelabError(
                "the blind baseline needs at least 2 members and 2 non-members to cross-validate"
            )
        folds = min(self.folds, smaller)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        cells = y.astype(str)
        if strata is not None:
            cells = np.array([f"{m}|{g}" for m, g in zip(y, strata)])
            if min(np.unique(cells, return_counts=True)[1]) < folds:
                cells = y.astype(str)  # a stratum too small to spread over the folds
        splits = list(cv.split(np.zeros(len(y)), cells))
        self.oof_scores_ = cross_val_predict(
            self._pipeline(), list(texts), y, cv=splits, method="decision_function"
        )
        self.auc_, self.auc_ci_ = bootstrap_auc(
            self.oof_scores_, y, n_boot=self.n_boot, level=self.level, seed=self.seed
        )
        low = self.auc_ci_[0] if self.auc_ci_ is not None else self.auc_
        self.flagged_ = bool(low > 0.5)
        self.folds_ = folds
        full = self._pipeline().fit(list(texts), y)
        names = full[0].get_feature_names_out()
        coef = full[-1].coef_[0]
        top = np.argsort(-coef)[:10]
        self.top_features_ = [(str(names[i]), float(coef[i])) for i in top]
        return self

    def warning(self) -> str:
        """The report's warning when the split is flagged."""
        lo, hi = self.auc_ci_ or (self.auc_, self.auc_)
        return (
            f"distribution shift: a model-free text classifier separates members from non-members "
            f"(blind AUC {self.auc_:.3f}, 95% CI {lo:.3f}-{hi:.3f}); attack AUCs on this split are "
            "not evidence of memorization"
        )

    def summary(self) -> dict[str, Any]:
        """JSON-able result."""
        return {
            "auc": float(self.auc_),
            "auc_ci": self.auc_ci_,
            "flagged": self.flagged_,
            "folds": self.folds_,
            "higher_is_better": direction("blind_auc"),
            "top_member_features": self.top_features_,
            "method": "TF-IDF word + char n-grams, logistic regression, stratified CV",
        }

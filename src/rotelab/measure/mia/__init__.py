"""Membership inference: *was this text in the model's training data?*

Every attack returns one score per text with one sign convention: **higher = more likely a
member**. Attacks are registered in :data:`rotelab.registry.ATTACKS` (:mod:`.attacks`, where adding
one is one decorated function); the likelihood attacks come from one teacher-forced pass per text.

- :mod:`.inputs`: the texts in token space, with the span of each that is scored (the secret
  inside a canary rather than the whole sequence; the span's tokens are scored given everything
  before them), from character spans or an organism's ledger.
- :mod:`.attacks`: LOSS, zlib, Min-K%, Min-K%++, reference, neighbourhood, ReCaLL, gradient norm.
- :mod:`.neighbours`: the neighbourhood attack's neighbour generators and scores.
- :mod:`.metrics`: ROC AUC and TPR at 1% / 0.1% FPR with bootstrap CIs (from
  :mod:`rotelab.stats`), overall and by duplication count, insertion phase and kind.

A model-free blind baseline (:mod:`rotelab.measure.blind`, Das et al. 2024, "Blind baselines beat
membership inference attacks for foundation models") checks the split itself, and Secret Sharer
exposure (:mod:`rotelab.measure.exposure`) ranks each secret among candidates of its format.
``rotelab mia`` (:func:`rotelab.pipelines.mia.mia`) runs them all and writes a run directory.

Example:
    >>> items = prepare_texts(lm, texts, is_member)  # doctest: +SKIP
    >>> likelihood_scores(lm, items)[["loss", "min_k_pp"]]  # doctest: +SKIP
"""

from rotelab.measure.mia.attacks import (
    NEEDS,
    AttackInputs,
    check_k,
    check_recall_prefix_tokens,
    check_recall_room,
    check_same_tokenizer,
    grad_norm_scores,
    likelihood_scores,
    loss_score,
    min_k_pp_score,
    min_k_score,
    recall_prefix,
    recall_scores,
    reference_scores,
    register_attack,
    zlib_score,
)
from rotelab.measure.mia.inputs import (
    MIAText,
    SpanMode,
    document_texts,
    ledger_texts,
    prepare_texts,
)
from rotelab.measure.mia.metrics import (
    FPR_LEVELS,
    METRIC_NAMES,
    attack_metrics,
    by_group_metrics,
    evaluate_attacks,
)
from rotelab.measure.mia.neighbours import (
    NeighbourGenerator,
    WordSubstitution,
    check_neighbour_fraction,
    neighbourhood_scores,
)

__all__ = [
    "FPR_LEVELS",
    "METRIC_NAMES",
    "NEEDS",
    "AttackInputs",
    "MIAText",
    "NeighbourGenerator",
    "SpanMode",
    "WordSubstitution",
    "attack_metrics",
    "by_group_metrics",
    "check_k",
    "check_neighbour_fraction",
    "check_recall_prefix_tokens",
    "check_recall_room",
    "check_same_tokenizer",
    "document_texts",
    "evaluate_attacks",
    "grad_norm_scores",
    "ledger_texts",
    "likelihood_scores",
    "loss_score",
    "min_k_pp_score",
    "min_k_score",
    "neighbourhood_scores",
    "prepare_texts",
    "recall_prefix",
    "recall_scores",
    "reference_scores",
    "register_attack",
    "zlib_score",
]

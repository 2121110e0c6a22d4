"""``rotelab mia``: membership inference on an organism's ledger or on member/non-member files.

First every input is resolved and checked (the options, the model and reference model, the text
files, what each chosen attack needs, the output directory), before any model is loaded or the
default organism built. Then the attacks registered in :data:`rotelab.registry.ATTACKS`
(:mod:`rotelab.measure.mia`) score the texts, and the run directory is written:

- ``results/texts``: one row per text: ``text_id, member, span_start, span_end, n_tokens`` and its
  groups (``count, phase, kind`` where known);
- ``results/scores``: one row per text and attack: ``text_id, attack, score`` (higher = member),
  written in parts (the one-pass attacks together, then one part per other attack) so an
  interrupted run resumes;
- ``results/roc``: ROC points per attack, overall and per group;
- ``results/blind``: the blind baseline's out-of-fold scores; ``results/exposure``: Secret Sharer
  exposure of the organism's secrets;
- ``summary.json``: per attack ``auc``, ``auc_ci``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``
  (with CIs, or null with a reason) and ``by_group`` (joint groups keyed ``"kind,count"``, values
  ``"bio,4"``); ``higher_is_better`` of every score and metric (from
  :data:`rotelab.registry.METRICS`); ``skipped_attacks``; ``reference_model`` (the model the
  reference attack used, or null); ``blind``; ``exposure``.

On an organism's ledger the reference attack's model is, by default, the organism's reference
twin (Hubble, Wei et al. 2025: the same world and seed trained without insertions; see
:func:`rotelab.organism.reference_organism`), built on first use with a progress bar and cached,
so every registered attack runs; ``--reference-model none`` leaves the attack (and the build) out.
An output of ``rotelab train`` has no such twin (its recipe is the user's): there the attack is
skipped unless ``--reference-model`` names a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rotelab.data.corpus import Document, read_corpus
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.blind import BlindBaseline
from rotelab.measure.exposure import HIGHER_IS_BETTER as EXPOSURE_HIGHER_IS_BETTER
from rotelab.measure.exposure import exposure_table
from rotelab.measure.mia import (
    METRIC_NAMES,
    AttackInputs,
    MIAText,
    SpanMode,
    WordSubstitution,
    check_k,
    check_neighbour_fraction,
    check_recall_prefix_tokens,
    check_recall_room,
    check_same_tokenizer,
    document_texts,
    evaluate_attacks,
    ledger_texts,
    recall_prefix,
)
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.organism import Organism, reference_organism
from rotelab.pipelines.inputs import ModelInput, resolve_data, resolve_model
from rotelab.registry import ATTACKS, direction
from rotelab.runs import Run

#: What ``--reference-model`` says for an organism's own reference model (built on demand); it is
#: also the default on an organism's ledger (Hubble's pairing of standard and perturbed models).
REFERENCE = "reference"
#: What ``--reference-model`` says to leave the reference attack out (no reference is built).
NO_REFERENCE = "none"

__all__ = ["MIAConfig", "format_table", "mia"]


@dataclass
class MIAConfig:
    """What :func:`mia` computes (recorded in the run's config.json with the inputs and seed).

    Attributes:
        attacks: registered attack names (default: every one the inputs allow).
        k: Min-K% / Min-K%++ fraction.
        span: organism items: which tokens are scored (see :class:`SpanMode`; ``None``: auto);
            refused with member/non-member files, whose spans come from their own fields.
        bootstrap: bootstrap replicates for every CI (0: no CIs).
        min_false_positives: TPR at FPR α needs ``ceil(min_false_positives / α)`` non-members.
        neighbours: neighbours per text for the neighbourhood attack (``None``: not given,
            :data:`DEFAULT_NEIGHBOURS`; given, it is refused when no attack uses it).
        neighbour_fraction: share of words replaced per neighbour.
        recall_prefix_tokens: length of the ReCaLL non-member prefix.
        exposure: compute Secret Sharer exposure for organism secrets.
        exposure_samples: candidates sampled per secret when the space is too large to enumerate
            (``None``: not given, :data:`DEFAULT_EXPOSURE_SAMPLES`; given, it is refused when
            exposure is not computed).
        exposure_max_exact: enumerate candidate spaces up to this size.
        blind: run the model-free blind baseline.
        batch_size: sequences per forward pass (not recorded: it does not change the results).
    """

    attacks: list[str] | None = None
    k: float = 0.2
    span: SpanMode | str | None = None
    bootstrap: int = 1000
    min_false_positives: int = 5
    neighbours: int | None = None
    neighbour_fraction: float = 0.15
    recall_prefix_tokens: int = 32
    exposure: bool = True
    exposure_samples: int | None = None
    exposure_max_exact: int = 20_000
    blind: bool = True
    batch_size: int = 32


#: Neighbours per text when ``--neighbours`` is not given.
DEFAULT_NEIGHBOURS = 8
#: Candidates sampled per secret when ``--exposure-samples`` is not given.
DEFAULT_EXPOSURE_SAMPLES = 1000
#: Most bootstrap replicates: percentile CIs settle long before, and the resampled indices
#: (replicates x texts) must fit in memory.
MAX_BOOTSTRAP = 100_000

#: Group columns results are broken down by; a tuple is a joint group.
_GROUPS: list[str | tuple[str, ...]] = ["count", "phase", "kind", ("kind", "count")]

#: What to give when an attack's need (rotelab.measure.mia.NEEDS) is missing. Neighbours (from the
#: texts' own words) and gradients (of the target) are always there.
_NEED_HINTS = {
    "reference": "needs --reference-model (same tokenizer as the target)",
    "recall_prefix": "needs non-member prefix texts (--recall-prefix)",
}


@dataclass
class _Checked:
    """The inputs of one run, resolved and checked; nothing loaded or built yet."""

    cfg: MIAConfig
    target: ModelInput
    member_docs: list[Document] | None
    nonmember_docs: list[Document] | None
    reference: ModelInput | None
    prefix_docs: list[Document] | None
    attacks: list[str]
    skipped: dict[str, str]
    auto_reference: bool = False  # the organism's reference twin (the default), built on demand

    @property
    def ledger(self) -> bool:
        """The texts are the organism's ledger items (no --members/--nonmembers)."""
        return self.member_docs is None


def mia(
    model: str | os.PathLike | None = None,
    *,
    members: str | os.PathLike | None = None,
    nonmembers: str | os.PathLike | None = None,
    reference_model: str | os.PathLike | None = None,
    recall_prefix_file: str | os.PathLike | None = None,
    config: MIAConfig | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Run membership inference and write a run directory; what ``rotelab mia`` does.

    With neither ``members`` nor ``nonmembers`` the inputs come from an organism's ledger (the
    default organism, or ``model`` when it is an organism directory): members are items inserted
    at least once, non-members the count-0 items of the same kinds. Otherwise both must be files
    or directories of texts (JSONL/Parquet fields ``span_char_start``/``span_char_end`` restrict
    scoring to a character span; other fields such as ``count`` become groups).

    Args:
        model: the target model (default: the organism).
        members, nonmembers: member and non-member texts (files or directories), both or neither.
        reference_model: a model with the target's tokenizer, for the reference attack.
        recall_prefix_file: non-member texts for the ReCaLL prefix (default: an organism's
            held-out text; without either, ReCaLL is skipped).
        config: what to compute (:class:`MIAConfig`).
        run: output directory, resume/force, seed (bootstrap, neighbours, exposure sampling and
            the blind baseline's folds) and progress bars.
        load: device, dtype and pickle policy of both models.
        corpus: how the text files are read.

    Returns:
        The run directory and the summary (its keys are in the module docstring).
    """
    checked = _check(
        model, members, nonmembers, reference_model, recall_prefix_file, config or MIAConfig(),
        run, load, corpus,
    )  # fmt: skip
    cfg, target = checked.cfg, checked.target
    organism = target.organism() if checked.ledger else None
    if organism is not None:
        model = organism.path
    arguments = {
        "model": model, "members": members, "nonmembers": nonmembers,
        "reference_model": reference_model, "recall_prefix_file": recall_prefix_file,
        "device": load.device, "dtype": load.dtype, "field": corpus.field,
        "errors": corpus.errors, "format": corpus.format,
        **{k: v for k, v in asdict(cfg).items() if k != "batch_size"}, "seed": run.seed,
    }  # fmt: skip
    ref_input = None if checked.reference is None else reference_model
    inputs = (model, members, nonmembers, ref_input, recall_prefix_file)
    out = Run.create(
        run.out, "mia", arguments, resume=run.resume, force=run.force, device=load.device,
        inputs=inputs,
    )  # fmt: skip
    with out:
        lm = target.load(load)
        items, raw_texts, vocab_texts, prefix_texts = _texts(lm, checked, organism)
        ref = None
        if checked.reference is not None:
            ref = checked.reference.load(load)
            check_same_tokenizer(lm, ref, items)
        elif checked.auto_reference and "reference" in checked.attacks:
            ref_path = reference_organism(organism, progress=run.progress)
            ref = resolve_model(str(ref_path)).load(load)
            check_same_tokenizer(lm, ref, items)
        reference_used = None
        if ref is not None:
            reference_used = checked.reference.label if checked.reference else str(ref_path)
        attack_inputs = AttackInputs(
            lm, items, k=cfg.k, reference=ref, n_neighbours=cfg.neighbours, seed=run.seed,
            batch_size=cfg.batch_size, progress=run.progress,
        )  # fmt: skip
        needed = set().union(*(ATTACKS[a].needs for a in checked.attacks))
        if "neighbours" in needed:
            attack_inputs.neighbours = WordSubstitution.from_texts(
                vocab_texts, cfg.neighbour_fraction
            )
        if "recall_prefix" in needed:
            attack_inputs.recall_prefix = recall_prefix(lm, prefix_texts, cfg.recall_prefix_tokens)
            check_recall_room(lm, items, attack_inputs.recall_prefix)  # before any score is written

        texts_frame = pd.DataFrame(
            [
                {"text_id": it.text_id, "member": it.member, "span_start": it.span[0],
                 "span_end": it.span[1], "n_tokens": len(it.tokens), **it.groups}
                for it in items
            ]
        )  # fmt: skip
        out.write_table("texts", texts_frame)
        ids = [it.text_id for it in items]
        _write_scores(out, checked.attacks, attack_inputs)
        wide = out.read_table("scores").pivot(index="text_id", columns="attack", values="score")
        frame = texts_frame.join(wide, on="text_id")
        y = frame["member"].to_numpy(bool)
        metrics, roc = evaluate_attacks(
            frame, checked.attacks, _GROUPS, n_boot=cfg.bootstrap, seed=run.seed,
            min_false_positives=cfg.min_false_positives,
        )  # fmt: skip
        out.write_table("roc", roc)
        summary: dict[str, Any] = {
            "model": str(model),
            "n_members": int(y.sum()),
            "n_nonmembers": int((~y).sum()),
            "span": cfg.span.value if organism is not None else "file",
            "k": cfg.k,
            "bootstrap": cfg.bootstrap,
            "tpr_rule": (
                f"TPR at FPR a is reported only with >= ceil({cfg.min_false_positives}/a) "
                "non-members"
            ),
            "higher_is_better": {
                "scores": {a: direction(a) for a in ATTACKS.names()},
                "metrics": {m: direction(m) for m in METRIC_NAMES},
            },
            "skipped_attacks": checked.skipped,
            "reference_model": reference_used,
            "attacks": metrics,
        }

        if cfg.blind:
            # The blind baseline reads the whole text: a shift anywhere in it biases the split.
            blind_texts = [raw_texts.get(it.text_id, lm.decode(it.tokens)) for it in items]
            strata = frame["kind"].tolist() if "kind" in frame.columns else None
            bb = BlindBaseline(n_boot=cfg.bootstrap, seed=run.seed).fit(blind_texts, y, strata)
            out.write_table(
                "blind", pd.DataFrame({"text_id": ids, "member": y, "score": bb.oof_scores_})
            )
            summary["blind"] = bb.summary()
            if bb.flagged_:
                summary["warnings"] = [bb.warning()]

        if organism is not None and cfg.exposure:
            summary["exposure"] = _organism_exposure(lm, organism, cfg, out, run)
        out.write_summary(summary)
    return out.path, summary


def _texts(
    lm: LM, checked: _Checked, organism: Organism | None
) -> tuple[list[MIAText], dict[str, str], list[str], list[str] | None]:
    """The texts to classify; the whole text of each by id (for the blind baseline); the words
    neighbours are made of; the ReCaLL prefix texts (``None``: none)."""
    if organism is not None:
        items = ledger_texts(organism.ledger, checked.cfg.span, lm.context_length)
        raw_texts = {r.item_id: r.text for r in organism.ledger.itertuples(index=False)}
        background = organism.heldout_docs()
        vocab_texts = organism.train_docs()[:2000] + background
    else:
        docs = checked.member_docs + checked.nonmember_docs
        items = document_texts(lm, checked.member_docs, checked.nonmember_docs)
        raw_texts = {it.text_id: d.text for it, d in zip(items, docs)}
        background = None
        vocab_texts = list(raw_texts.values())
    prefix_texts = background
    if checked.prefix_docs is not None:
        prefix_texts = [d.text for d in checked.prefix_docs]
    return items, raw_texts, vocab_texts, prefix_texts


def _write_scores(out: Run, attacks: list[str], inputs: AttackInputs) -> None:
    """``results/scores``: the one-pass attacks in one part (they share one teacher-forced pass),
    every other attack in a part named after it; parts already written (``--resume``) are kept."""
    ids = [it.text_id for it in inputs.items]

    def part(key: str, compute: Callable[[], dict[str, np.ndarray]]) -> None:
        if out.has_part("scores", key):
            return
        long = pd.concat(
            [pd.DataFrame({"text_id": ids, "attack": a, "score": np.asarray(v, float)})
             for a, v in compute().items()],
            ignore_index=True,
        )  # fmt: skip
        out.write_part("scores", key, long)

    one_pass = [a for a in attacks if ATTACKS[a].one_pass]
    if one_pass:
        part("likelihood", lambda: {a: ATTACKS[a].fn(inputs) for a in one_pass})
    for a in attacks:
        if a not in one_pass:
            part(a, lambda a=a: {a: ATTACKS[a].fn(inputs)})


# ------------------------------------------------------------------------ step 1: check inputs
def _check(
    model: str | os.PathLike | None,
    members: str | os.PathLike | None,
    nonmembers: str | os.PathLike | None,
    reference_model: str | os.PathLike | None,
    recall_prefix_file: str | os.PathLike | None,
    cfg: MIAConfig,
    run: RunOptions,
    load: LoadOptions,
    corpus: CorpusOptions,
) -> _Checked:
    """Every check that needs no model: one line before anything is loaded, built or written."""
    if cfg.span is not None and members is not None:
        raise RotelabError(
            "--span chooses the tokens scored of the organism's items, so it does not apply with "
            "--members/--nonmembers (spans there come from span_char_start/span_char_end)"
        )
    given = cfg
    cfg = _validate_config(cfg)
    run.check()
    load.check()
    corpus.check()
    if (members is None) != (nonmembers is None):
        raise RotelabError(
            "give both --members and --nonmembers, or neither to use the organism's ledger"
        )
    target = resolve_model(model)
    if members is None and not target.is_organism:
        raise RotelabError(
            f"{target.label} is not an organism (no ledger), so give --members and --nonmembers "
            "texts"
        )
    member_docs = nonmember_docs = prefix_docs = None
    if members is not None:
        member_docs = _read_texts(members, "members", corpus, "--members")
        nonmember_docs = _read_texts(nonmembers, "non-members", corpus, "--nonmembers")
    given_ref = None if reference_model is None else str(reference_model)
    auto_reference = given_ref == REFERENCE
    if auto_reference and (member_docs is not None or not target.is_organism):
        raise RotelabError(
            "--reference-model reference is an organism's reference model (its world and seed, "
            "no insertions); it needs an organism target and its ledger"
        )
    hints: dict[str, str] = {}
    trained = member_docs is None and _made_by_train(target)
    if auto_reference and trained:
        raise RotelabError(
            f"{target.label} was made by `rotelab train`, so it has no organism reference twin; "
            "train its reference with the same options and --counts 0 and pass that directory"
        )
    if given_ref is None and member_docs is None:
        # The default on an organism: its reference twin (unless it came from `rotelab train`).
        auto_reference = not trained
        if trained:
            hints["reference"] = (
                "needs --reference-model (a `rotelab train` output: train its reference with "
                "the same options and --counts 0)"
            )
    if given_ref == NO_REFERENCE:
        hints["reference"] = "left out by --reference-model none"
    reference = (
        resolve_model(reference_model)
        if given_ref is not None and given_ref not in (REFERENCE, NO_REFERENCE)
        else None
    )
    if recall_prefix_file is not None:
        prefix_docs = _read_texts(recall_prefix_file, "ReCaLL prefix", corpus, "--recall-prefix")
    available = {"neighbours", "gradients"}
    if reference is not None or auto_reference:
        available.add("reference")
    if prefix_docs is not None or member_docs is None:  # an organism's held-out text by default
        available.add("recall_prefix")
    attacks, skipped = _choose_attacks(cfg.attacks, available, hints)
    _check_options_apply(given, attacks, exposure=cfg.exposure and member_docs is None)
    # What Run.create will check, before the organism is built and the models loaded.
    Run.check(
        run.out, resume=run.resume, force=run.force,
        inputs=(target.source, members, nonmembers,
                None if reference is None else reference_model, recall_prefix_file),
    )  # fmt: skip
    return _Checked(
        cfg, target, member_docs, nonmember_docs, reference, prefix_docs, attacks, skipped,
        auto_reference,
    )  # fmt: skip


def _made_by_train(target: ModelInput) -> bool:
    """The organism-like target is an output of ``rotelab train`` (or one of its checkpoints)."""
    if target.is_default_organism or target.source is None:
        return False
    try:
        return "train" in json.loads((Path(target.source) / "spec.json").read_text())
    except (OSError, ValueError):
        return False


def _validate_config(cfg: MIAConfig) -> MIAConfig:
    """``cfg`` checked, with ``span`` a :class:`SpanMode` and ``attacks`` registered names."""
    check_k(cfg.k)
    if cfg.bootstrap < 0:
        raise RotelabError(f"--bootstrap must be >= 0, got {cfg.bootstrap}")
    if cfg.bootstrap > MAX_BOOTSTRAP:
        raise RotelabError(
            f"--bootstrap must be at most {MAX_BOOTSTRAP} (the CIs settle long before), got "
            f"{cfg.bootstrap}"
        )
    if cfg.batch_size < 1:
        raise RotelabError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    neighbours = DEFAULT_NEIGHBOURS if cfg.neighbours is None else cfg.neighbours
    if neighbours < 1:
        raise RotelabError(f"--neighbours must be >= 1, got {neighbours}")
    check_neighbour_fraction(cfg.neighbour_fraction)
    check_recall_prefix_tokens(cfg.recall_prefix_tokens)
    samples = DEFAULT_EXPOSURE_SAMPLES if cfg.exposure_samples is None else cfg.exposure_samples
    if samples < 2:
        raise RotelabError(
            f"--exposure-samples must be >= 2 (candidates sampled per secret), got {samples}"
        )
    if cfg.min_false_positives < 1:
        raise RotelabError(f"min_false_positives must be >= 1, got {cfg.min_false_positives}")
    try:
        span = SpanMode.auto if cfg.span is None else SpanMode(cfg.span)
    except ValueError:
        raise RotelabError(f"--span must be auto, full or sensitive, not {cfg.span!r}") from None
    attacks = None
    if cfg.attacks:
        attacks = ATTACKS.parse(",".join(map(str, cfg.attacks)), flag="--attacks")
    return replace(cfg, span=span, attacks=attacks, neighbours=neighbours, exposure_samples=samples)


def _check_options_apply(given: MIAConfig, attacks: list[str], *, exposure: bool) -> None:
    """Refuse options given for work this run does not do (as ``--span`` with files)."""
    if given.neighbours is not None and not any("neighbours" in ATTACKS[a].needs for a in attacks):
        raise RotelabError(
            "--neighbours sets the neighbourhood attack, which --attacks leaves out, so it does "
            "not apply; add that attack or leave --neighbours out"
        )
    if given.exposure_samples is not None and not exposure:
        why = "--no-exposure" if not given.exposure else "--members/--nonmembers (no secrets)"
        raise RotelabError(
            f"--exposure-samples sets exposure of an organism's secrets, which is not computed "
            f"with {why}, so it does not apply; leave it out"
        )


def _choose_attacks(
    requested: list[str] | None, available: set[str], hints: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The attacks to run and, when none were named, those skipped with what they need
    (``hints`` replace :data:`_NEED_HINTS` where this run knows better)."""
    hints = {**_NEED_HINTS, **(hints or {})}

    def missing(name: str) -> str:
        return "; ".join(hints[n] for n in sorted(ATTACKS[name].needs - available))

    if requested is not None:
        for a in requested:
            if missing(a):
                raise RotelabError(f"attack {a} {missing(a)}")
        return list(dict.fromkeys(requested)), {}
    chosen = [a for a in ATTACKS.names() if not missing(a)]
    return chosen, {a: missing(a) for a in ATTACKS.names() if missing(a)}


def _read_texts(
    path: str | os.PathLike, role: str, corpus: CorpusOptions, flag: str
) -> list[Document]:
    path = resolve_data(path, corpus, flag=flag)
    docs = [d for d in read_corpus(path, **corpus.read_kwargs()) if d.text.strip()]
    if not docs:
        raise RotelabError(
            f"the {role} input {path} holds no non-empty texts; give a file or directory of texts"
        )
    return docs


# ------------------------------------------------------------------------------------ exposure
def _organism_exposure(
    lm: LM, organism: Organism, cfg: MIAConfig, out: Run, run: RunOptions
) -> dict[str, Any]:
    led = organism.ledger
    secrets = led[led["kind"] == "secret"]
    if "secret_alphabet" in secrets.columns:  # a user's secrets (rotelab train) have no format
        secrets = secrets[secrets["secret_alphabet"].fillna("").astype(str) != ""]
    if secrets.empty:
        return {}
    if not out.has_part("exposure", "secrets"):
        table = exposure_table(
            lm, **_exposure_inputs(lm, secrets, cfg, seed=run.seed), progress=run.progress
        )
        table = table.merge(secrets[["item_id", "count", "phase"]], on="item_id")
        out.write_part("exposure", "secrets", table)
    table = out.read_table("exposure")
    by_count = table.groupby("count")["exposure"].agg(["mean", "median", "min", "max", "size"])
    return {
        "method": sorted(table["method"].unique().tolist()),
        "log2_space": float(table["log2_space"].iloc[0]),
        "higher_is_better": EXPOSURE_HIGHER_IS_BETTER,
        "note": (
            "exposure = log2|R| - log2 rank; higher = the secret leaks more (worse for privacy)"
        ),
        "by_count": {
            str(c): {k: float(v) for k, v in row.items()} for c, row in by_count.iterrows()
        },
    }


def _exposure_inputs(
    lm: LM, secrets: pd.DataFrame, cfg: MIAConfig, *, seed: int = 0
) -> dict[str, Any]:
    """:func:`exposure_table`'s arguments for the organism's ledger rows of kind secret."""
    return {
        "item_ids": secrets["item_id"].tolist(),
        "prefixes": secrets["prefix_tokens"].tolist(),
        "secrets": secrets["suffix_tokens"].tolist(),
        "alphabets": [_alphabet_tokens(lm, a) for a in secrets["secret_alphabet"]],
        "n_samples": (
            DEFAULT_EXPOSURE_SAMPLES if cfg.exposure_samples is None else cfg.exposure_samples
        ),
        "max_exact": cfg.exposure_max_exact,
        "seed": seed,
        # on one thread per worker, 128 candidates a batch ran ~6% faster than 256 (cache)
        "batch_size": max(cfg.batch_size, 128),
    }


def _alphabet_tokens(lm: LM, alphabet: str) -> list[int]:
    # The organism writes each secret character after one space, as exactly one token.
    tokens = []
    for ch in alphabet:
        ids = lm.encode(" " + ch)
        if len(ids) != 1:
            raise RotelabError(
                f"secret character {ch!r} is not one token in this tokenizer; exposure needs "
                "one token per secret position"
            )
        tokens.append(ids[0])
    return tokens


# ---------------------------------------------------------------------------------- presentation
def format_table(summary: dict[str, Any]) -> str:
    """The summary as a short text table: AUC [CI] overall and by duplication count."""
    attacks = summary["attacks"]
    counts = sorted(
        {c for a in attacks.values() for c in a["by_group"].get("count", {})}, key=float
    )
    head = f"{'attack':<14}{'AUC [95% CI]':<22}" + "".join(f"{'n=' + c:>8}" for c in counts)
    lines = [f"members {summary['n_members']}, non-members {summary['n_nonmembers']}", head]
    for name, m in attacks.items():
        ci = m["auc_ci"]
        cell = f"{m['auc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        by = m["by_group"].get("count", {})
        lines.append(
            f"{name:<14}{cell:<22}"
            + "".join(f"{by[c]['auc']:>8.3f}" if c in by else f"{'-':>8}" for c in counts)
        )
    one = next(iter(attacks.values()), {})
    if one.get("tpr_at_1pct_fpr") is None and one.get("tpr_at_1pct_fpr_reason"):
        lines.append(f"TPR at 1% FPR refused: {one['tpr_at_1pct_fpr_reason']}")
    if "blind" in summary:
        b = summary["blind"]
        lines.append(f"blind baseline AUC {b['auc']:.3f}" + (" (FLAGGED)" if b["flagged"] else ""))
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    if summary.get("exposure"):
        e = summary["exposure"]["by_count"]
        lines.append(
            "exposure (mean, bits) by count: "
            + "  ".join(f"{c}: {v['mean']:.1f}" for c, v in e.items())
            + f"  (max {summary['exposure']['log2_space']:.1f})"
        )
    return "\n".join(lines)

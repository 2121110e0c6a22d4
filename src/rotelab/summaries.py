"""Typed summaries (core): the ``summary.json`` schemas the writers fill and the report reads.

Each command's summary is a dataclass. Its declared fields are what other code relies on (the
report, the demo, tests); anything else a writer records rides along in ``extra`` and is written
back in its place, so ``Kind.from_dict(d).to_dict() == d`` for every summary a writer produced.
``from_dict`` refuses a dict without a required field in one line, naming the field, so a report
is never drawn from a guess: there are no readers for older or other spellings.

Joint groups are spelled by the summary that writes them: extraction writes ``"kind+count"`` with
levels ``"bio|4"``, membership inference ``"kind,count"`` with levels ``"bio,4"`` (both are in
files users have; :class:`Groups` knows each spelling, so readers never guess).

Example:
    >>> s = ExtractionSummary.from_dict(json.load(open("runs/x/summary.json")))  # doctest: +SKIP
    >>> s.extraction_rate, s.by_group.rows()[0]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rotelab.errors import RotelabError

__all__ = [
    "AptRecallSummary",
    "AptSummary",
    "AttackSummary",
    "BandsSummary",
    "DiffSummary",
    "BoundsSummary",
    "CompareModel",
    "CompareSummary",
    "DemoSummary",
    "ExtractionSummary",
    "Groups",
    "KfacSweepSummary",
    "MelodySummary",
    "MIASummary",
    "OrganismFacts",
    "RecsysTrainSummary",
    "PasskSummary",
    "BarrierSummary",
    "FinetuneSummary",
    "ContaminationSummary",
    "HubbleFieldsSummary",
    "PopularitySummary",
    "UndoSummary",
    "ProbeSummary",
    "SteerSummary",
    "Summary",
    "TrainingAuditSummary",
    "TermnormSummary",
    "read_summary",
]


@dataclass
class Groups:
    """A ``by_group`` block: group spec -> level -> metrics.

    ``joint`` and ``level_sep`` are the spelling of joint groups of the summary that wrote it.
    """

    data: dict[str, dict[str, dict[str, Any]]]
    joint: str = "+"
    level_sep: str = "|"

    def rows(self, spec: str | None = None) -> list[dict[str, Any]]:
        """One row per (spec, level): the group columns spelled out, then the metrics."""
        rows = []
        for name, levels in self.data.items():
            if spec is not None and name != spec:
                continue
            columns = name.split(self.joint) if self.joint in name else [name]
            for level, metrics in levels.items():
                values = str(level).split(self.level_sep) if len(columns) > 1 else [level]
                rows.append({**dict(zip(columns, values, strict=True)), **metrics})
        return rows


class Summary:
    """Base of the schemas: ``from_dict``/``to_dict`` keep unknown keys in ``extra`` and the key
    order in ``key_order``."""

    #: nested fields: name -> (schema class, "dict" for a dict of them, or "one")
    NESTED: ClassVar[dict[str, tuple[type, str]]] = {}
    #: by_group fields and their joint-group spelling (joint, level separator)
    GROUPS: ClassVar[dict[str, tuple[str, str]]] = {}
    KIND: ClassVar[str] = "summary"

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "") -> Summary:
        if not isinstance(d, dict):
            raise RotelabError(f"{where or cls.KIND}: not a {cls.KIND} (a JSON object expected)")
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "key_order")]
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("extra", "key_order"):
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in d:
                if required:
                    raise RotelabError(
                        f"{where or 'summary'} is not a rotelab {cls.KIND} summary: it has no "
                        f"{f.name!r} (was it written by another program?)"
                    )
                continue
            values[f.name] = cls._read(f.name, d[f.name], where)
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**values, extra=extra, key_order=list(d))

    @classmethod
    def _read(cls, name: str, value: Any, where: str) -> Any:
        if name in cls.GROUPS and isinstance(value, dict):
            joint, sep = cls.GROUPS[name]
            return Groups(value, joint, sep)
        if name in cls.NESTED and value is not None:
            schema, how = cls.NESTED[name]
            inner = f"{where}.{name}" if where else name
            if how == "dict":
                return {k: schema.from_dict(v, where=f"{inner}.{k}") for k, v in value.items()}
            return schema.from_dict(value, where=inner)
        return value

    def to_dict(self) -> dict[str, Any]:
        """The summary as written to summary.json (the order it was read in, else declared)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "key_order"):
                continue
            if self.key_order and f.name not in self.key_order:
                continue  # read without it (an optional field): written back without it
            out[f.name] = _plain(getattr(self, f.name))
        out.update(self.extra)
        order = [k for k in self.key_order if k in out]
        return {**{k: out[k] for k in order}, **{k: v for k, v in out.items() if k not in order}}

    def write(self, path: str | Path) -> None:
        from rotelab.runs import atomic_write_json

        atomic_write_json(path, self.to_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, Summary):
        return value.to_dict()
    if isinstance(value, Groups):
        return value.data
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _schema(kind: str):
    """Decorator: a dataclass schema with ``extra``/``order`` fields and its KIND."""

    def deco(cls):
        cls.KIND = kind
        cls.__annotations__["extra"] = "dict[str, Any]"
        cls.__annotations__["key_order"] = "list[str]"
        cls.extra = field(default_factory=dict, repr=False)
        cls.key_order = field(default_factory=list, repr=False)
        return dataclass(cls)

    return deco


# ----------------------------------------------------------------------------------- extraction
@_schema("extraction")
class ExtractionSummary(Summary):
    """``rotelab extract``'s summary (and the demo's ``extraction`` block)."""

    GROUPS = {"by_group": ("+", "|")}

    model: str
    data: str
    windows: int
    extracted: int
    extraction_rate: float
    extraction_rate_ci: list[float]
    mean_matched_prefix: float
    by_group: Groups | None = None
    ci_method: str = "wilson"
    ci_level: float = 0.95


# ------------------------------------------------------------------------------------------ mia
@_schema("membership-inference attack")
class AttackSummary(Summary):
    GROUPS = {"by_group": (",", ",")}

    auc: float
    auc_ci: list[float] | None = None
    tpr_at_1pct_fpr: float | None = None
    by_group: Groups | None = None


@_schema("membership inference")
class MIASummary(Summary):
    """``rotelab mia``'s summary (and the demo's ``mia`` block)."""

    NESTED = {"attacks": (AttackSummary, "dict")}

    model: str
    n_members: int
    n_nonmembers: int
    attacks: dict[str, AttackSummary]

    def attack_metric(self, name: str, metric: str) -> Any:
        """A metric of one attack, by its summary key (``tpr_at_0.1pct_fpr`` is not a name)."""
        return self.attacks[name].to_dict().get(metric)


# -------------------------------------------------------------------------------------- compare
@_schema("compared model")
class CompareModel(Summary):
    extraction_rate: float
    perplexity: float
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)


@_schema("compare")
class CompareSummary(Summary):
    """``rotelab compare``'s summary: one :class:`CompareModel` per model, the baseline first."""

    NESTED = {"models": (CompareModel, "dict")}

    baseline: str
    order: list[str]
    min_count: int
    metrics: dict[str, dict[str, Any]]
    models: dict[str, CompareModel]


# ---------------------------------------------------------------------------------------- kfac
@_schema("K-FAC sweep")
class KfacSweepSummary(Summary):
    """The demo's ``kfac`` block: the rho sweep, the chosen edit and the band ratios."""

    rho: float
    base: dict[str, float]
    chosen: dict[str, float]
    rho_sweep: list[dict[str, float]]
    rule: str = ""
    band_dataset: str = "memorized"


@_schema("bands")
class BandsSummary(Summary):
    """``rotelab bands``: band ratios per set and, with ``--rho``, the correspondence."""

    model: str
    reference: str
    band_ratio: dict[str, dict[str, float]]
    rho: float | None = None
    correspondence: dict[str, Any] | None = None


@_schema("diff")
class DiffSummary(Summary):
    """``rotelab diff``: fractions of weights changed, overall, per block and per module."""

    a: str
    b: str
    weights: int
    fraction_changed: dict[str, float]
    by_block: dict[str, dict[str, float]]
    by_module: dict[str, dict[str, float]] = field(default_factory=dict)
    lower_vs_upper: dict[str, dict[str, float]] | None = None


# ----------------------------------------------------------------------------------------- demo
@_schema("organism")
class OrganismFacts(Summary):
    params: int
    heldout_ppl: float
    train_ppl: float
    probe_accuracy: dict[str, float] = field(default_factory=dict)


@_schema("demo")
class DemoSummary(Summary):
    """``rotelab demo``'s summary: the organism and one block per stage."""

    NESTED = {
        "organism": (OrganismFacts, "one"),
        "extraction": (ExtractionSummary, "one"),
        "mia": (MIASummary, "one"),
        "kfac": (KfacSweepSummary, "one"),
        "compare": (CompareSummary, "one"),
    }

    profile: str
    organism: OrganismFacts
    seconds: float
    extraction: ExtractionSummary | None = None
    mia: MIASummary | None = None
    kfac: KfacSweepSummary | None = None
    compare: CompareSummary | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- recsys
@_schema("recsys train")
class RecsysTrainSummary(Summary):
    """``rotelab recsys train``'s summary: per history-length bucket, each model's AUC and NE
    (mean and CI over seeds), the oracle's AUC and the int8 cache's AUC loss."""

    data: str
    models: list[str]
    seeds: int
    model_version: str
    buckets: list[dict[str, Any]]


@_schema("apt")
class AptSummary(Summary):
    """``rotelab apt``'s summary: the search and the filters' rates (with Wilson CIs)."""

    input: str
    lines: int
    lines_varied: int
    top: int
    apt_pass_rate: float
    apt_pass_rate_ci: list[float]
    apt_line_pass_rate: float
    apt_line_pass_rate_ci: list[float]
    phonetic_catch_rate: float
    phonetic_catch_rate_ci: list[float]
    phonetic_false_positive_rate: float
    phonetic_false_positive_rate_ci: list[float]
    min_similarity: float
    check: dict[str, Any] | None = None


@_schema("melody")
class MelodySummary(Summary):
    """``rotelab melody``'s summary: per insertion count, each condition's melodic similarity to
    the memorized melody and the APT differences with bootstrap CIs (``by_count``)."""

    encoding: str
    seeds: int
    counts: list[int]
    per_count: int
    by_count: list[dict[str, Any]]
    apt_above_both: list[int]


@_schema("apt-recall")
class AptRecallSummary(Summary):
    """``rotelab apt-recall``'s summary: next-line recall per prompt condition and the paired
    APT differences (``apt_minus_control_logp`` etc., ``{mean, ci}``)."""

    model: str
    pairs: int
    original: dict[str, Any]
    apt: dict[str, Any]
    control: dict[str, Any]
    unrelated: dict[str, Any]
    apt_minus_control_logp: dict[str, Any]
    apt_minus_control_recalled: dict[str, Any]


# ---------------------------------------------------------------------------------------- passk
@_schema("Pass@k")
class PasskSummary(Summary):
    """``rotelab passk``'s summary: ``pass_at_k`` maps ``"pass@K(M)"`` to ``{k, m, value, ci}``."""

    samples: str
    problems: int
    samples_total: int
    n_min: int
    n_max: int
    pass_at_k: dict[str, dict[str, Any]]
    ci_level: float = 0.95
    ci_method: str = "percentile bootstrap over problems"


# ------------------------------------------------------------------------- barrier, finetune
@_schema("barrier")
class BarrierSummary(Summary):
    """``rotelab barrier``'s summary: ``cells`` (per ``<unit>-c<copies>``: metric -> mean over
    seeds, t interval, per seed), ``gains`` (arm minus its base, paired by seed) and ``claims``
    (each paper claim: the organism's paired difference and whether its sign agrees)."""

    seeds: list[int]
    copies: list[int]
    complete: bool
    cells: dict[str, Any]
    gains: dict[str, Any]
    claims: dict[str, Any]
    paper: dict[str, str]


@_schema("finetune")
class FinetuneSummary(Summary):
    """``rotelab finetune``'s summary: the method (``sft`` or ``ibft``), the data, the training
    curve's ends and, on the program task, Pass@k(m) of the evaluation problems before and
    after."""

    model: str
    method: str
    data: str
    examples: int
    steps: int
    loss_first: float
    loss_last: float
    model_dir: str
    ib: dict[str, Any] | None = None
    lora: int | None = None
    pass_at_k: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------- bounds
@_schema("bounds")
class BoundsSummary(Summary):
    """``rotelab bounds``'s summary: the bounds at the rho grid and, after ``--search``, the
    certified minimal parameters per rho (``search``) and the fitted curve constants."""

    n: int
    d: int
    classes: int
    bounds: list[dict[str, Any]]
    search: list[dict[str, Any]] | None = None
    bounds_scaled: dict[str, float] | None = None


# ------------------------------------------------------------------------------- probe, steer
@_schema("probe")
class ProbeSummary(Summary):
    """``rotelab probe``'s summary: held-out AUC per layer, the chosen layer, patching."""

    model: str
    source: str
    layers: list[dict[str, Any]]
    best_layer: int
    best_auc: float
    patching: dict[str, Any]


@_schema("steer")
class SteerSummary(Summary):
    """``rotelab steer``'s summary: one row per arm and alpha (mean over split seeds)."""

    model: str
    layer: int
    auc: float
    arms: list[dict[str, Any]]
    baseline: dict[str, float]
    dynamic_at_budget: dict[str, Any] | None = None
    static_ppl_at_equal_extraction: float | None = None


@_schema("training audit")
class TrainingAuditSummary(Summary):
    """One checkpoint's audit by :class:`rotelab.pipelines.hf_callback.AuditCallback`."""

    NESTED = {"attacks": (AttackSummary, "dict")}

    model: str
    step: int
    n_members: int
    n_controls: int
    extracted: int
    extraction_rate: float
    extraction_rate_ci: list[float]
    control_extraction_rate: float
    mean_matched_prefix: float
    member_nll: float
    control_nll: float
    attacks: dict[str, AttackSummary]


# ------------------------------------------------------------------------------------- termnorm
@_schema("termnorm")
class TermnormSummary(Summary):
    """``rotelab termnorm``'s summary: memorization (train) and generalization (withheld) gains
    per terminology, lexicalization and popularity bucket; baseline accuracy by popularity; the
    term/ID alignment and whether it predicts the withheld outcome."""

    terminologies: list[str]
    models: list[str]
    pairs: int
    gains: list[dict[str, Any]]
    gains_by_lexical: list[dict[str, Any]]
    gains_by_bucket: list[dict[str, Any]]
    baseline_by_popularity: list[dict[str, Any]]
    alignment: list[dict[str, Any]]


# --------------------------------------------------------- Hubble's kinds, undo, popularity (17)
@_schema("hubble fields")
class HubbleFieldsSummary(Summary):
    """``rotelab hubble fields``: per-field extraction of the biographies by prompt style."""

    model: str
    n_bios: int
    styles: list[str]
    rates: dict[str, Any]
    inserted_vs_never: dict[str, Any]
    ranking_exact: dict[str, list[str]]
    high_count: int


@_schema("contamination")
class ContaminationSummary(Summary):
    """``rotelab hubble contamination``: accuracy on inserted vs never-inserted test questions."""

    task: str
    seeds: list[int]
    by_count: dict[str, Any]
    verdicts: dict[str, bool]
    baseline: dict[str, Any] | None = None


@_schema("undo")
class UndoSummary(Summary):
    """``rotelab undo``: suppression, LoRA restoration and where the weights changed."""

    model: str
    seeds: list[int]
    stages: dict[str, Any]
    localization: dict[str, Any]
    verdicts: dict[str, bool]
    paper: dict[str, Any]


@_schema("popularity")
class PopularitySummary(Summary):
    """``rotelab popularity``: Spearman's rho of insertion count against memorization."""

    model: str
    n_items: int
    spearman: dict[str, Any]
    by_count: dict[str, Any]
    paper: dict[str, Any]


#: The schema of each command's summary.json (config.json's ``command``).
SCHEMAS: dict[str, type[Summary]] = {
    "extract": ExtractionSummary,
    "mia": MIASummary,
    "compare": CompareSummary,
    "kfac_sweep": KfacSweepSummary,
    "bands": BandsSummary,
    "diff": DiffSummary,
    "demo": DemoSummary,
    "recsys-train": RecsysTrainSummary,
    "apt": AptSummary,
    "melody": MelodySummary,
    "apt-recall": AptRecallSummary,
    "passk": PasskSummary,
    "bounds": BoundsSummary,
    "probe": ProbeSummary,
    "steer": SteerSummary,
    "training-audit": TrainingAuditSummary,
    "termnorm": TermnormSummary,
    "barrier": BarrierSummary,
    "finetune": FinetuneSummary,
    "hubble-fields": HubbleFieldsSummary,
    "contamination": ContaminationSummary,
    "undo": UndoSummary,
    "popularity": PopularitySummary,
}


def read_summary(run_dir: str | Path, command: str) -> Summary:
    """The typed summary of a run directory written by ``command``."""
    path = Path(run_dir) / "summary.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RotelabError(f"cannot read {path}: {exc}") from None
    return SCHEMAS[command].from_dict(d, where=str(path))

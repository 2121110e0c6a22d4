"""``rotelab demo``: the whole story on the organism, end to end, as one report.

1. build or load the organism (a small GPT with a ledger of what was inserted how often);
2. extraction: which inserted items greedy decoding reproduces, by duplication count
   (Carlini et al. 2022, "Quantifying Memorization Across Neural Language Models");
3. membership inference: LOSS, zlib, Min-K% and Min-K%++ with ROC AUC and TPR at low FPR
   (Carlini et al. 2022, "Membership Inference Attacks From First Principles"; Zhang et al. 2024);
4. K-FAC factors, a small ρ sweep of the curvature edit and the band analysis (Merullo et al. 2025,
   "From Memorization to Reasoning in the Spectrum of Loss Curvature");
5. BalancedSubnet (Sakarvadia et al. 2024, "Mitigating Memorization in Language Models");
6. ``compare``: the organism, its K-FAC edit and its BalancedSubnet model measured by the same code
   on the same items (extraction, held-out perplexity, task accuracy);

then ``summary.json`` and a self-contained ``report.html``. Each stage is kept lean (few factor
tokens, a handful of ρ values, few BalancedSubnet epochs, likelihood attacks only) so a warm run
(organism cached) takes about two minutes on two CPU cores; stage timings go into the summary.

Layout of the run directory::

    config.json  summary.json  report.html
    extract/   the extraction run (windows table, examples table, summary)
    mia/       the membership-inference run (scores, roc, summary)
    kfac/      factors, the ρ sweep and band-analysis tables
    models/    kfac/ and balanced_subnet/: the edited models (Hugging Face directories)
    compare/   the before/after run
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rotelab.curvature import KFAC, CurvatureEdit, band_ratios, packed_sequences
from rotelab.edit.curvature_edit import EDIT_RECORD
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.machine import parse_precision
from rotelab.measure.extraction import ExtractionTally, ledger_windows, score_windows
from rotelab.measure.quality import perplexity
from rotelab.options import LoadOptions, RunOptions
from rotelab.organism import OrganismSpec, Profile, build_organism
from rotelab.pipelines.compare import compare
from rotelab.pipelines.mia import MIAConfig, mia
from rotelab.pipelines.unlearn import balanced_subnet
from rotelab.report import write_report
from rotelab.runs import Run, atomic_write_json
from rotelab.stats import CIMethod

__all__ = ["DemoConfig", "demo"]

STAGES = (
    "organism",
    "extraction",
    "membership inference",
    "K-FAC edit",
    "BalancedSubnet",
    "compare",
)


@dataclass
class DemoConfig:
    """How much work each stage does (the defaults fit the two-minute warm budget).

    Attributes:
        profile: organism profile, ``default`` (the demo's) or ``tiny`` (seconds, for tests).
        seed: organism and method seed.
        precision: training precision of the organism and BalancedSubnet: ``auto`` (bf16
            autocast where bf16 is native, else fp32), ``fp32`` or ``bf16``.
        min_count: items inserted at least this often are "memorized" (forget set, headline).
        factor_tokens: training tokens the K-FAC factors average over.
        rhos: ρ values of the sweep (fraction of curvature mass kept).
        max_ppl_increase: the chosen ρ is the one with the least extraction whose held-out
            perplexity rises by at most this fraction over the unedited model's.
        sweep_heldout_tokens: held-out tokens for the sweep's perplexity.
        heldout_tokens: held-out tokens for compare's perplexity.
        bsn_epochs: BalancedSubnet passes over the forget set.
        mia_bootstrap: bootstrap replicates for the membership-inference intervals.
        examples: example windows shown in the report.
    """

    profile: str = "default"
    seed: int = 0
    precision: str = "auto"
    min_count: int = 16
    factor_tokens: int = 32_768
    rhos: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    max_ppl_increase: float = 0.25
    sweep_heldout_tokens: int = 8_192
    heldout_tokens: int = 12_000
    bsn_epochs: int = 5
    mia_bootstrap: int = 200
    examples: int = 6
    attacks: tuple[str, ...] = field(default=("loss", "zlib", "min_k", "min_k_pp"))

    def validate(self) -> None:
        if self.profile not in ("tiny", "default"):
            raise RotelabError(f"unknown profile {self.profile!r}; use tiny or default")
        parse_precision(self.precision)
        if not self.rhos or any(not 0 < r <= 1 for r in self.rhos):
            raise RotelabError("every rho must lie in (0, 1]")
        if self.factor_tokens < 1 or self.bsn_epochs < 1 or self.min_count < 1:
            raise RotelabError("factor tokens, BalancedSubnet epochs and min count must be >= 1")


class _Stages:
    """One line per stage on stderr ("[2/6] extraction … 3.1s"); the methods draw their own bars."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True) if enabled else None
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        index = STAGES.index(name) + 1
        if self.console is not None:
            self.console.print(f"[bold cyan][{index}/{len(STAGES)}][/] {name} …", highlight=False)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        if self.console is not None:
            self.console.print(
                f"[green]      done[/] {name} in {self.seconds[name]:.1f}s", highlight=False
            )


# ----------------------------------------------------------------------------------- stages
def _organism(cfg: DemoConfig, progress: bool):

    spec = OrganismSpec(Profile(cfg.profile), cfg.seed, precision=cfg.precision)
    org = build_organism(spec, progress=progress)
    d = org.describe()
    keep = ("params", "train_ppl", "heldout_ppl", "probe_accuracy", "extraction_by_count",
            "items_per_cell", "train_seconds", "train_tokens", "precision",
            "cpu_capability")  # fmt: skip
    return org, {"path": str(org.path), "profile": cfg.profile, **{k: d[k] for k in keep if k in d}}


#: The extraction fields the demo reports (extract's tally has more: near-ties, (n,p) rates, ...).
_EXTRACTION_FIELDS = (
    "windows", "extracted", "extraction_rate", "extraction_rate_ci", "mean_matched_prefix",
)  # fmt: skip


def _extraction(lm, org, out: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    """Ledger windows scored in one teacher-forced pass each; the extract run's schema.

    Composed from :mod:`rotelab.measure.extraction` because ``extract()`` reads the ledger of the
    *default* organism only; the rows and summary fields are those ``extract`` writes.
    """

    windows = ledger_windows(org.ledger)
    with Run.create(out, "extract", {"model": str(org.path), "data": None, "demo": True}) as run:
        frame = score_windows(lm, windows).drop(columns="first_miss_token")
        run.write_table("windows", frame)
        run.write_table("examples", _examples(lm, org, frame, cfg.examples))
        tally = ExtractionTally(["count", "kind", "phase", "kind+count"], free=False)
        tally.feed(frame)
        full = tally.summary(CIMethod.wilson, 0.05)  # what extract reports, computed as it does

        def pick(fields: dict[str, Any]) -> dict[str, Any]:
            return {k: fields[k] for k in _EXTRACTION_FIELDS}

        summary = {
            "model": str(org.path),
            "data": f"organism ledger ({org.path})",
            "ci_method": "wilson",
            "ci_level": 0.95,
            **pick(full),
            "by_group": {
                spec: {level: pick(f) for level, f in groups.items()}
                for spec, groups in full["by_group"].items()
            },
        }
        run.write_summary(summary)
    return summary


def _examples(lm, org, scored: pd.DataFrame, n: int) -> pd.DataFrame:
    """A few items with their greedy continuation, to show what "extracted" looks like.

    Per kind: the most duplicated item the model reproduces, and an item it half knows (the
    longest matched prefix among those it does not reproduce), so both outcomes are on the page.
    """
    led = org.ledger.reset_index(drop=True)
    s = scored.reset_index(drop=True)
    picks: list[int] = []
    for kind in ("secret", "bio", "passage"):
        mine = s[(s["kind"] == kind) & (s["phase"] == "all")]
        hit = mine[mine["extracted"]].sort_values("count", ascending=False)
        miss = mine[(~mine["extracted"]) & (mine["count"] > 0)].sort_values(
            ["matched_prefix", "count"], ascending=False
        )
        picks += [int(i) for i in hit.index[:1]] + [int(i) for i in miss.index[:1]]
    picks = picks[:n]
    prefixes = [list(led.at[i, "prefix_tokens"]) for i in picks]
    suffixes = [list(led.at[i, "suffix_tokens"]) for i in picks]
    conts = lm.generate(prefixes, [len(x) for x in suffixes]) if picks else []
    return pd.DataFrame(
        {
            "item_id": [str(led.at[i, "item_id"]) for i in picks],
            "kind": [str(led.at[i, "kind"]) for i in picks],
            "count": [int(led.at[i, "count"]) for i in picks],
            "prefix": [lm.decode(p) for p in prefixes],
            "suffix_pieces": [[lm.decode([t]) for t in x] for x in suffixes],
            "continuation_pieces": [[lm.decode([t]) for t in c] for c in conts],
            "matched": [int(s.at[i, "matched_prefix"]) for i in picks],
        }
    )


def _mia(org, out: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:

    mcfg = MIAConfig(attacks=list(cfg.attacks), bootstrap=cfg.mia_bootstrap, exposure=False)
    _, summary = mia(
        org.path, config=mcfg, run=RunOptions(out, seed=cfg.seed, progress=progress),
        load=LoadOptions("cpu", "float32"),
    )  # fmt: skip
    return summary


def _memorized(org, cfg: DemoConfig):
    """The windows of the items inserted >= min_count times (the forget set and the headline)."""

    led = org.ledger
    return ledger_windows(led[led["count"] >= cfg.min_count])


def _quick_eval(lm, memorized, heldout: list[list[int]]) -> dict[str, float]:
    """Memorized-item extraction (one pass, exact for greedy) and held-out perplexity."""

    ext = score_windows(lm, memorized)["extracted"].to_numpy(bool)
    return {"extraction_rate": float(ext.mean()), "perplexity": perplexity(lm, heldout).value}


def _kfac(lm, org, out: Path, models: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    """Factors on training text, a ρ sweep judged by extraction vs perplexity, band analysis."""

    seq_len = lm.context_length - 1
    config = {k: v for k, v in asdict(cfg).items() if k in ("factor_tokens", "rhos", "seed")}
    with Run.create(out, "kfac_sweep", {"model": str(org.path), **config}) as run:
        seqs = packed_sequences(lm, org.train_docs(), seq_len=seq_len, max_tokens=cfg.factor_tokens)
        kfac = KFAC(seed=cfg.seed).fit(lm, seqs, progress=progress)
        # Recorded where the factors will be once this run is renamed into place (the model
        # directory that names them is outside the run, so the rename cannot correct it).
        factors = out / kfac.save(run.path).name
        heldout = packed_sequences(
            lm, org.heldout_docs(), seq_len=seq_len, max_tokens=cfg.sweep_heldout_tokens
        )
        memorized = _memorized(org, cfg)
        base = _quick_eval(lm, memorized, heldout)
        edit = CurvatureEdit().fit(kfac)
        rows = []
        for rho in sorted(cfg.rhos, reverse=True):
            edited = edit.apply(lm, rho)
            rows.append({"rho": rho, **_quick_eval(edited, memorized, heldout)})
            del edited
        sweep = pd.DataFrame(rows)
        run.write_table("rho_sweep", sweep)
        limit = base["perplexity"] * (1 + cfg.max_ppl_increase)
        ok = sweep[sweep["perplexity"] <= limit]
        # Least extraction within the perplexity budget; ties go to the larger ρ (less removed).
        if len(ok):
            best = ok.sort_values(["extraction_rate", "rho"], ascending=[True, False]).iloc[0]
        else:
            best = sweep.sort_values("rho", ascending=False).iloc[0]
        rho = float(best["rho"])
        chosen = edit.apply(lm, rho)
        target = models / "kfac"
        chosen.save(target)
        atomic_write_json(target / EDIT_RECORD, {
            "method": "kfac", "rho": rho, "source_model": str(org.path), "factors": str(factors),
            "factor_tokens": kfac.tokens_, "labels": kfac.labels.value,
            "layers": edit.kept_.to_dict(orient="records"),
        })  # fmt: skip
        bands = band_ratios(
            lm, edit, {"memorized": [w.tokens for w in memorized], "clean": heldout},
            reference="clean",
        )  # fmt: skip
        run.write_table("bands", bands)
        mem = bands[bands["dataset"] == "memorized"]
        summary = {
            "factors": str(factors),
            "factor_tokens": int(kfac.tokens_),
            "layers": list(kfac.factors_),
            "rho": rho,
            "rule": (
                f"least memorized-item extraction with held-out perplexity at most "
                f"{1 + cfg.max_ppl_increase:g}x the unedited model's"
            ),
            "base": base,
            "chosen": {k: float(best[k]) for k in ("extraction_rate", "perplexity")},
            "rho_sweep": sweep.to_dict(orient="records"),
            "band_dataset": "memorized",
            "band_ratio_by_band": {
                str(b): float(g["ratio"].mean()) for b, g in mem.groupby("band", sort=False)
            },
            "model": str(target),
        }
        run.write_summary(summary)
    return summary


def _balanced_subnet(org, target: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    _, summary = balanced_subnet(
        str(org.path), min_count=cfg.min_count, epochs=cfg.bsn_epochs, precision=cfg.precision,
        run=RunOptions(target, seed=cfg.seed, progress=progress),
        load=LoadOptions("cpu", "float32"),
    )  # fmt: skip
    return summary


def _compare(org, models: Path, out: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    _, summary = compare(
        [
            f"base={org.path}",
            f"kfac={models / 'kfac'}",
            f"balanced_subnet={models / 'balanced_subnet'}",
        ],
        organism=org.path, min_count=cfg.min_count, heldout_tokens=cfg.heldout_tokens,
        run=RunOptions(out=out, seed=cfg.seed, progress=progress),
        load=LoadOptions(device="cpu", dtype="float32"),
    )  # fmt: skip
    return summary


# ------------------------------------------------------------------------------------ the API
def demo(
    out: str | os.PathLike | None = None,
    profile: str = "default",
    progress: bool = True,
    *,
    force: bool = False,
    config: DemoConfig | None = None,
    precision: str | None = None,
) -> Path:
    """Run the demo end to end and write its report; returns the path of ``report.html``.

    Args:
        out: run directory (default ``runs/demo-<UTC time>``); must not exist unless ``force``.
        profile: organism profile, ``default`` or ``tiny`` (overrides ``config.profile``).
        progress: a line per stage and the methods' progress bars on stderr.
        force: replace an existing ``out``.
        config: stage sizes (default :class:`DemoConfig`).
        precision: training precision (overrides ``config.precision``; see DemoConfig).

    Returns:
        ``<out>/report.html``; ``<out>/summary.json`` holds every number it shows.
    """

    base = asdict(config or DemoConfig())
    cfg = DemoConfig(
        **{
            **base,
            "profile": str(getattr(profile, "value", profile)),
            "precision": base["precision"] if precision is None else precision,
        }
    )
    cfg.validate()
    stages = _Stages(progress)
    t0 = time.perf_counter()
    with Run.create(out, "demo", asdict(cfg), force=force, device="cpu") as run:
        root = run.path
        models = root / "models"
        with stages.stage("organism"):
            org, organism = _organism(cfg, progress)
            lm = LM.load(org.path, device="cpu", dtype="float32")
        with stages.stage("extraction"):
            extraction = _extraction(lm, org, root / "extract", cfg, progress)
        with stages.stage("membership inference"):
            mia = _mia(org, root / "mia", cfg, progress)
        with stages.stage("K-FAC edit"):
            kfac = _kfac(lm, org, root / "kfac", models, cfg, progress)
        with stages.stage("BalancedSubnet"):
            bsn = _balanced_subnet(org, models / "balanced_subnet", cfg, progress)
        with stages.stage("compare"):
            comp = _compare(org, models, root / "compare", cfg, progress)
        summary = {
            "profile": cfg.profile,
            "organism": organism,
            "extraction": extraction,
            "mia": mia,
            "kfac": kfac,
            "balanced_subnet": bsn,
            "compare": comp,
            "stage_seconds": stages.seconds,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        run.write_summary(summary)
        write_report(root)
    return run.path / "report.html"

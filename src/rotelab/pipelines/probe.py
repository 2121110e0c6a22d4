"""``rotelab probe``: where in the model recitation shows, one linear probe per layer.

Dynamic Mode Steering's first part (Zhang 2025; the method is :mod:`rotelab.edit.steering`): on
an organism the labels come from its ledger (items inserted >= ``min_count`` times that the model
extracts, against count-0 items and held-out text); on any other model from its behaviour on
``--data`` (windows the one-pass audit extracts against windows it barely matches). One probe per
residual-stream layer, held-out AUC over ``seeds`` item-level splits with CIs, the layer with the
best AUC, and activation patching along that probe's direction (does recitation change?).

Output: a :class:`~rotelab.runs.Run` directory with ``results/layers`` (seed x layer AUCs),
``results/by_layer``, ``results/windows`` (the labelled windows), ``probe/`` (a steering spec of
the chosen layer, dynamic, at ``alpha``: a model :meth:`rotelab.lm.LM.load` takes) and
``summary.json``::

    {"model": str, "source": "ledger" | "behaviour", "windows": {"memorized": int,
     "not_memorized": int}, "tokens": int, "layers": [{"layer", "auc_mean", "auc_lo", "auc_hi",
     "item_auc_mean", "seeds"}], "best_layer": int, "best_auc": f, "best_auc_ci": [lo, hi],
     "separation": f, "patching": {...}, "alpha": f, "probe": "<run>/probe", "seconds": f}
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rotelab.data import read_corpus
from rotelab.edit.steering import (
    MemorizationProbe,
    ProbeData,
    ProbeLayers,
    behaviour_probe_data,
    collect_states,
    ledger_probe_data,
    patching_effect,
    probe_layers,
    split_items,
    steering_spec,
    steering_vector,
)
from rotelab.errors import RotelabError
from rotelab.lm import LM
from rotelab.measure.extraction import corpus_windows
from rotelab.options import CorpusOptions, LoadOptions, RunOptions
from rotelab.pipelines.inputs import ModelInput, check_min_count, resolve_corpus, resolve_model
from rotelab.runs import Run
from rotelab.steered import check_steering_layer

__all__ = ["ProbeSettings", "Probed", "format_table", "probe", "run_probe"]


@dataclass(frozen=True)
class ProbeSettings:
    """What :func:`probe` (and ``rotelab steer``) probe with.

    Args:
        min_count: memorized = ledger items inserted at least this often (organism).
        layers: residual-stream layers to probe (``None``: 1..num_layers).
        seeds: item-level held-out splits (AUC CIs over them).
        test_size: fraction of each class held out.
        heldout_windows: held-out text windows among the non-memorized (organism).
        prefix_len, suffix_len, max_match_rate: windows of ``--data`` and the behaviour labels.
        min_match_rate: with ``--data``, also label memorized the windows whose exact-match rate
            is at least this (partial recitation; ``None``: exact extraction only).
        n_boot: cluster-bootstrap resamples per AUC.
        batch_size: sequences per forward pass.
    """

    min_count: int = 16
    layers: tuple[int, ...] | None = None
    seeds: int = 3
    test_size: float = 0.3
    heldout_windows: int = 96
    prefix_len: int = 32
    suffix_len: int = 32
    max_match_rate: float = 0.5
    min_match_rate: float | None = None
    n_boot: int = 200
    batch_size: int = 32

    def check(self) -> None:
        if self.seeds < 1:
            raise RotelabError(f"--seeds must be >= 1, got {self.seeds}")
        if not 0 < self.test_size < 1:
            raise RotelabError(f"--test-size must be in (0, 1), got {self.test_size}")
        if self.batch_size < 1:
            raise RotelabError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.heldout_windows < 2:
            raise RotelabError(f"--heldout-windows must be >= 2, got {self.heldout_windows}")
        if self.prefix_len < 1 or self.suffix_len < 1:
            raise RotelabError("--prefix-len and --suffix-len must be >= 1")
        if not 0 <= self.max_match_rate < 1:
            raise RotelabError(f"--max-match-rate must be in [0, 1), got {self.max_match_rate}")
        if self.min_match_rate is not None and not (self.max_match_rate < self.min_match_rate <= 1):
            raise RotelabError(
                f"--min-match-rate must be in ({self.max_match_rate}, 1], got {self.min_match_rate}"
            )
        if self.n_boot < 0:
            raise RotelabError(f"--n-boot must be >= 0, got {self.n_boot}")
        if self.min_count < 1:
            raise RotelabError(f"--min-count must be >= 1, got {self.min_count}")

    def check_layers(self, num_layers: int) -> tuple[int, ...]:
        """The layers to probe, each one the model has."""
        layers = self.layers or tuple(range(1, num_layers + 1))
        for layer in layers:
            check_steering_layer(layer, num_layers, "--layers")
        return tuple(dict.fromkeys(layers))


@dataclass
class Probed:
    """The labelled data, states and per-layer probes of one model (what ``steer`` builds on)."""

    lm: LM
    model: ModelInput
    data: ProbeData
    states: dict[int, np.ndarray]
    owner: np.ndarray
    layers: ProbeLayers
    heldout_docs: list[str]  # organism held-out text not used as probe negatives (perplexity)

    def split(self, seed: int, test_size: float) -> np.ndarray:
        """(windows,) bool: the held-out windows of ``seed``'s split."""
        return split_items(self.data.labels, test_size, seed)

    def fit(self, layer: int, train: np.ndarray | None = None):
        """The probe and steering vector at ``layer`` from the windows ``train`` (all: None)."""
        keep = np.ones(len(self.owner), bool) if train is None else train[self.owner]
        y = self.data.labels[self.owner]
        h = self.states[layer]
        probe = MemorizationProbe().fit(h[keep], y[keep])
        vector, separation = steering_vector(h[keep & y], h[keep & ~y])
        return probe, vector, separation


def check_inputs(model, data, settings: ProbeSettings, corpus: CorpusOptions) -> ModelInput:
    """Every option that can be checked before a model is loaded or the organism built."""
    settings.check()
    given = resolve_model(model)
    resolve_corpus(data, corpus, model=given, default="the organism's ledger")
    if data is None:
        check_min_count(given, settings.min_count)
    return given


def run_probe(
    given: ModelInput,
    data,
    settings: ProbeSettings,
    load: LoadOptions,
    corpus: CorpusOptions,
    *,
    lm: LM | None = None,
) -> Probed:
    """Load (unless ``lm`` is the model, loaded), label, collect states, probe every layer
    (validated inputs; writes nothing)."""
    lm = given.load(load) if lm is None else lm
    layers = settings.check_layers(lm.num_layers)
    heldout: list[str] = []
    if data is None:
        org = given.organism()
        docs = org.heldout_docs()
        # the first half of the held-out text gives probe negatives, the rest perplexity
        half = len(docs) // 2
        heldout = docs[half:]
        labelled = ledger_probe_data(
            lm, org.ledger, docs[:half], min_count=settings.min_count,
            heldout_windows=settings.heldout_windows, batch_size=settings.batch_size,
        )  # fmt: skip
    else:
        windows = list(
            corpus_windows(
                read_corpus(data, **corpus.read_kwargs()), lm.encode, settings.prefix_len,
                settings.suffix_len, None,
            )
        )  # fmt: skip
        if not windows:
            raise RotelabError(
                f"--data {data} holds no window of {settings.prefix_len}+{settings.suffix_len} "
                "tokens; pass more text or shorter --prefix-len/--suffix-len"
            )
        labelled = behaviour_probe_data(
            lm, windows, max_match_rate=settings.max_match_rate,
            min_match_rate=settings.min_match_rate, batch_size=settings.batch_size,
        )  # fmt: skip
    states, owner = collect_states(lm, labelled, layers, batch_size=settings.batch_size)
    table = probe_layers(
        states, owner, labelled.labels, seeds=range(settings.seeds),
        test_size=settings.test_size, n_boot=settings.n_boot,
    )  # fmt: skip
    return Probed(lm, given, labelled, states, owner, table, heldout)


def probe(
    model: LM | str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    *,
    settings: ProbeSettings = ProbeSettings(),
    alpha: float | None = None,
    run: RunOptions = RunOptions(),
    load: LoadOptions = LoadOptions(),
    corpus: CorpusOptions = CorpusOptions(),
) -> tuple[Path, dict[str, Any]]:
    """Probe every layer for memorization and write a run directory (``rotelab probe``).

    Args:
        model: an :class:`LM`, a model path, or ``None`` for the default organism.
        data: a corpus (behaviour labels); ``None`` (an organism only) = ledger labels.
        settings: see :class:`ProbeSettings`.
        alpha: the saved probe's steering strength; ``None``: 4 x the class-mean separation.
        run, load, corpus: the run directory, how the model is loaded and the corpus read.

    Returns:
        ``(run directory, summary)``; the summary's schema is in the module docstring.
    """
    run.check()
    load.check()
    if run.resume:
        raise RotelabError("rotelab probe cannot resume a run; start it again (--force replaces)")
    if alpha is not None and not math.isfinite(alpha):
        raise RotelabError(f"--alpha must be a finite number, got {alpha}")
    given = check_inputs(model, data, settings, corpus)
    label = model.name if isinstance(model, LM) else (str(model) if model else "organism")
    config = {"model": label, "data": data, "alpha": alpha, "seed": run.seed,
              **{k: v for k, v in settings.__dict__.items()}}  # fmt: skip
    inputs = (given.source, data)
    if run.out is not None:
        Run.check(run.out, force=run.force, inputs=inputs)

    t0 = time.perf_counter()
    probed = run_probe(given, data, settings, load, corpus)
    best = probed.layers.best_layer
    # causal check on seed 0's held-out memorized windows, with the probe of its training split
    test = probed.split(0, settings.test_size)
    probe0, _, _ = probed.fit(best, ~test)
    labels = probed.data.labels
    y_tok = labels[probed.owner]
    held_mem = [w for w, t, y in zip(probed.data.windows, test, labels) if t and y]
    patching = patching_effect(
        probed.lm, best, probe0, held_mem, probed.states[best][~test[probed.owner] & ~y_tok],
        h_memorizing=probed.states[best][~test[probed.owner] & y_tok], seed=run.seed,
        batch_size=settings.batch_size,
    )  # fmt: skip
    final, vector, separation = probed.fit(best)
    alpha = 4.0 * separation if alpha is None else alpha
    base = str(given.path() or given.source)
    row = probed.layers.by_layer.set_index("layer").loc[best]
    summary = {
        "model": label, "source": probed.data.source,
        "windows": {"memorized": int(labels.sum()), "not_memorized": int((~labels).sum())},
        "tokens": len(probed.owner),
        "layers": probed.layers.by_layer.to_dict("records"), "best_layer": best,
        "best_auc": float(row["auc_mean"]), "best_auc_ci": [float(row["auc_lo"]),
                                                            float(row["auc_hi"])],
        "separation": separation, "patching": patching, "alpha": alpha,
    }  # fmt: skip
    spec = steering_spec(
        probed.lm, base, best, final, vector, alpha,
        info={"auc": summary["best_auc"], "separation": separation, "source": probed.data.source},
    )  # fmt: skip
    with Run.create(run.out, "probe", config, force=run.force, inputs=inputs) as out:
        out.write_table("layers", probed.layers.table)
        out.write_table("by_layer", probed.layers.by_layer)
        out.write_table("windows", probed.data.frame)
        spec.save(out.path / "probe")
        summary["probe"] = str(out.path / "probe")
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        out.write_summary(summary)
    return out.path, summary


def format_table(summary: dict[str, Any]) -> str:
    """Per layer: held-out AUC with its CI; the chosen layer and the patching effect."""
    lines = [
        f"{summary['model']}: memorization probe per layer ({summary['source']} labels, "
        f"{summary['windows']['memorized']} memorized / {summary['windows']['not_memorized']} "
        "not)",
        f"{'layer':>5}  {'AUC':>6}  {'95% CI':>16}  {'item AUC':>8}",
    ]
    for r in summary["layers"]:
        mark = "  <- chosen" if r["layer"] == summary["best_layer"] else ""
        lines.append(
            f"{r['layer']:>5}  {r['auc_mean']:>6.3f}  [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]"
            f"  {r['item_auc_mean']:>8.3f}{mark}"
        )
    p = summary["patching"]
    lines.append(
        f"patching along the probe direction at layer {p['layer']}: extraction "
        f"{p['before']['rate']:.3f} -> {p['probe_direction']['rate']:.3f} "
        f"(random direction: {p['random_direction']['rate']:.3f}, n={p['before']['n']})"
    )
    if "mean_difference" in p:
        lines.append(
            f"the same patch along the class-mean difference: {p['mean_difference']['rate']:.3f}"
        )
    return "\n".join(lines)

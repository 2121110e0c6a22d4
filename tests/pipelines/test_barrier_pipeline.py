"""`rotelab barrier` (rotelab.pipelines.barrier): the claims are computed from paired per-seed
differences as documented; a tiny end-to-end run in two slices (budget, then --resume) gives a
whole run directory with a report page, each unit run once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotelab.cli import app
from rotelab.options import RunOptions
from rotelab.pipelines.barrier import BarrierConfig, barrier, summarize
from rotelab.summaries import read_summary
from rotelab.tasks.barrier import ModelShape

P1, PKM = "eval/pass@1(1)", "eval/pass@5(3)"


def _units() -> pd.DataFrame:
    """Seeds 0-2: clean base 0.10, memorized base 0.05; SFT gains 0.10 from clean and 0.02
    (+ seed/100) from memorized; IB-FT from memorized: Pass@1 +0.01 and Pass@5(3) +0.03 over
    SFT."""
    rows = []
    for s in range(3):
        for copies, base in ((0, 0.10), (64, 0.05)):
            sft = base + (0.10 if copies == 0 else 0.02 + s / 100)
            for unit, p1 in (("base", base), ("sft", sft), ("ibft", sft + 0.01)):
                pkm = p1 / 2 + (0.03 - 0.01 if unit == "ibft" else 0)
                rows.append(
                    {
                        "unit": unit,
                        "copies": copies,
                        "seed": s,
                        P1: p1,
                        PKM: pkm,
                        "min_k_correct": -3.0 + copies / 64 if unit == "base" else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def test_claims_are_paired_per_seed_differences():
    cfg = BarrierConfig(ks=(1, 5), ms=(1, 3), samples=5)
    out = summarize(_units(), cfg)
    barrier_claim = out["claims"]["barrier"]["gain_clean_minus_gain_memorized"]
    # gain from clean 0.10; from memorized 0.02, 0.03, 0.04: differences 0.08, 0.07, 0.06
    assert barrier_claim["per_seed"] == pytest.approx([0.08, 0.07, 0.06])
    assert barrier_claim["mean"] == pytest.approx(0.07)
    assert barrier_claim["ci"][0] < 0.07 < barrier_claim["ci"][1]
    assert out["claims"]["barrier"]["verdict"] == "agrees"
    ib = out["claims"]["ibft_over_sft"]["ibft_minus_sft"]
    assert (
        ib["mean"] == pytest.approx(0.01) and out["claims"]["ibft_over_sft"]["verdict"] == "agrees"
    )
    km = out["claims"]["ibft_over_sft_passkm"]["ibft_minus_sft"]
    # Pass@5(3): ibft = (sft + 0.01) / 2 + 0.02, sft = sft / 2: difference 0.025
    assert km["mean"] == pytest.approx(0.025)
    assert out["claims"]["passkm_gain"]["gain_passkm_minus_gain_pass1"]["mean"] == pytest.approx(
        0.015
    )
    assert out["claims"]["min_k"]["c64"]["mean"] == pytest.approx(-2.0)
    assert out["gains"]["sft-c0"][P1]["mean"] == pytest.approx(0.10)


def test_a_claim_the_numbers_contradict_disagrees():
    units = _units()
    units.loc[(units.unit == "ibft") & (units.copies == 64), P1] -= 0.05  # IB-FT now 0.04 worse
    out = summarize(units, BarrierConfig(ks=(1, 5), ms=(1, 3), samples=5))
    assert out["claims"]["ibft_over_sft"]["ibft_minus_sft"]["mean"] == pytest.approx(-0.04)
    assert out["claims"]["ibft_over_sft"]["verdict"] == "disagrees"


TINY = BarrierConfig(copies=(0, 3), n_finetune=4, n_eval=4, samples=5, ks=(1, 5), ms=(1, 3),
                     pretrain_steps=4, batch_size=4, finetune_steps=3, ft_batch_size=4,
                     shape=ModelShape(blocks=2, hidden=32, heads=4, context=128))  # fmt: skip


@pytest.mark.slow
def test_two_slices_make_one_whole_run(tmp_path, tiny_organism):
    out = tmp_path / "barrier"
    first = barrier((0,), TINY, tokenizer=tiny_organism.path, budget_s=1e-6,
                    run=RunOptions(out, progress=False))  # fmt: skip
    assert not first.complete and len(pd.read_parquet(out / "results" / "units")) == 1
    unit0 = pd.read_parquet(out / "results" / "units" / "part-base-c000-s0.parquet")
    second = barrier((0,), TINY, tokenizer=tiny_organism.path,
                     run=RunOptions(out, resume=True, progress=False))  # fmt: skip
    assert second.complete
    units = pd.read_parquet(out / "results" / "units")
    assert sorted(zip(units.unit, units.copies)) == sorted(
        (u, c) for u in ("base", "sft", "ibft") for c in (0, 3)
    )
    # the first slice's unit was kept, not run again
    pd.testing.assert_frame_equal(
        unit0, pd.read_parquet(out / "results" / "units" / "part-base-c000-s0.parquet")
    )
    curves = pd.read_parquet(out / "results" / "curves")
    ib = curves[curves.unit == "ibft"]
    assert ib["kl"].notna().all() and np.isfinite(ib["kl"]).all()
    assert curves[curves.unit == "sft"]["kl"].isna().all()
    mink = pd.read_parquet(out / "results" / "mink")
    assert len(mink) == 2 * TINY.n_finetune
    summary = read_summary(out, "barrier")
    assert summary.complete and set(summary.claims) >= {"barrier", "ibft_over_sft"}
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "models" / "base-c003-s0" / "model.safetensors").is_file()


def test_bad_options_fail_before_any_work(tmp_path, no_organism):
    res = CliRunner().invoke(app, ["barrier", "--copies", "64,64", "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "distinct" in res.stderr
    assert not (tmp_path / "b").exists()


def test_a_difference_within_noise_is_inconclusive():
    units = _units()
    sel = (units.unit == "ibft") & (units.copies == 64)
    units.loc[sel, P1] += [0.01, -0.03, 0.0]  # IB-FT - SFT per seed: +0.02, -0.02, +0.01
    out = summarize(units, BarrierConfig(ks=(1, 5), ms=(1, 3), samples=5))
    assert out["claims"]["ibft_over_sft"]["verdict"] == "inconclusive (mean +)"

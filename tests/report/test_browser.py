"""End to end: the tiny-profile demo, its report opened in headless Chromium.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it). The page is
driven over the DevTools pipe by ``_browser.py`` (standard library only). Without Chromium the
browser test skips with the reason; the run-directory checks still run.
"""

from __future__ import annotations

import json
import math

import pytest
from _browser import Browser, find_chromium

pytestmark = [pytest.mark.slow]

PLOTS = {
    "extraction_by_count", "mia_roc", "mia_auc_by_count", "rho_sweep", "band_ratios",
    "before_after_kfac", "before_after_balanced_subnet",
}  # fmt: skip


@pytest.fixture
def demo_report(tiny_demo):
    return tiny_demo / "report.html"


def _lookup(summary: dict, key: str):
    cur = summary
    for part in key.split("."):
        cur = cur[part]
    return cur


def test_demo_writes_every_stage(demo_report):
    run = demo_report.parent
    assert demo_report.name == "report.html" and demo_report.exists()
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stage_seconds"]) == [
        "organism", "extraction", "membership inference", "K-FAC edit", "BalancedSubnet", "compare",
    ]  # fmt: skip
    for sub in ("extract", "mia", "kfac", "compare"):
        assert (run / sub / "summary.json").exists(), sub
    # the edited models exist and the source organism was not touched (edits return copies)
    assert (run / "models" / "kfac" / "rotelab_edit.json").exists()
    assert (run / "models" / "balanced_subnet" / "balanced_subnet.json").exists()
    ext = summary["extraction"]
    by_count = ext["by_group"]["count"]
    # The organism memorizes what it saw often: 64 copies are extracted more than never-seen
    # controls.
    assert by_count["64"]["extraction_rate"] > by_count["0"]["extraction_rate"]
    assert by_count["0"]["extraction_rate"] == 0.0
    comp = summary["compare"]
    assert comp["order"] == ["base", "kfac", "balanced_subnet"]
    base_strict = comp["models"]["base"]["extraction"]["strict"]["rate"]
    # teacher-forced extraction on the memorized items equals compare's decoded strict rate
    assert summary["kfac"]["base"]["extraction_rate"] == pytest.approx(base_strict)
    rhos = [r["rho"] for r in summary["kfac"]["rho_sweep"]]
    assert summary["kfac"]["rho"] in rhos
    # dropping curvature mass can only hurt the language model on held-out text, not help it much
    sweep = {r["rho"]: r for r in summary["kfac"]["rho_sweep"]}
    assert sweep[min(rhos)]["perplexity"] >= sweep[max(rhos)]["perplexity"] * 0.98
    for name in ("loss", "min_k_pp"):
        auc = summary["mia"]["attacks"][name]["auc"]
        assert 0.5 < auc <= 1.0, (name, auc)


@pytest.mark.browser
def test_report_renders_in_chromium(demo_report, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    summary = json.loads((demo_report.parent / "summary.json").read_text())
    with Browser(binary) as browser:
        browser.open(demo_report)
        images = browser.evaluate(
            "Array.from(document.querySelectorAll('figure.plot')).map(f => {"
            " const i = f.querySelector('img');"
            " return [f.dataset.plot, i.complete, i.naturalWidth, i.naturalHeight]; })"
        )
        nums = browser.evaluate(
            "Array.from(document.querySelectorAll('[data-key]')).map(e =>"
            " [e.dataset.key, e.dataset.value, e.textContent])"
        )
        resources = browser.evaluate(
            "performance.getEntriesByType('resource').map(r => r.name)"
            ".filter(u => !u.startsWith('data:'))"
        )
        browser.screenshot(tmp_path / "report.png")
        errors = browser.errors()
    assert errors == []
    assert resources == []  # nothing fetched: the page is self-contained
    assert {p for p, *_ in images} == PLOTS
    for plot, complete, width, height in images:
        assert complete and width > 0 and height > 0, plot
    assert len(nums) >= 10
    keys = {k for k, _, _ in nums}
    assert {"extraction.extraction_rate", "compare.models.kfac.extraction_rate",
            "mia.attacks.loss.auc", "kfac.rho"} <= keys  # fmt: skip
    for key, value, text in nums:
        expected = _lookup(summary, key)
        assert json.loads(value) == expected, key
        if isinstance(expected, float) and math.isfinite(expected):
            assert float(text) == pytest.approx(expected, rel=1e-3, abs=1e-9), key
    assert (tmp_path / "report.png").stat().st_size > 10_000

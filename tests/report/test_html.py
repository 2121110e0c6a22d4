"""The HTML report: self-contained, numbers traceable to summary.json, every plot present."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from rotelab.errors import RotelabError
from rotelab.report import render_report, write_report
from rotelab.report.html import before_after_rows, extraction_rates, mia_auc_by_count
from rotelab.runs import read_table
from rotelab.summaries import CompareSummary, ExtractionSummary, MIASummary

pytestmark = [pytest.mark.slow]  # the pages are drawn from a real (tiny) demo run


class _Page(HTMLParser):
    """Collects what the tests check: URLs, headline spans, plot images, highlighted tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.nums: list[dict] = []
        self.plots: list[str] = []
        self.imgs: list[str] = []
        self.diverge: list[str] = []
        self._in_num: dict | None = None
        self._in_div = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for k in ("src", "href", "action", "data"):
            if k in a and a[k] is not None:
                self.urls.append(a[k])
        if tag == "span" and "data-key" in a:
            self._in_num = {"key": a["data-key"], "value": json.loads(a["data-value"]), "text": ""}
        if tag == "span" and "diverge" in (a.get("class") or "").split():
            self._in_div = True
            self.diverge.append("")
        if tag == "figure" and "data-plot" in a:
            self.plots.append(a["data-plot"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))

    def handle_data(self, data):
        if self._in_num is not None:
            self._in_num["text"] += data
        if self._in_div:
            self.diverge[-1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._in_num is not None:
            self.nums.append(self._in_num)
            self._in_num = None
        if tag == "span":
            self._in_div = False


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def _lookup(summary: dict, key: str):
    cur = summary
    for part in key.split("."):
        cur = cur[part]
    return cur


def _check_page(run_dir) -> _Page:
    """Shared checks: offline, valid PNGs, every headline equal to summary.json."""
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    page = _parse(text)
    assert not [u for u in page.urls if re.match(r"^(https?:)?//", u)], "external URL in report"
    assert "script" not in page.tags and "link" not in page.tags
    assert page.imgs and all(u.startswith("data:image/png;base64,") for u in page.imgs)
    for u in page.imgs:
        assert base64.b64decode(u.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert page.nums
    for n in page.nums:
        assert n["value"] == _lookup(summary, n["key"]), n["key"]
        if isinstance(n["value"], float):
            assert float(n["text"]) == pytest.approx(n["value"], rel=1e-3, abs=1e-9)
    return page


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_extract_page(extract_run):
    page = _check_page(extract_run)
    keys = {n["key"] for n in page.nums}
    assert {"extraction_rate", "extraction_rate_ci", "windows", "mean_matched_prefix"} <= keys
    assert page.plots == ["extraction_by_count"]
    # each example's first differing token is the one highlighted, true suffix then continuation
    examples = read_table(extract_run, "examples")
    expected = []
    for r in examples.itertuples(index=False):
        m = int(r.matched)
        if m < len(r.suffix_pieces):
            expected += [r.suffix_pieces[m], r.continuation_pieces[m]]
    assert expected and page.diverge == expected


def test_extraction_rates_are_the_summarys_groups(extract_run):
    summary = _summary(extract_run)
    rates = extraction_rates(ExtractionSummary.from_dict(summary))
    overall = rates[rates["series"] == "all"].set_index("count")["rate"].to_dict()
    by_count = summary["by_group"]["count"]
    assert overall == {int(c): g["extraction_rate"] for c, g in by_count.items()}
    assert set(rates["series"]) == {"all", "secret", "bio", "passage"}  # phase rows left out
    bio = summary["by_group"]["kind+count"]["bio|64"]
    row = rates[(rates["series"] == "bio") & (rates["count"] == 64)].iloc[0]
    assert (
        row["rate"] == bio["extraction_rate"]
        and [row["lo"], row["hi"]] == bio["extraction_rate_ci"]
    )


def test_mia_page(mia_run):
    page = _check_page(mia_run)
    assert page.plots == ["mia_roc", "mia_auc_by_count"]
    summary = _summary(mia_run)
    assert {f"attacks.{a}.auc" for a in summary["attacks"]} <= {n["key"] for n in page.nums}
    by_count = mia_auc_by_count(MIASummary.from_dict(summary)).set_index(["attack", "count"])
    for c, g in summary["attacks"]["loss"]["by_group"]["count"].items():
        assert by_count.loc[("loss", int(c)), "auc"] == g["auc"]


def test_compare_page(compare_run):
    page = _check_page(compare_run)
    assert page.plots == ["before_after_kfac", "before_after_balanced_subnet"]
    assert "models.kfac.extraction_rate" in {n["key"] for n in page.nums}
    summary = _summary(compare_run)
    rows = before_after_rows(CompareSummary.from_dict(summary)).set_index(["method", "metric"])
    models = summary["models"]
    assert rows.loc[("kfac", "perplexity"), "before"] == models["base"]["perplexity"]
    assert rows.loc[("kfac", "perplexity"), "after"] == models["kfac"]["perplexity"]
    after = models["balanced_subnet"]["tasks"]["arithmetic"]["accuracy"]
    assert rows.loc[("balanced_subnet", "arithmetic"), "after"] == after
    # directions as the summary records them (the compare writer took them from the registry)
    assert rows.loc[("balanced_subnet", "arithmetic"), "higher_is_better"]
    assert not rows.loc[("kfac", "extraction"), "higher_is_better"]
    assert not rows.loc[("kfac", "perplexity"), "higher_is_better"]


def test_demo_page_has_every_plot(demo_run):
    page = _check_page(demo_run)
    assert set(page.plots) == {
        "extraction_by_count", "mia_roc", "mia_auc_by_count", "rho_sweep", "band_ratios",
        "before_after_kfac", "before_after_balanced_subnet",
    }  # fmt: skip
    keys = {n["key"] for n in page.nums}
    assert {"extraction.extraction_rate", "mia.attacks.loss.auc", "kfac.rho"} <= keys
    assert {"kfac.chosen.extraction_rate", "compare.models.kfac.perplexity"} <= keys
    assert "organism.heldout_ppl" in keys
    text = (demo_run / "report.html").read_text()
    assert 'id="config"' in text and 'id="environment"' in text and "&quot;torch&quot;" in text


def test_a_summary_another_program_wrote_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"command": "mia"}')
    (tmp_path / "summary.json").write_text('{"members": 80, "nonmembers": 20}')
    with pytest.raises(RotelabError, match="not a rotelab membership inference summary"):
        render_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_report_refuses_a_dir_without_summary(tmp_path):
    (tmp_path / "config.json").write_text('{"command": "extract"}')
    with pytest.raises(RotelabError, match="summary.json"):
        render_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(RotelabError, match="missing does not exist"):
        render_report(tmp_path / "missing")
    with pytest.raises(RotelabError, match="not a directory"):
        render_report(tmp_path / "config.json")


def test_cli_report(extract_run, tmp_path):
    from rotelab.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(extract_run)])
    assert res.exit_code == 0, res.output
    assert str(extract_run / "report.html") in res.output.replace("\n", "")
    res = runner.invoke(app, ["report", str(tmp_path / "nothing-here")])
    assert res.exit_code == 2

"""The demo's argument checks (the end-to-end run is in tests/report/test_browser.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rotelab.errors import RotelabError
from rotelab.pipelines.demo import DemoConfig, demo


@pytest.mark.parametrize(
    "bad",
    [{"profile": "huge"}, {"rhos": ()}, {"rhos": (0.5, 1.5)}, {"bsn_epochs": 0}],
)
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(RotelabError):
        DemoConfig(**bad).validate()


def test_bad_profile_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RotelabError, match="profile"):
        demo(out, profile="huge", progress=False)
    assert not out.exists()


def test_cli_demo_bad_profile_exit_code(tmp_path):
    from rotelab.cli import app

    res = CliRunner().invoke(app, ["demo", "--profile", "huge", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "profile" in res.output


def test_cli_demo_refuses_existing_out(tmp_path):
    from rotelab.cli import app

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    res = CliRunner().invoke(app, ["demo", "--profile", "tiny", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "already exists" in res.output
    assert (tmp_path / "r" / "keep.txt").read_text() == "x"

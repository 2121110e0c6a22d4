"""Fixtures: real run directories, written by the real writers (the tiny demo on the session's
tiny organism: its extract, mia, kfac and compare sub-runs and its own summary)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_demo(tiny_organism, tmp_path_factory):
    """The tiny demo's run directory, in a temporary ROTELAB_HOME holding the tiny organism."""
    from rotelab.pipelines.demo import demo

    home = tmp_path_factory.mktemp("rotelab-home")
    (home / "organisms").mkdir()
    # the demo looks the organism up in $ROTELAB_HOME/organisms/<spec key>: link the built one
    (home / "organisms" / tiny_organism.spec.key()).symlink_to(tiny_organism.path.resolve())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROTELAB_HOME", str(home))
        report = demo(tmp_path_factory.mktemp("demo") / "run", profile="tiny", progress=False)
    return report.parent


@pytest.fixture
def extract_run(tiny_demo):
    return tiny_demo / "extract"


@pytest.fixture
def mia_run(tiny_demo):
    return tiny_demo / "mia"


@pytest.fixture
def compare_run(tiny_demo):
    return tiny_demo / "compare"


@pytest.fixture
def demo_run(tiny_demo):
    return tiny_demo

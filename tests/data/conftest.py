"""The tiny organism, built once per test session into a temporary ROTELAB_HOME."""

from __future__ import annotations

import pytest

from rotelab.data.organism import Organism, OrganismSpec, build_organism


@pytest.fixture(scope="session")
def tiny_organism(tmp_path_factory) -> Organism:
    """Tiny profile, seed 0, built under ``<tmp>/organisms/<key>`` (never ~/.cache)."""
    home = tmp_path_factory.mktemp("rotelab_home")
    spec = OrganismSpec("tiny", 0)
    return build_organism(spec, out=home / "organisms" / spec.key(), progress=False)

"""Fixtures for the measurement tests: the trained ``tiny`` organism, built once per cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_organism(request):
    """The ``tiny`` organism, built once into pytest's cache (keyed by its spec hash)."""
    from rotelab.data.organism import OrganismSpec, build_organism

    spec = OrganismSpec(profile="tiny")
    root = request.config.cache.mkdir("rotelab-organisms")
    return build_organism(spec, out=root / spec.key(), progress=False)

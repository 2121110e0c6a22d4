"""Shared fixtures: tiny random models of three architectures, saved locally (no hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from tiny_models import make_tiny_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session", params=["llama", "gpt2", "neox"])
def tiny_model_dir(request, tmp_path_factory, tiny_tokenizer):
    """A saved tiny model directory (safetensors + tokenizer) for each architecture."""
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model = make_tiny_model(request.param)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama").save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_llama_dir):
    from rotelab.lm import LM

    return LM.load(tiny_llama_dir, dtype="float32")


@pytest.fixture(scope="session")
def tiny_organism(tmp_path_factory):
    """The ``tiny`` organism, built once per test session into a temporary directory.

    ``ROTELAB_TEST_ORGANISM`` may point at an already built tiny organism to save the build.
    """
    from rotelab.organism import OrganismSpec, Profile, build_organism, load_organism

    given = os.environ.get("ROTELAB_TEST_ORGANISM")
    if given:
        return load_organism(given)
    root = tmp_path_factory.mktemp("organisms")
    spec = OrganismSpec(Profile.tiny)
    return build_organism(spec, out=root / spec.key(), progress=False)


@pytest.fixture
def no_organism(monkeypatch):
    """Building (or loading) the default organism fails the test: for checks that must come
    before any work. The pipelines get the default organism only through this name."""

    def fail(*args, **kwargs):
        raise AssertionError("the default organism was built")

    monkeypatch.setattr("rotelab.pipelines.inputs.default_organism", fail)


#: Fixtures that build (or load) an organism: a test using one is slow (`pytest -m "not slow"`
#: is the quick run). Tests that build one themselves carry `@pytest.mark.slow` by hand.
ORGANISM_FIXTURES = {"tiny_organism"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ORGANISM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

"""Shared fixtures: tiny HF models and their bundles, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_hf_model  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's cache from tests (real-model tests opt back in)."""
    import os
    if "EDGESPEC_CACHE" not in os.environ:
        os.environ["EDGESPEC_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def _export(hf: Path, out: Path, precision: str) -> Path:
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from edgespec.runtime.session import bundle_logits
    export(str(hf), out, ExportOptions(recipe=Recipe(precision), force=True, parity=bundle_logits))
    return out


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2", seed=0, train_steps=100)


@pytest.fixture(scope="session")
def tiny_draft_hf(tmp_path_factory) -> Path:
    """A different model (other architecture and seed) with the same tokenizer."""
    return make_hf_model(tmp_path_factory.mktemp("hf") / "llama", "llama", seed=1, train_steps=100)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_hf, tmp_path_factory) -> Path:
    return _export(tiny_hf, tmp_path_factory.mktemp("bundles") / "qwen2-fp32", "fp32")


@pytest.fixture(scope="session")
def tiny_int4_bundle(tiny_hf, tmp_path_factory) -> Path:
    return _export(tiny_hf, tmp_path_factory.mktemp("bundles") / "qwen2-int4", "int4")


@pytest.fixture(scope="session")
def tiny_draft_bundle(tiny_draft_hf, tmp_path_factory) -> Path:
    return _export(tiny_draft_hf, tmp_path_factory.mktemp("bundles") / "llama-fp32", "fp32")


@pytest.fixture(scope="module")
def reference(tiny_bundle, tiny_draft_bundle):
    """`Generator.generate` in this process on the tiny pair, for greedy equality with a server."""
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    return Generator(Session(tiny_bundle), Session(tiny_draft_bundle))

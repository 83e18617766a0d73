"""Fixtures: small profile tables written by tests/runtime/synthetic.py, fitted once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import TEST_GPU, TINY_MODEL, write_profiles

from simulator.runtime import build_predictor


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_profiles(root)
    return root


@pytest.fixture(scope="session")
def profiles_dir(synthetic_root) -> Path:
    return synthetic_root / "profiles"


@pytest.fixture(scope="session")
def cache_dir(synthetic_root) -> Path:
    return synthetic_root / "cache"


@pytest.fixture(scope="session")
def make_predictor(profiles_dir, cache_dir):
    """build_predictor on the synthetic tables, sharing one fit per tp through the session's cache."""

    def make(tp: int = 1, pp: int = 1, cpu_overhead_s: float | None = 0.0, model=TINY_MODEL,
             engine="servesim_execute"):
        return build_predictor(model, TEST_GPU, tp, pp, cpu_overhead_s, engine=engine, profiles_dir=profiles_dir,
                               cache_directory=cache_dir)

    return make

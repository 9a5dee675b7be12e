"""Shared fixtures: small synthetic datasets made by mabe's own generator, a fake feature cache, and the
real labels. Tests live in unit/ (mirroring src/mabe) and integration/ (whole runs, crashes, torchrun,
the demo, bad input); helpers.py holds what they share beyond fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mabe2025"


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared, busy CPU two OpenMP threads stall each other for seconds."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny synthetic MABe-layout dataset (train + test), generated once per session."""
    from mabe import synth

    out = tmp_path_factory.mktemp("tiny") / "data"
    synth.write_dataset(out, preset="tiny", seed=0)
    return out


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    """A private copy of the session's tiny synthetic dataset (about 1 MB), free to damage."""
    out = tmp_path / "data"
    shutil.copytree(tiny_data, out)
    return out


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real MABe 2025 metadata and annotations (no tracking); skip when absent."""
    if not (REAL / "train.csv").is_file():
        pytest.skip(f"real MABe labels not found at {REAL}")
    return REAL


@pytest.fixture
def fake_cache(tmp_path) -> Path:
    """A feature cache in the design.md layout (tests/helpers.make_fake_cache) under tmp_path/cache."""
    from helpers import make_fake_cache

    return make_fake_cache(tmp_path / "cache")

"""Normalisation statistics and their application, chunk by chunk (found by mutation testing of
windows.py: the chunked sums, the std floor, NaN/inf handling and the recorded stats)."""

from __future__ import annotations

import numpy as np
import pytest

# every mabe name these tests use, in one place
from mabe.errors import MabeError
from mabe.windows import TrackSet, norm_stats, normalize_


def _X(seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(50, 6)) * [1, 3, 0.5, 1, 1, 1] + [0, 10, -2, 0, 0, 0]).astype(np.float32)
    X[::7, 0] = np.nan
    X[3, 1] = np.inf
    X[:, 3] = 4.0  # constant
    X[:, 4] = np.nan  # never observed
    X[:, 5] = 3e-7 * (np.arange(50) % 2)  # std 1.5e-7: treated as constant
    return X


@pytest.mark.parametrize("chunk", [7, 1 << 18])
def test_norm_stats_are_the_nan_ignoring_moments_over_every_chunk(chunk):
    X = _X()
    got = norm_stats(X, chunk=chunk)
    x = np.where(np.isfinite(X), X, np.nan).astype(np.float64)
    assert got["mean"].dtype == np.float32 and got["std"].dtype == np.float32
    np.testing.assert_allclose(got["mean"][:3], np.nanmean(x[:, :3], 0), rtol=1e-5)
    np.testing.assert_allclose(got["std"][:3], np.nanstd(x[:, :3], 0), rtol=1e-4)
    assert got["mean"][3] == 4.0 and got["std"][3] == 1.0  # constant: std 1, not 0
    assert got["mean"][4] == 0.0 and got["std"][4] == 1.0  # all NaN
    assert got["std"][5] == 1.0


def test_a_small_but_real_spread_is_kept():
    X = np.stack([np.arange(40) % 2 * 4e-6, np.arange(40) % 2 * 1e-3], 1)  # std 2e-6 and 5e-4
    std = norm_stats(X)["std"]
    np.testing.assert_allclose(std, [2e-6, 5e-4], rtol=1e-5)


@pytest.mark.parametrize("chunk", [5, 1 << 18])
def test_normalize_standardises_every_chunk_and_zeroes_non_finite(chunk):
    X = _X(1)
    ts = TrackSet.from_tracks("pair", ["a"], [X[:30], X[30:]], [np.zeros((30, 1)), np.zeros((20, 1))])
    stats = {"mean": np.arange(6, dtype=np.float64), "std": np.array([1, 2, 4, 1, 1, 0.5])}
    out = normalize_(ts, stats, chunk=chunk)
    assert out is ts
    expect = (X - np.arange(6, dtype=np.float32)) / np.array([1, 2, 4, 1, 1, 0.5], np.float32)
    expect[~np.isfinite(expect)] = 0.0
    np.testing.assert_allclose(ts.X, expect, rtol=1e-6)
    assert ts.X.dtype == np.float32 and np.isfinite(ts.X).all()
    assert set(ts.norm) == {"mean", "std"}
    assert ts.norm["mean"].dtype == np.float32 and ts.norm["std"].dtype == np.float32
    np.testing.assert_array_equal(ts.norm["std"], stats["std"].astype(np.float32))
    neg = TrackSet.from_tracks("pair", ["a"], [np.array([[-np.inf] * 6], np.float32)], [np.zeros((1, 1))])
    assert (normalize_(neg, stats).X == 0).all()


def test_normalize_names_the_feature_counts_that_disagree():
    ts = TrackSet.from_tracks("pair", ["a"], [np.zeros((4, 3), np.float32)], [np.zeros((4, 1))])
    with pytest.raises(MabeError, match="^normalisation stats have 2 features, the tracks 3$"):
        normalize_(ts, {"mean": np.zeros(2), "std": np.ones(2)})

"""The feature store's dtype: the error it reports is the round trip through the dtype it stores,
resident or streamed (supersedes test_device_store_streaming_fallback, which asserted only > 0)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

# every mabe name these tests use, in one place (the training modules are being reorganised)
from mabe.training.batches import DeviceStore
from mabe.windows import TrackSet, gather, window_index


def _ts(seed=0) -> TrackSet:
    rng = np.random.default_rng(seed)
    xs = [(rng.normal(size=(L, 5)) * 37).astype(np.float32) for L in (30, 45)]
    return TrackSet.from_tracks("pair", ["a", "b"], xs, [np.zeros((len(x), 2), np.uint8) for x in xs])


@pytest.mark.parametrize("name, dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
@pytest.mark.parametrize("streaming", [False, True])
def test_reported_error_is_the_round_trip_through_the_stored_dtype(name, dtype, streaming):
    ts = _ts()
    X = torch.from_numpy(ts.X)
    expect = float((X.to(dtype).float() - X).abs().max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = DeviceStore(ts, "cpu", name, max_bytes=1 if streaming else None)
    assert store.resident is not streaming and store.dtype == dtype
    assert store.max_abs_error == pytest.approx(expect, rel=1e-6)
    assert f"({name} features;" in store.message and f"{expect:.2e}" in store.message
    w = window_index(ts.lengths, 10, 7)
    b = store.batch(torch.from_numpy(w), 10)
    assert b["x"].dtype == dtype
    ref = gather({k: torch.from_numpy(v) for k, v in ts.arrays().items()}, torch.from_numpy(w), 10)
    torch.testing.assert_close(b["x"].float(), ref["x"].to(dtype).float())

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


def test_a_float16_matrix_on_the_cpu_is_served_as_it_is():
    """A float16 TrackSet (``PositionTracks.to_trackset``'s CPU default) is the store itself with auto: no
    float32 copy (the same memory), batches in float16, the rounding it was stored with reported."""
    ts = _ts()
    ref = ts.X.copy()
    ts.X, ts.stored_error = ts.X.astype(np.float16), 0.25
    for t in (ts.tensors(), DeviceStore(ts, "cpu", "auto").arrays):
        assert t["X"].dtype == torch.float16 and t["X"].data_ptr() == ts.X.ctypes.data  # zero copy
    store = DeviceStore(ts, "cpu", "auto")
    assert store.dtype == torch.float16 and store.max_abs_error == 0.25 and "(float16 features;" in store.message
    w = torch.from_numpy(window_index(ts.lengths, 10, 7))
    b = store.batch(w, 10)
    assert b["x"].dtype == torch.float16
    want = gather({k: torch.from_numpy(v) for k, v in ts.arrays().items()}, w, 10)["x"]
    torch.testing.assert_close(b["x"], want)
    torch.testing.assert_close(b["x"].float(), gather({"X": torch.from_numpy(ref), **{
        k: torch.from_numpy(v) for k, v in ts.arrays().items() if k != "X"}}, w, 10)["x"], rtol=1e-3, atol=0.05)
    up = DeviceStore(ts, "cpu", "float32")  # asked for: an exact upcast, the stored rounding still reported
    assert up.arrays["X"].dtype == torch.float32 and up.max_abs_error == 0.25

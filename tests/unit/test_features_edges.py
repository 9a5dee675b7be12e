"""features.py edge cases found by mutation testing (scripts/mutation.sh features; docs/testing.md).

The basic per-frame operations (pixels to cm, gap filling, moving mean, time derivatives,
resampling) against references written out frame by frame here, with NaNs, edges and boundaries.
"""

from __future__ import annotations

import numpy as np
import pytest

from mabe.features import (
    acceleration,
    interpolate_gaps,
    moving_average,
    nearest_frames,
    resample,
    resample_positions,
    speed,
    time_derivative,
    to_cm,
    velocity,
)


def test_to_cm_subtracts_each_coordinates_centre_then_divides_and_leaves_the_input_alone():
    px = np.array([[[[110.0, 20.0], [90.0, 60.0]]]])  # (1, 1, 2, 2)
    before = px.copy()
    cm = to_cm(px, 4.0, (100.0, 40.0))
    np.testing.assert_array_equal(cm, [[[[2.5, -5.0], [-2.5, 5.0]]]])
    np.testing.assert_array_equal(px, before)
    np.testing.assert_array_equal(to_cm(px, 2.0), px / 2.0)  # no centre given: nothing subtracted
    ints = to_cm(np.array([[[[3, 5]]]]), 2.0)
    assert ints.dtype == np.float64 and ints.tolist() == [[[[1.5, 2.5]]]]
    assert to_cm(px.astype(np.float32), 4.0).dtype == np.float32


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_to_cm_refuses_a_scale_that_is_not_a_positive_number(bad):
    with pytest.raises(ValueError, match=rf"^pix_per_cm must be a positive number, got {bad}$"):
        to_cm(np.zeros((1, 1, 1, 2)), bad)


def interpolate_by_hand(x: np.ndarray, max_gap: int) -> np.ndarray:
    out = x.astype(np.float64).copy()
    T = len(out)
    for c in range(out.shape[1]):
        t = 0
        while t < T:
            if np.isnan(out[t, c]):
                e = t
                while e < T and np.isnan(x[e, c]):
                    e += 1
                n = e - t
                if t > 0 and e < T and n <= max_gap:
                    lo, hi = x[t - 1, c], x[e, c]
                    for k in range(n):
                        out[t + k, c] = lo + (k + 1) / (n + 1) * (hi - lo)
                t = e
            else:
                t += 1
    return out


def test_interpolation_fills_interior_runs_up_to_max_gap_frames_exactly_linearly():
    x = np.arange(40, dtype=np.float64).reshape(10, 4) ** 1.5
    x[2:4, 0] = np.nan  # 2 frames: filled with max_gap 2
    x[3:6, 1] = np.nan  # 3 frames: too long for max_gap 2
    x[0, 2] = np.nan  # leading edge: stays
    x[8:, 2] = np.nan  # trailing edge of column 2 ...
    x[:1, 3] = np.nan  # ... next to the leading edge of column 3: not one interior run
    x[5, 3] = np.nan  # 1 frame
    for max_gap in (1, 2, 3):
        got = interpolate_gaps(x, max_gap)
        np.testing.assert_allclose(got, interpolate_by_hand(x, max_gap), rtol=1e-12, equal_nan=True)
    assert np.isnan(interpolate_gaps(x, 2)[3:6, 1]).all() and not np.isnan(interpolate_gaps(x, 3)[3:6, 1]).any()
    np.testing.assert_array_equal(interpolate_gaps(x, 0), x)  # max_gap 0: nothing filled


def test_interpolation_keeps_the_shape_dtype_and_the_input():
    x = np.ones((5, 2, 2), np.float32)
    x[2, 1, 0] = np.nan
    before = x.copy()
    got = interpolate_gaps(x, 3)
    assert got.shape == x.shape and got.dtype == np.float32 and got[2, 1, 0] == 1.0
    np.testing.assert_array_equal(x, before)
    short = np.array([[1.0], [np.nan]])
    assert np.isnan(interpolate_gaps(short, 5)[1, 0])  # T < 3: no interior frame


def moving_average_by_hand(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full(x.shape, np.nan)
    T = len(x)
    left = window // 2
    right = window - 1 - left
    for t in range(T):
        for c in range(x.shape[1]):
            if np.isnan(x[t, c]):
                continue
            seg = x[max(t - left, 0) : min(t + right + 1, T), c]
            out[t, c] = np.nanmean(seg)
    return out


@pytest.mark.parametrize("window", [2, 3, 4, 7])
def test_moving_average_is_the_centred_nan_ignoring_mean_over_the_window(window):
    rng = np.random.default_rng(window)
    x = rng.normal(size=(15, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    got = moving_average(x, window)
    np.testing.assert_allclose(got, moving_average_by_hand(x, window), rtol=1e-12, equal_nan=True)
    assert got.dtype == np.float64 and got.shape == x.shape


def test_moving_average_of_window_one_or_empty_input_is_a_copy():
    x = np.array([[1.0], [np.nan], [3.0]], np.float32)
    for out in (moving_average(x, 1), moving_average(x, 0)):
        np.testing.assert_array_equal(out, x)
        assert out is not x and out.dtype == np.float32
    assert moving_average(np.zeros((0, 2)), 5).shape == (0, 2)
    assert moving_average(x, 3).dtype == np.float32


def derivative_by_hand(x: np.ndarray, fps: float) -> np.ndarray:
    """Central difference, the one-sided one next to a missing neighbour or at the ends, NaN when none."""
    T = len(x)
    out = np.full(x.shape, np.nan)
    for t in range(T):
        for c in range(x.shape[1]):
            fwd = x[t + 1, c] - x[t, c] if t + 1 < T else np.nan
            bwd = x[t, c] - x[t - 1, c] if t > 0 else np.nan
            if t == 0 or t == T - 1:
                out[t, c] = (fwd if t == 0 else bwd) * fps
            elif not np.isnan(fwd) and not np.isnan(bwd):
                out[t, c] = (fwd + bwd) / 2 * fps
            else:
                out[t, c] = (bwd if np.isnan(fwd) else fwd) * fps
    return out


def test_time_derivative_is_central_one_sided_next_to_a_gap_and_per_second():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(12, 3)), axis=0)
    np.testing.assert_allclose(time_derivative(x, 25.0), np.gradient(x, 1 / 25.0, axis=0), rtol=1e-12)
    x[4, 0] = np.nan  # frames 3 and 5 of column 0: one-sided; frame 4: NaN
    x[8:10, 1] = np.nan
    got = time_derivative(x, 30.0)
    np.testing.assert_allclose(got, derivative_by_hand(x, 30.0), rtol=1e-12, equal_nan=True)
    assert np.isnan(got[4, 0]) and np.isfinite(got[[3, 5], 0]).all()


def test_time_derivative_of_one_or_two_frames():
    assert np.isnan(time_derivative(np.array([[1.0, 2.0]]), 30.0)).all()
    np.testing.assert_array_equal(time_derivative(np.array([[1.0], [4.0]]), 10.0), [[30.0], [30.0]])
    assert time_derivative(np.array([[1], [3], [4]]), 2.0).tolist() == [[4.0], [3.0], [2.0]]  # ints -> float


def test_speed_and_acceleration_of_uniform_circular_motion():
    fps, r, w = 100.0, 5.0, 2.0  # 5 cm radius at 2 rad/s: speed r w, acceleration r w^2 (towards the centre)
    t = np.arange(400) / fps
    xy = np.stack([r * np.cos(w * t), r * np.sin(w * t)], -1)[:, None, None, :]  # (T, 1, 1, 2)
    np.testing.assert_allclose(speed(xy, fps)[5:-5, 0, 0], r * w, rtol=1e-4)
    np.testing.assert_allclose(acceleration(xy, fps)[5:-5, 0, 0], r * w * w, rtol=1e-3)
    v = velocity(xy, fps)
    np.testing.assert_allclose(v[5:-5, 0, 0, 0], -r * w * np.sin(w * t[5:-5]), atol=1e-3)


def test_resample_positions_and_nearest_frames():
    assert resample_positions(0, 30.0, 15.0).size == 0
    assert resample_positions(5, 30.0, 15.0).tolist() == [0.0, 2.0, 4.0]
    assert resample_positions(4, 30.0, 15.0).tolist() == [0.0, 2.0]
    np.testing.assert_allclose(resample_positions(4, 30.0, 45.0), [0, 2 / 3, 4 / 3, 2, 8 / 3])
    # 10 frames at 30 fps -> 3 fps: the last source frame 9 is exactly one output step (10 frames) short
    assert resample_positions(11, 30.0, 3.0).tolist() == [0.0, 10.0]
    assert resample_positions(3, 25.0, 10.0).tolist() == [0.0]
    nf = nearest_frames(4, 30.0, 45.0)
    assert nf.dtype == np.int64 and nf.tolist() == [0, 1, 1, 2, 3]
    assert nearest_frames(0, 30.0, 15.0).tolist() == []


def test_resample_is_linear_in_time_and_takes_the_present_neighbour_at_a_gap():
    x = np.array([[0.0], [3.0], [np.nan], [9.0], [12.0]])
    got = resample(x, 30.0, 45.0)  # positions 0, 2/3, 4/3, 2, 8/3, 10/3, 4 (T' = 7)
    assert got.shape == (7, 1)
    assert got[0, 0] == 0.0 and got[-1, 0] == 12.0
    assert got[1, 0] == pytest.approx(2.0)
    assert got[2, 0] == 3.0  # 4/3 lies between 3 and NaN, nearer 3
    assert np.isnan(got[3, 0])  # the missing frame itself
    assert got[4, 0] == 9.0  # 8/3: nearer 9
    assert got[5, 0] == pytest.approx(10.0)
    tie = resample(np.array([[1.0], [np.nan], [5.0]]), 30.0, 60.0)  # positions 0, .5, 1, 1.5, 2
    assert tie[:, 0].tolist()[:1] == [1.0] and tie[1, 0] == 1.0 and tie[3, 0] == 5.0
    same = resample(x, 30.0, 30.0)
    np.testing.assert_array_equal(same, x)
    assert same is not x
    assert resample(np.array([[1], [3]]), 30.0, 60.0).dtype == np.float64


def test_to_cm_takes_a_scale_below_one_pixel_per_cm():
    np.testing.assert_array_equal(to_cm(np.array([[[[1.0, 2.0]]]]), 0.5), [[[[2.0, 4.0]]]])


def test_interpolation_fills_a_gap_at_the_second_frame_but_never_a_leading_edge():
    x = np.array([[0.0, np.nan], [np.nan, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 9.0]])
    got = interpolate_gaps(x, 2)
    assert got[1, 0] == 1.0  # a run starting on frame 1 is interior
    assert np.isnan(got[0, 1])  # a run starting on frame 0 is an edge, even when the last frame is present
    T3 = interpolate_gaps(np.array([[1.0], [np.nan], [5.0]]), 1)  # three frames: one interior frame
    assert T3[:, 0].tolist() == [1.0, 3.0, 5.0]


def test_interpolation_of_a_non_contiguous_input_fills_the_returned_array():
    base = np.array([[0.0, 1.0, np.nan, 3.0, 4.0], [10.0, np.nan, np.nan, 40.0, 50.0]])
    got = interpolate_gaps(base.T, 2)  # (T=5, C=2), Fortran-ordered view
    np.testing.assert_allclose(got, [[0, 10], [1, 20], [2, 30], [3, 40], [4, 50]])


def test_moving_average_sums_in_float64_on_a_long_float32_track():
    x = np.full((200_000, 1), 1e4, np.float32)
    x[::2] += 1.0  # mean of any 4 consecutive frames: 1e4 + 0.5
    got = moving_average(x, 4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[2:-2, 0], 1e4 + 0.5, rtol=0, atol=1e-3)


def test_time_derivative_keeps_float32():
    d = time_derivative(np.array([[0.0], [1.0], [3.0]], np.float32), 2.0)
    assert d.dtype == np.float32 and d[:, 0].tolist() == [2.0, 3.0, 4.0]


def test_a_single_frame_resamples_to_one_row():
    assert resample_positions(1, 30.0, 15.0).tolist() == [0.0]
    assert nearest_frames(1, 30.0, 60.0).tolist() == [0]


def test_interpolation_of_a_non_contiguous_3d_input_fills_the_returned_array():
    base = np.ones((2, 2, 5))
    base[1, 0, 2] = np.nan
    got = interpolate_gaps(base.T, 1)  # (T=5, 2, 2), not C-contiguous
    assert not np.isnan(got).any()


def test_resample_keeps_float32():
    assert resample(np.zeros((4, 2), np.float32), 30.0, 45.0).dtype == np.float32

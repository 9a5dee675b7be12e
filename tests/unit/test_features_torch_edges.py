"""features_torch edges found by mutation testing (scripts/mutation.sh features_torch): the context a
window needs (halo, gather length), per-window arena centres, integer pixels, dtypes kept (no silent
promotion, float16 frame numbers), short gap and smoothing windows, mice padded to n_mice, the
fallback parts, a point with one coordinate missing, the row count of very short videos, padding rows,
the pair mode's hook and messages. References are the numpy module (mabe.features) or values written
out by hand. docs/testing.md lists the mutants these kill and the survivors judged equivalent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

# every mabe name these tests use, in one place
from mabe import features as F
from mabe import features_torch as FT
from mabe.config import FeatureConfig
from mabe.schema import DEFAULT_SLOTS

SLOTS = list(DEFAULT_SLOTS)
N_SLOTS = len(SLOTS)


def _walk(T=60, M=2, S=N_SLOTS, seed=0, missing=0.05) -> np.ndarray:
    """(T, M, S, 2) float64 cm: random-walking mice with distinct parts and scattered missing points."""
    rng = np.random.default_rng(seed)
    xy = np.cumsum(rng.normal(0, 0.5, (T, M, 1, 2)), 0) + rng.normal(0, 3, (1, M, S, 2))
    xy[rng.random((T, M, S)) < missing] = np.nan
    return xy


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))[None]


# ----------------------------------------------------------------------------- context


@pytest.mark.parametrize(("max_gap", "smooth", "want"), [(10, 1, 12), (3, 5, 7), (0, 2, 3), (0, 0, 2), (4, 7, 9)])
def test_halo_is_the_gap_fill_plus_two_derivative_frames_plus_half_the_smoothing(max_gap, smooth, want):
    assert FT.halo(FeatureConfig(max_gap=max_gap, smooth_window=smooth)) == want


@pytest.mark.parametrize(("length", "ratio", "h", "want"), [(11, 2.0, 3, 20 + 2 + 6), (64, 1.0, 5, 63 + 2 + 10),
                                                          (64, 2.5, 0, 157 + 2), (1, 3.0, 2, 0 + 2 + 4)])
def test_the_gather_spans_the_rows_source_frames_one_neighbour_and_the_halo(length, ratio, h, want):
    # (length - 1) * ratio frames from the first row's to the last row's, the first itself, the next
    # neighbour for the interpolation, the halo each side; an exact integer span is not cut short
    assert FT.source_length(length, ratio, h) == want


def test_a_short_window_smoothed_over_5_frames_with_no_gap_fill_equals_the_whole_track():
    """max_gap 0: the halo is the derivatives' 2 frames plus the smoothing's 2."""
    fcfg = FeatureConfig(n_mice=2, max_gap=0, smooth_window=5)
    xy = _walk(T=80, missing=0.0)
    whole = F.scene_from_cm(xy, 30.0, 5)
    store = torch.from_numpy(xy)
    out, valid = FT.window_features(store, torch.tensor([0, 80]), torch.tensor([0, 0]), torch.tensor([20, 50]), 16,
                                    torch.tensor([30.0], dtype=torch.float64), fcfg, SLOTS, mode="scene",
                                    dtype=torch.float64)
    assert valid.all()
    for b, s in enumerate((20, 50)):
        np.testing.assert_allclose(out[b].numpy(), whole[s : s + 16], rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- units, dtypes


def test_per_window_arena_centres_are_subtracted_window_by_window():
    px = np.random.default_rng(1).uniform(0, 600, (3, 5, 2, 4, 2))
    centres = np.array([[320.0, 240.0], [100.0, 50.0], [0.0, 600.0]])
    got = FT.to_cm(torch.from_numpy(px), 11.5, torch.from_numpy(centres))
    for b in range(3):
        np.testing.assert_allclose(got[b].numpy(), F.to_cm(px[b], 11.5, centres[b]), rtol=1e-12)
    one = FT.to_cm(torch.from_numpy(px).float(), 11.5, np.array([320.0, 240.0]))  # one centre for all
    assert one.dtype == torch.float32  # a float64 centre does not promote float32 pixels
    np.testing.assert_allclose(one.numpy(), F.to_cm(px, 11.5, (320.0, 240.0)), rtol=1e-5)


def test_integer_pixels_are_converted_in_float64():
    px = torch.tensor([[[[[12345, 6789]]]]], dtype=torch.int32)  # (1, 1, 1, 1, 2)
    got = FT.to_cm(px, 3.0, (1.0, 2.0))
    assert got.dtype == torch.float64
    assert got.flatten().tolist() == pytest.approx([(12345 - 1.0) / 3.0, (6789 - 2.0) / 3.0], rel=1e-12)


def test_per_window_fps_keeps_the_positions_dtype():
    x = torch.from_numpy(_walk(T=20, missing=0.0)).float()[None].expand(2, -1, -1, -1, -1)
    fps = torch.tensor([30.0, 25.0], dtype=torch.float64)
    v = FT.time_derivative(x, fps)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v[1], FT.time_derivative(x[1:], 25.0)[0])


def test_speed_and_acceleration_equal_the_numpy_reference():
    xy = _walk()
    np.testing.assert_allclose(FT.speed(_t(xy), 30.0)[0].numpy(), F.speed(xy, 30.0), rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(FT.acceleration(_t(xy), 30.0)[0].numpy(), F.acceleration(xy, 30.0), rtol=1e-10,
                               equal_nan=True)


def test_float16_gap_fill_keeps_float16_and_exact_frame_numbers_past_2048():
    T = 2200
    x = torch.zeros((1, T, 1), dtype=torch.float16)
    x[0, 2103:] = 100.0
    x[0, 2100:2103] = math.nan  # a 3-frame gap past 2048, where float16 frame numbers step by 2
    got = FT.interpolate_gaps(x, 5)
    assert got.dtype == torch.float16
    assert got[0, 2100:2103, 0].tolist() == [25.0, 50.0, 75.0]  # frames 2099 (0) .. 2103 (100), linear


def test_pad_mice_keeps_float16():
    assert FT.pad_mice(torch.zeros(1, 3, 1, 2, 2, dtype=torch.float16), 4).dtype == torch.float16


def test_gather_positions_gives_the_dtype_asked_for():
    store = torch.zeros(10, 1, 2, 2, dtype=torch.float32)
    a = FT.gather_positions(store, torch.tensor([0, 10]), torch.tensor([0]), torch.tensor([0]), 4, torch.float64)
    assert a.dtype == torch.float64
    codes = torch.full((10, 1, 2, 2), 5, dtype=torch.int16)
    q = torch.tensor([0.5], dtype=torch.float64)
    b = FT.gather_positions(codes, torch.tensor([0, 10]), torch.tensor([0]), torch.tensor([0]), 4, torch.float32, q)
    assert b.dtype == torch.float32 and (b == 2.5).all()
    with pytest.raises(ValueError, match=r"^an integer position store needs its per-video quantum$"):
        FT.gather_positions(codes, torch.tensor([0, 10]), torch.tensor([0]), torch.tensor([0]), 4)


def test_window_features_of_a_float64_store_are_computed_in_the_dtype_asked_for():
    xy = torch.from_numpy(_walk(T=40))
    out, _ = FT.window_features(xy, torch.tensor([0, 40]), torch.tensor([0]), torch.tensor([5]), 10,
                                torch.tensor([30.0], dtype=torch.float64), FeatureConfig(n_mice=2), SLOTS,
                                mode="scene", dtype=torch.float32)
    assert out.dtype == torch.float32


# ----------------------------------------------------------------------------- gaps, smoothing, short tracks


def test_a_one_frame_gap_is_filled_with_max_gap_1_and_in_a_three_frame_track():
    x = np.array([[1.0], [np.nan], [5.0]])
    assert FT.interpolate_gaps(torch.from_numpy(x)[None], 1)[0].flatten().tolist() == [1.0, 3.0, 5.0]
    xy = _walk(T=30, missing=0.2)
    np.testing.assert_allclose(FT.interpolate_gaps(_t(xy), 1)[0].numpy(), F.interpolate_gaps(xy, 1), equal_nan=True)


def test_a_smoothing_window_of_2_smooths_and_an_empty_track_passes():
    xy = _walk(missing=0.1)
    np.testing.assert_allclose(FT.moving_average(_t(xy), 2)[0].numpy(), F.moving_average(xy, 2), equal_nan=True,
                               rtol=1e-10)
    assert FT.moving_average(torch.zeros(1, 0, 2, 3, 2), 5).shape == (1, 0, 2, 3, 2)
    np.testing.assert_allclose(FT.scene_from_cm(_t(xy), 30.0, 2)[0].numpy(), F.scene_from_cm(xy, 30.0, 2),
                               equal_nan=True, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(FT.pair_features(_t(xy), 30.0, [0], [1], SLOTS, 2)[0].numpy(),
                               F.pair_features(xy, 30.0, 0, 1, SLOTS, 2), equal_nan=True, rtol=1e-4, atol=1e-3)


def test_the_defaults_do_not_smooth_as_numpy_s():
    xy = _walk(missing=0.1)
    np.testing.assert_allclose(FT.scene_from_cm(_t(xy), 30.0)[0].numpy(), F.scene_from_cm(xy, 30.0), equal_nan=True,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(FT.pair_features(_t(xy), 30.0, [1], [0], SLOTS)[0].numpy(),
                               F.pair_features(xy, 30.0, 1, 0, SLOTS), equal_nan=True, rtol=1e-4, atol=1e-3)
    sub = _t(xy[:, [1, 0]])
    np.testing.assert_allclose(FT.pair_features_of(sub, 30.0, torch.tensor([False]), SLOTS)[0].numpy(),
                               F.pair_features(xy, 30.0, 1, 0, SLOTS), equal_nan=True, rtol=1e-4, atol=1e-3)
    kin, ref = FT.mouse_kinematics(_t(xy), 30.0, SLOTS), F.mouse_kinematics(xy, 30.0, SLOTS)
    np.testing.assert_allclose(kin["speed"][0].numpy(), ref["speed"], equal_nan=True, rtol=1e-8)


def test_scene_features_without_arena_centre_keep_the_pixel_origin():
    px = _walk(T=30) * 10 + 300
    cfg = FeatureConfig(n_mice=2, arena_centre=False)
    got = FT.scene_features(_t(px), 30.0, 11.5, (320.0, 240.0), cfg)[0].numpy()
    np.testing.assert_allclose(got, F.scene_features(px, 30.0, 11.5, (320.0, 240.0), cfg), equal_nan=True, rtol=1e-5,
                               atol=1e-4)
    assert np.nanmin(got[:, : 2 * 2 * len(SLOTS)]) > 0  # not centred: every position is positive


def test_pad_mice_pads_missing_mice_with_nan_and_cuts_extra_ones():
    xy = torch.from_numpy(_walk(T=5, missing=0.0))[None]  # (1, 5, 2, S, 2)
    four = FT.pad_mice(xy, 4)
    assert four.shape == (1, 5, 4, len(SLOTS), 2)
    assert torch.equal(four[:, :, :2], xy) and torch.isnan(four[:, :, 2:]).all()
    assert torch.equal(FT.pad_mice(xy, 1), xy[:, :, :1])
    np.testing.assert_array_equal(four[0].numpy(), F.pad_mice(xy[0].numpy(), 4))


# ----------------------------------------------------------------------------- parts, missing points


@pytest.mark.parametrize("slots", [["headpiece", "ear_left", "ear_right", "spine_1", "spine_2"],
                                   ["neck", "headpiece", "spine_2", "tail_tip"]])
def test_headpiece_front_and_spine_2_back_fallbacks_equal_numpy(slots):
    xy = _walk(S=len(slots), missing=0.1)
    k, ref = FT.mouse_kinematics(_t(xy), 30.0, slots), F.mouse_kinematics(xy, 30.0, slots)
    for name in ("front", "back", "heading", "body_length"):
        np.testing.assert_allclose(k[name][0].numpy(), ref[name], equal_nan=True, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(FT.pair_features(_t(xy), 30.0, [0], [1], slots)[0].numpy(),
                               F.pair_features(xy, 30.0, 0, 1, slots), equal_nan=True, rtol=1e-4, atol=1e-3)


def test_a_point_with_one_coordinate_missing_is_a_missing_point():
    xy = _walk(missing=0.0)
    rng = np.random.default_rng(3)
    half = rng.random(xy.shape[:3]) < 0.15
    xy[..., 1][half] = np.nan  # y missing, x present
    xy[..., 0][rng.random(xy.shape[:3]) < 0.05] = np.nan  # x missing, y present
    np.testing.assert_allclose(FT.pair_features(_t(xy), 30.0, [0], [1], SLOTS)[0].numpy(),
                               F.pair_features(xy, 30.0, 0, 1, SLOTS), equal_nan=True, rtol=1e-4, atol=1e-3)


def test_slot_name_count_messages():
    xy = torch.zeros(1, 4, 2, len(SLOTS), 2)
    msg = rf"^3 slot names for {len(SLOTS)} keypoint slots$"
    with pytest.raises(ValueError, match=msg):
        FT.mouse_kinematics(xy, 30.0, SLOTS[:3])
    with pytest.raises(ValueError, match=msg):
        FT.pair_features(xy, 30.0, [0], [1], SLOTS[:3])
    with pytest.raises(ValueError, match=msg):
        FT.pair_features_of(xy, 30.0, torch.tensor([False]), SLOTS[:3])


# ----------------------------------------------------------------------------- rows, windows


def test_rows_after_resampling_of_empty_one_and_short_videos_match_numpy():
    n = torch.tensor([0, 1, 2, 10, 11])
    got = FT.n_resampled_rows(n, torch.full((5,), 2.5, dtype=torch.float64)).tolist()
    assert got == [len(F.resample_positions(int(k), 75.0, 30.0)) for k in n] == [0, 1, 1, 4, 5]


def test_pair_mode_needs_both_mice_and_the_position_hook_sees_them():
    store = torch.from_numpy(_walk(T=40, M=4))
    args = (store, torch.tensor([0, 40]), torch.tensor([0, 0]), torch.tensor([0, 10]), 8,
            torch.tensor([30.0], dtype=torch.float64), FeatureConfig(), SLOTS)
    for kw in ({"agent": torch.tensor([0, 1])}, {"target": torch.tensor([0, 1])}, {}):
        with pytest.raises(ValueError, match=r"^pair mode needs agent and target mouse slots$"):
            FT.window_features(*args, mode="pair", **kw)
    seen = []

    def hook(xy, mice):
        seen.append(mice)
        return xy

    FT.window_features(*args, mode="pair", agent=torch.tensor([3, 1]), target=torch.tensor([0, 1]), positions=hook)
    assert seen[0].tolist() == [[3, 0], [1, 1]]

"""windows.py edge cases found by mutation testing (scripts/mutation.sh windows; docs/testing.md).

Each test names the behaviour it pins: rarity weights against the formula written out window by
window, the fields and defaults a TrackSet is built with, the window dataset's plan, epoch plans with weights, the messages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mabe.data import ACTION_INDEX, ACTIONS
from mabe.windows import (
    IGNORE_INDEX,
    TrackSet,
    WindowDataset,
    epoch_plan,
    gather,
    nearest_rows,
    norm_stats,
    rows_to_video_frames,
    scene_labels,
    window_index,
    window_weights,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- window_weights


def rarity_weights_by_hand(ts: TrackSet, windows: np.ndarray, length: int, power: float) -> np.ndarray:
    """The docstring's formula, one window at a time (no prefix sums, no grouping by track)."""
    present = np.zeros((len(windows), ts.n_outputs), bool)
    for i, (t, s) in enumerate(windows):
        lo, hi = ts.offsets[t], ts.offsets[t + 1]
        y = ts.Y[lo + s : min(lo + s + length, hi)]
        for c in range(ts.n_outputs):
            if ts.mode == "scene":
                present[i, c] = c > 0 and bool((y == c).any())
            else:
                present[i, c] = bool(ts.label_mask[t, c]) and bool(y[:, c].any())
    freq = present.mean(0)
    w = np.ones(len(windows))
    for i in range(len(windows)):
        for c in np.flatnonzero(present[i]):
            w[i] = max(w[i], (1.0 / freq[c]) ** power)
    return w / w.sum()


def _pair_set() -> TrackSet:
    # track 1 is shorter than the window (its one window is padded), track 2 has a positive where
    # its label mask is off; column 2 has single positive frames (a window holding exactly one)
    L = (40, 6, 30)
    ys = [np.zeros((n, 3), np.uint8) for n in L]
    ys[0][5:15, 0] = 1
    ys[0][33, 2] = 1
    ys[1][2, 1] = 1
    ys[2][:, 0] = 1  # masked off below: never counts
    ys[2][20, 1] = 1
    xs = [np.zeros((n, 1), np.float32) for n in L]
    mask = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1]], bool)
    return TrackSet.from_tracks("pair", ["a", "b", "c"], xs, ys, mask)


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_pair_rarity_weights_follow_the_formula_window_by_window(power):
    ts = _pair_set()
    windows = window_index(ts.lengths, 10, 4)
    np.testing.assert_allclose(window_weights(ts, windows, 10, power),
                               rarity_weights_by_hand(ts, windows, 10, power), rtol=1e-12)


@pytest.mark.parametrize("power", [0.5, 2.0])
def test_scene_rarity_weights_ignore_the_none_class_and_follow_the_formula(power):
    L = (35, 7, 24)
    ys = [np.zeros(n, np.int64) for n in L]
    ys[0][3:9] = 1
    ys[0][20] = 2  # one frame of the rarest class
    ys[1][1:3] = 1  # a padded window in a later track
    ys[2][10:20] = 1
    xs = [np.zeros((n, 1), np.float32) for n in L]
    ts = TrackSet.from_tracks("scene", ["none", "x", "y"], xs, ys)
    windows = window_index(ts.lengths, 10, 3)
    got = window_weights(ts, windows, 10, power)
    np.testing.assert_allclose(got, rarity_weights_by_hand(ts, windows, 10, power), rtol=1e-12)
    # "none" fills most windows but is never rare: a window with only none frames has the lowest weight
    only_none = np.array([not (ts.Y[ts.offsets[t] + s : ts.offsets[t] + s + 10] > 0).any() for t, s in windows])
    assert only_none.any() and np.allclose(got[only_none], got.min())


def test_an_output_never_positive_leaves_the_weights_finite_at_any_power():
    ts = _pair_set()  # track 0 and 1: column 0 positive; nothing anywhere is masked in and never positive
    ts.Y[:, 2] = 0  # column 2 now has no positive frame at all
    windows = window_index(ts.lengths, 10, 4)
    p = window_weights(ts, windows, 10, 40.0)  # (1 / 1e-12) ** 40 would overflow to inf
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, rarity_weights_by_hand(ts, windows, 10, 40.0), rtol=1e-9)


# ----------------------------------------------------------------------------- TrackSet.from_tracks


def test_from_tracks_fills_the_documented_defaults_and_dtypes():
    xs = [np.ones((3, 2), np.float64), np.ones((2, 2), np.float64)]
    ys = [np.ones((3, 1), np.int64), np.zeros((2, 1), np.int64)]
    ts = TrackSet.from_tracks("pair", ("sniff",), xs, ys)
    assert ts.mode == "pair" and ts.names == ["sniff"] and isinstance(ts.names, list)
    assert ts.offsets.tolist() == [0, 3, 5] and ts.offsets.dtype == np.int64
    assert ts.X.dtype == np.float32 and ts.Y.dtype == np.uint8
    assert ts.label_mask.dtype == bool and ts.label_mask.tolist() == [[True], [True]]
    assert ts.lab_id.tolist() == ["lab", "lab"] and ts.lab_id.dtype == object
    assert ts.video_id.tolist() == [0, 1] and ts.video_id.dtype == np.int64
    assert ts.agent_id.tolist() == [-1, -1] and ts.agent_id.dtype == np.int8
    assert ts.target_id.tolist() == [-1, -1] and ts.target_id.dtype == np.int8
    assert ts.fps.tolist() == [30.0, 30.0] and ts.fps.dtype == np.float64


def test_from_tracks_keeps_given_metadata_in_the_documented_dtypes():
    xs = [np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)]
    ys = [np.ones(3), np.zeros(2)]
    ts = TrackSet.from_tracks(
        "scene", ["none", "k"], xs, ys, np.array([[1, 0], [0, 1]]), lab_id=["A", "B"],
        video_id=np.array([7, 9], np.int32), agent_id=[1, 2], target_id=[2, 2], fps=np.array([25.0, 30.0], np.float32),
    )
    assert ts.mode == "scene" and ts.Y.dtype == np.int64
    assert ts.label_mask.dtype == bool and ts.label_mask.tolist() == [[True, False], [False, True]]
    assert ts.lab_id.tolist() == ["A", "B"] and ts.lab_id.dtype == object
    assert ts.video_id.tolist() == [7, 9] and ts.video_id.dtype == np.int64
    assert ts.agent_id.tolist() == [1, 2] and ts.agent_id.dtype == np.int8
    assert ts.target_id.tolist() == [2, 2] and ts.target_id.dtype == np.int8
    assert ts.fps.tolist() == [25.0, 30.0] and ts.fps.dtype == np.float64


def test_from_tracks_needs_one_label_array_per_feature_array():
    x = np.zeros((2, 1), np.float32)
    y = np.zeros((2, 1), np.uint8)
    with pytest.raises(ValueError, match=r"^need as many label arrays as feature arrays \(>0\), got 2 and 1$"):
        TrackSet.from_tracks("pair", ["a"], [x, x], [y])
    with pytest.raises(ValueError, match=r"got 0 and 0$"):
        TrackSet.from_tracks("pair", ["a"], [], [])


def test_tensors_go_to_the_requested_device_and_feature_dtype():
    ts = _pair_set()
    t = ts.tensors(device="meta", dtype=torch.float16)
    assert {k: v.device.type for k, v in t.items()} == {k: "meta" for k in ("X", "Y", "offsets", "label_mask")}
    assert t["X"].dtype == torch.float16 and t["Y"].dtype == torch.uint8 and t["offsets"].dtype == torch.int64


# ----------------------------------------------------------------------------- norm, labels, index


def test_norm_stats_accumulate_in_float64_so_a_large_offset_keeps_the_spread():
    rng = np.random.default_rng(0)
    X = (1e4 + rng.normal(size=(4096, 2))).astype(np.float32)  # float32 sums of x*x lose the unit spread
    stats = norm_stats(X)
    np.testing.assert_allclose(stats["std"], X.astype(np.float64).std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["mean"], X.astype(np.float64).mean(0), rtol=1e-6)


def test_norm_stats_of_a_column_with_one_finite_value_and_one_with_none():
    X = np.full((5, 2), np.nan, np.float32)
    X[3, 0] = 4.5
    stats = norm_stats(X)
    assert stats["mean"].tolist() == [4.5, 0.0] and stats["std"].tolist() == [1.0, 1.0]


def test_scene_labels_of_a_video_without_pairs_are_all_none():
    y = scene_labels(np.zeros((0, 6, len(ACTIONS)), np.uint8), {"inv": ["sniff"]})
    assert y.tolist() == [0] * 6 and y.dtype == np.int64
    labels = np.zeros((1, 3, len(ACTIONS)), np.uint8)
    labels[0, 1, ACTION_INDEX["sniff"]] = 1
    assert scene_labels(labels, {"inv": ["sniff"]}).dtype == np.int64


def test_window_index_adds_no_extra_window_when_the_stride_divides_the_last_start():
    w = window_index(np.array([14, 8]), 8, 3)  # last starts 6 (= 2 strides) and 0
    assert w.tolist() == [[0, 0], [0, 3], [0, 6], [1, 0]]


# ----------------------------------------------------------------------------- resampled rows


def test_a_resampled_track_of_one_row_spreads_over_its_video_with_integer_offsets():
    assert nearest_rows(np.array([4]), 3).tolist() == [0, 0, 0]
    ts = TrackSet.from_tracks("pair", ["a"], [np.zeros((1, 1)), np.zeros((2, 1))],
                              [np.zeros((1, 1)), np.zeros((2, 1))], fps=[1.0, 30.0])
    ts.to_video = [(np.array([4]), 3, 30.0), None]
    out, offsets, fps = rows_to_video_frames(ts, np.array([[7.0], [8.0], [9.0]]))
    assert out[:, 0].tolist() == [7.0, 7.0, 7.0, 8.0, 9.0]
    assert offsets.tolist() == [0, 3, 5] and offsets.dtype == np.int64
    assert fps.tolist() == [30.0, 30.0] and ts.fps.tolist() == [1.0, 30.0]  # ts itself untouched


# ----------------------------------------------------------------------------- WindowDataset


def test_window_dataset_is_empty_until_planned_and_a_plan_without_shift_does_not_move_windows():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(L, 2)).astype(np.float32) for L in (4, 12)]
    ys = [rng.integers(0, 3, L) for L in (4, 12)]
    ts = TrackSet.from_tracks("scene", ["none", "a", "b"], xs, ys)
    ds = WindowDataset(ts, 6)
    assert len(ds) == 0
    windows = np.array([[0, 0], [1, 5], [1, 6]])
    ds.set_plan(windows)
    assert len(ds) == 3
    ref = gather(ts.arrays(), windows, 6, mode="scene")
    for i in range(3):
        item = ds[i]
        assert set(item) == {"x", "y", "valid"}  # scene batches carry no mask
        for k in item:
            np.testing.assert_array_equal(item[k].numpy(), ref[k][i])
    assert (ds[0]["y"][4:] == IGNORE_INDEX).all()


# ----------------------------------------------------------------------------- epoch_plan


def test_weighted_epoch_plan_draws_with_replacement_in_proportion_and_never_a_zero_weight():
    w = np.array([0.0, 0.5, 0.25, 0.25])
    order, shift = epoch_plan(4, 4000, epoch=0, seed=3, weights=w)
    assert order.dtype == np.int64 and len(order) == 4000
    counts = np.bincount(order, minlength=4)
    assert counts[0] == 0
    np.testing.assert_allclose(counts / 4000, w, atol=0.03)
    assert shift.tolist() == [0] * 4000  # jitter defaults to 0
    again, _ = epoch_plan(4, 4000, epoch=0, seed=3, weights=w)
    assert np.array_equal(order, again)


def test_jitter_one_shifts_by_minus_one_zero_or_one():
    _, shift = epoch_plan(10, 300, epoch=1, seed=0, jitter=1)
    assert set(shift.tolist()) == {-1, 0, 1}


# ----------------------------------------------------------------------------- loading: tests/unit/test_postracks.py


def test_validation_takes_at_most_all_but_one_video_of_a_lab():
    from mabe.windows import split_videos

    df = pd.DataFrame({"lab_id": ["A"] * 3 + ["B"] * 2, "video_id": [1, 2, 3, 4, 5]})
    train, val = split_videos(df, 1.0, seed=0)
    assert len(val) == 3 and len(train) == 2  # 2 of lab A's 3, 1 of lab B's 2
    assert {1, 2, 3} & set(train) and {4, 5} & set(train)

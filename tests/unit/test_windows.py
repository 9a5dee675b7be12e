"""windows.py: split, labels, normalisation, window index, gather (numpy == torch), sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mabe.data import ACTION_INDEX, ACTIONS
from mabe.errors import MabeError
from mabe.windows import (
    IGNORE_INDEX,
    TrackSet,
    WindowDataset,
    assign_folds,
    epoch_plan,
    gather,
    norm_stats,
    normalize_,
    run_split,
    scene_labels,
    split_videos,
    window_index,
    window_weights,
)

torch.set_num_threads(1)


def small_trackset(rng: np.random.Generator, lengths=(5, 12, 30), F: int = 3, C: int = 2) -> TrackSet:
    xs = [rng.normal(size=(L, F)).astype(np.float32) for L in lengths]
    ys = [(rng.random((L, C)) < 0.3).astype(np.uint8) for L in lengths]
    mask = rng.random((len(lengths), C)) < 0.7
    return TrackSet.from_tracks("pair", [f"a{i}" for i in range(C)], xs, ys, mask)


# ----------------------------------------------------------------------------- split


def test_split_by_video_stratified_and_seeded():
    df = pd.DataFrame({
        "lab_id": ["A"] * 10 + ["B"] * 2 + ["C"] * 1 + ["D"] * 5,
        "video_id": np.arange(18),
    })
    df = pd.concat([df, df])  # several tracks per video
    train, val = split_videos(df, 0.2, seed=1)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(range(18))
    lab_of = dict(zip(df.video_id, df.lab_id))
    val_labs = [lab_of[v] for v in val]
    assert val_labs.count("A") == 2 and val_labs.count("B") == 1 and val_labs.count("D") == 1
    assert "C" not in val_labs  # one video: stays in training
    t2, v2 = split_videos(df, 0.2, seed=1)
    assert np.array_equal(val, v2) and np.array_equal(train, t2)
    _, v3 = split_videos(df, 0.2, seed=2)
    assert not np.array_equal(val, v3)
    _, none = split_videos(df, 0.0, seed=1)
    assert len(none) == 0


def test_folds_are_by_video_stratified_by_lab_and_seeded():
    labs = np.array(["A"] * 7 + ["B"] * 5 + ["C"] * 2)
    vids = np.arange(100, 114)
    fold = assign_folds(labs, vids, 3, seed=1)
    assert set(fold.tolist()) == {0, 1, 2}
    for lab in "ABC":
        counts = np.bincount(fold[labs == lab], minlength=3)
        assert counts.max() - counts.min() <= 1  # every fold holds about 1/k of every lab
    # the small lab C does not land in fold 0 twice just because it is small
    assert len(set(fold[labs == "C"].tolist())) == 2
    np.testing.assert_array_equal(fold, assign_folds(labs[::-1], vids[::-1], 3, seed=1)[::-1])
    assert not np.array_equal(fold, assign_folds(labs, vids, 3, seed=2))
    with pytest.raises(ValueError):
        assign_folds(labs, vids, 1)


def test_run_split_k_fold_validates_on_its_fold_and_trains_on_the_rest():
    df = pd.DataFrame({"lab_id": ["A"] * 7 + ["B"] * 5, "video_id": np.arange(12)})
    df = pd.concat([df, df])  # several tracks per video
    vids = df.drop_duplicates("video_id")
    fold = assign_folds(vids["lab_id"].to_numpy(), vids["video_id"].to_numpy(), 3, 5)
    seen_val = []
    for k in range(3):
        train, val = run_split(df, 0.2, 5, folds=3, fold=k)
        np.testing.assert_array_equal(val, np.sort(vids["video_id"].to_numpy()[fold == k]))
        assert not set(train.tolist()) & set(val.tolist())  # a fold's model never trains on its videos
        assert set(train.tolist()) | set(val.tolist()) == set(range(12))
        seen_val += val.tolist()
    assert sorted(seen_val) == list(range(12))  # every video validated by exactly one fold
    np.testing.assert_array_equal(run_split(df, 0.2, 5)[1], split_videos(df, 0.2, 5)[1])  # folds 0: the old split
    with pytest.raises(MabeError, match="windows.fold"):
        run_split(df, 0.2, 5, folds=3, fold=3)


# ----------------------------------------------------------------------------- labels and loading


def test_scene_labels_later_class_wins():
    classes = {"inv": ["sniff"], "mount": ["mount"], "agg": ["attack"]}
    labels = np.zeros((2, 5, len(ACTIONS)), np.uint8)
    labels[0, 1, ACTION_INDEX["sniff"]] = 1
    labels[1, 2, ACTION_INDEX["sniff"]] = 1
    labels[0, 2, ACTION_INDEX["attack"]] = 1  # attack beats sniff on frame 2
    labels[1, 3, ACTION_INDEX["mount"]] = 1
    labels[0, 3, ACTION_INDEX["sniff"]] = 1  # mount beats sniff on frame 3
    assert scene_labels(labels, classes).tolist() == [0, 1, 3, 2, 0]


def test_normalisation_uses_nan_stats_and_zero_fills():
    X = np.array([[1.0, np.nan], [3.0, 2.0], [np.nan, 4.0], [5.0, 6.0]], np.float32)
    stats = norm_stats(X)
    np.testing.assert_allclose(stats["mean"], [3.0, 4.0])
    np.testing.assert_allclose(stats["std"], [np.std([1, 3, 5]), np.std([2, 4, 6])], rtol=1e-6)
    ts = TrackSet.from_tracks("pair", ["a"], [X], [np.zeros((4, 1))])
    normalize_(ts, stats)
    assert np.isfinite(ts.X).all()
    assert ts.X[0, 1] == 0 and ts.X[2, 0] == 0
    np.testing.assert_allclose(ts.X[1, 0], 0.0)
    np.testing.assert_allclose(ts.X[3, 0], 2 / np.std([1, 3, 5]), rtol=1e-6)


# ----------------------------------------------------------------------------- windows and gather


def test_window_index_covers_every_frame():
    lengths = np.array([5, 12, 30, 16])
    w = window_index(lengths, 8, 3)
    for t, L in enumerate(lengths):
        starts = w[w[:, 0] == t, 1]
        assert starts[0] == 0 and starts[-1] == max(L - 8, 0)
        assert (np.diff(starts) <= 3).all() and (np.diff(starts) > 0).all()
        covered = np.zeros(L, bool)
        for s in starts:
            covered[s : s + 8] = True
        assert covered.all()
    assert window_index(lengths, 8, 3, cover_end=False)[:, 1].max() <= 22


def test_gather_matches_manual_slicing_with_padding(rng):
    ts = small_trackset(rng)
    W = 8
    windows = np.array([[0, 0], [1, 4], [2, 22], [2, 25], [1, 0]])  # track 0 (5 frames) and [2, 25] pad
    b = gather(ts.arrays(), windows, W)
    for i, (t, s) in enumerate(windows):
        lo, hi = ts.offsets[t], ts.offsets[t + 1]
        n = min(W, hi - lo - s)
        np.testing.assert_array_equal(b["x"][i, :n], ts.X[lo + s : lo + s + n])
        np.testing.assert_array_equal(b["y"][i, :n], ts.Y[lo + s : lo + s + n])
        assert (b["x"][i, n:] == 0).all() and (b["y"][i, n:] == 0).all()
        assert b["valid"][i].tolist() == [True] * n + [False] * (W - n)
        assert (b["mask"][i, :n] == ts.label_mask[t]).all() and not b["mask"][i, n:].any()
    bt = gather(ts.tensors(), torch.from_numpy(windows), W)
    for k in b:
        np.testing.assert_array_equal(b[k], bt[k].numpy())


def test_gather_scene_marks_padding_ignored(rng):
    xs = [rng.normal(size=(L, 2)).astype(np.float32) for L in (4, 10)]
    ys = [rng.integers(0, 3, L) for L in (4, 10)]
    ts = TrackSet.from_tracks("scene", ["none", "a", "b"], xs, ys)
    b = gather(ts.arrays(), np.array([[0, 0], [1, 2]]), 6, mode="scene")
    assert b["y"].shape == (2, 6) and "mask" not in b
    assert (b["y"][0, 4:] == IGNORE_INDEX).all() and (b["y"][0, :4] == ys[0]).all()
    assert (b["y"][1] == ys[1][2:8]).all()


def test_jitter_stays_inside_the_track(rng):
    ts = small_trackset(rng, lengths=(5, 12, 30, 9))
    W = 8
    windows = window_index(ts.lengths, W, 1)
    for shift_size in (2, 40):
        shift = rng.integers(-shift_size, shift_size + 1, len(windows))
        for arrays, wv, sv in ((ts.arrays(), windows, shift),
                               (ts.tensors(), torch.from_numpy(windows), torch.from_numpy(shift))):
            b = gather(arrays, wv, W, sv)
            x = np.asarray(b["x"])
            for i, (t, s) in enumerate(windows):
                L = ts.lengths[t]
                start = int(np.clip(s + shift[i], 0, max(L - W, 0)))
                n = min(W, L - start)
                lo = ts.offsets[t]
                np.testing.assert_array_equal(x[i, :n], ts.X[lo + start : lo + start + n])


def test_window_dataset_gives_the_same_batch(rng):
    ts = small_trackset(rng)
    windows = window_index(ts.lengths, 8, 2)
    shift = rng.integers(-2, 3, len(windows))
    ds = WindowDataset(ts, 8)
    ds.set_plan(windows, shift)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    ref = gather(ts.arrays(), windows, 8, shift)
    for k in ref:
        np.testing.assert_array_equal(batch[k].numpy(), ref[k])


def test_epoch_plan_is_pure_and_oversampling_favours_rare(rng):
    o1, s1 = epoch_plan(50, 120, epoch=3, seed=7, jitter=2)
    o2, s2 = epoch_plan(50, 120, epoch=3, seed=7, jitter=2)
    assert np.array_equal(o1, o2) and np.array_equal(s1, s2)
    assert not np.array_equal(o1, epoch_plan(50, 120, epoch=4, seed=7, jitter=2)[0])
    assert sorted(o1[:50]) == list(range(50))  # uniform: whole permutations
    assert s1.min() >= -2 and s1.max() <= 2

    L = 200
    y = np.zeros((L, 2), np.uint8)
    y[:, 0] = (np.arange(L) // 10) % 2  # common
    y[150:155, 1] = 1  # rare
    ts = TrackSet.from_tracks("pair", ["common", "rare"], [rng.normal(size=(L, 2))], [y])
    windows = window_index(ts.lengths, 10, 5)
    assert window_weights(ts, windows, 10, 0.0) is None
    p = window_weights(ts, windows, 10, 1.0)
    assert p.sum() == pytest.approx(1.0)
    rare = (windows[:, 1] > 140) & (windows[:, 1] < 155)
    assert p[rare].min() > 2 * p[~rare].max()


def test_window_weights_do_not_depend_on_window_order(rng):
    ts = small_trackset(rng, lengths=(40, 25, 60), C=3)
    windows = window_index(ts.lengths, 10, 3)
    p = window_weights(ts, windows, 10, 0.5)
    perm = rng.permutation(len(windows))
    q = window_weights(ts, windows[perm], 10, 0.5)
    np.testing.assert_allclose(q, p[perm])


def test_resampled_tracks_map_back_to_every_video_frame():
    """A cache resampled to another fps: predictions come back on the video's own frames, nearest row."""
    from mabe.windows import nearest_rows, rows_to_video_frames

    # 10 video frames at 30 fps resampled to 15 fps: rows sit on frames 0, 2, 4, 6, 8.
    frames = np.array([0, 2, 4, 6, 8])
    assert nearest_rows(frames, 10).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert nearest_rows(np.array([0, 3]), 5).tolist() == [0, 0, 1, 1, 1]
    assert nearest_rows(np.array([0]), 3).tolist() == [0, 0, 0]

    xs = [np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32)]
    ys = [np.zeros((5, 1), np.uint8), np.zeros((3, 1), np.uint8)]
    ts = TrackSet.from_tracks("pair", ["sniff"], xs, ys, fps=[15.0, 30.0])
    ts.to_video = [(frames, 10, 30.0), None]  # the second track was not resampled
    rows = np.arange(8, dtype=np.float32)[:, None]  # row r carries the value r
    out, offsets, fps = rows_to_video_frames(ts, rows)
    assert offsets.tolist() == [0, 10, 13]
    assert out[:10, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert out[10:, 0].tolist() == [5, 6, 7]
    assert fps.tolist() == [30.0, 30.0]
    # Not resampled at all: the arrays pass through untouched.
    ts.to_video = None
    same, offsets2, _ = rows_to_video_frames(ts, rows)
    assert same is rows and offsets2 is ts.offsets

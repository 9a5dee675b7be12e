"""Probabilities -> intervals (smoothing, decisions, gaps, min length), threshold fitting, and the
predictions file (save / load / validate / average)."""

from __future__ import annotations

import numpy as np
import pytest

from mabe import postprocess as pp
from mabe import predictions
from mabe.config import PostprocessConfig
from mabe.errors import MabeDataError

# ----------------------------------------------------------------------------- smoothing


def slow_smooth(x: np.ndarray, window: int) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    for t in range(len(x)):
        lo, hi = max(0, t - (window - 1) // 2), min(len(x), t + window // 2 + 1)
        out[t] = x[lo:hi].mean(axis=0)
    return out


def test_smooth_hand_computed_and_edges():
    x = np.array([0, 0, 3, 0, 0], dtype=np.float32)[:, None]
    np.testing.assert_allclose(pp.smooth(x, 3)[:, 0], [0, 1, 1, 1, 0])
    # at the ends only the frames that exist are averaged
    np.testing.assert_allclose(pp.smooth(np.array([[3.0], [0.0], [0.0]]), 3)[:, 0], [1.5, 1.0, 0.0])
    # a constant stays constant, window 1 is the identity (a float32 copy)
    c = np.full((7, 2), 0.25, dtype=np.float16)
    np.testing.assert_allclose(pp.smooth(c, 5), 0.25)
    y = np.random.default_rng(0).random((9, 3)).astype(np.float32)
    s1 = pp.smooth(y, 1)
    assert s1.dtype == np.float32 and np.array_equal(s1, y) and s1 is not y


@pytest.mark.parametrize("window", [2, 3, 4, 5, 8, 50])
def test_smooth_matches_slow_loop(window):
    x = np.random.default_rng(window).random((23, 3)).astype(np.float32)
    out = pp.smooth(x, window)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, slow_smooth(x, window), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- decisions


def test_decide_thresholds_never_and_ties():
    p = np.array([
        [0.9, 0.8, 0.1],   # both over: the larger wins
        [0.4, 0.3, 0.2],   # none over its threshold
        [0.6, 0.7, 0.99],  # column 2 never predicts (None)
        [0.5, 0.65, 0.0],  # 0.5 is not > 0.5; 0.65 > 0.6
        [0.7, 0.7, 0.0],   # tie: first column
    ], dtype=np.float32)
    got = pp.decide(p, [0.5, 0.6, None])
    np.testing.assert_array_equal(got, [0, -1, 1, 1, 0])
    np.testing.assert_array_equal(pp.decide(p, [np.inf, np.inf, np.inf]), [-1] * 5)
    # a low threshold lets a less probable action win over one below its own (high) threshold
    np.testing.assert_array_equal(pp.decide(np.array([[0.9, 0.2]]), [0.95, 0.1]), [1])
    assert pp.decide(np.zeros((0, 3)), [0.5] * 3).shape == (0,)
    with pytest.raises(ValueError):
        pp.decide(p, [0.5, 0.5])


# ----------------------------------------------------------------------------- intervals


def slow_intervals(a, min_length, max_gap):
    a = list(a)
    n = len(a)
    # fill gaps of -1 of length <= max_gap between equal actions
    i = 0
    while i < n:
        if a[i] == -1:
            j = i
            while j < n and a[j] == -1:
                j += 1
            if i > 0 and j < n and a[i - 1] == a[j] and a[j] >= 0 and j - i <= max_gap:
                for k in range(i, j):
                    a[k] = a[j]
            i = j
        else:
            i += 1
    out = []
    i = 0
    while i < n:
        j = i
        while j < n and a[j] == a[i]:
            j += 1
        if a[i] >= 0 and j - i >= min_length:
            out.append((a[i], i, j))
        i = j
    return out


def as_tuples(res):
    return [tuple(int(v) for v in x) for x in zip(*res)]


def test_frames_to_intervals_hand_computed():
    _ = -1
    a = np.array([_, 0, 0, _, 0, 0, 0, _, _, _, 0, 1, 1, _, 1, 2, 2])
    #             0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16
    assert as_tuples(pp.frames_to_intervals(a, 1, 0)) == [
        (0, 1, 3), (0, 4, 7), (0, 10, 11), (1, 11, 13), (1, 14, 15), (2, 15, 17)]
    # max_gap 1: the 1-frame gaps 3 and 13 are filled; the 3-frame gap 7..9 is not
    assert as_tuples(pp.frames_to_intervals(a, 1, 1)) == [(0, 1, 7), (0, 10, 11), (1, 11, 15), (2, 15, 17)]
    # max_gap 3 fills 7..9 too; then min_length 3 drops the 2-frame run of action 2
    assert as_tuples(pp.frames_to_intervals(a, 3, 3)) == [(0, 1, 11), (1, 11, 15)]
    # a gap between two different actions is never filled; nor one at either end
    b = np.array([_, _, 0, 0, _, 1, 1, _, _])
    assert as_tuples(pp.frames_to_intervals(b, 1, 5)) == [(0, 2, 4), (1, 5, 7)]
    # min length applies after gap filling: two 2-frame runs joined by a gap make one of 5
    c = np.array([3, 3, _, 3, 3])
    assert as_tuples(pp.frames_to_intervals(c, 5, 1)) == [(3, 0, 5)]
    assert as_tuples(pp.frames_to_intervals(c, 5, 0)) == []
    assert as_tuples(pp.frames_to_intervals(np.array([], dtype=int), 1, 2)) == []
    assert as_tuples(pp.frames_to_intervals(np.array([_, _]), 1, 2)) == []


def test_frames_to_intervals_random_against_loop():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(0, 40))
        a = rng.choice([-1, -1, -1, 0, 1, 2], size=n)
        ml, mg = int(rng.integers(1, 5)), int(rng.integers(0, 4))
        assert as_tuples(pp.frames_to_intervals(a, ml, mg)) == slow_intervals(a, ml, mg)


# ----------------------------------------------------------------------------- predictions -> intervals


def make_preds(tracks, actions=("attack", "rear", "sniff"), labels=None):
    """tracks: list of (lab, video, agent, target, probs (T, A), labeled (A,))."""
    probs = np.concatenate([t[4] for t in tracks]).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum([len(t[4]) for t in tracks])])
    lab = np.array([t[0] for t in tracks])
    return predictions.Predictions(
        probs=probs, offsets=offsets.astype(np.int64),
        video_id=np.array([t[1] for t in tracks], dtype=np.int64), lab_id=lab,
        agent_id=np.array([t[2] for t in tracks], dtype=np.int8),
        target_id=np.array([t[3] for t in tracks], dtype=np.int8),
        actions=np.array(actions), labeled=np.array([t[5] for t in tracks], dtype=bool),
        fps=np.full(len(tracks), 30.0), labels=None if labels is None else np.concatenate(labels).astype(np.uint8),
    )


def test_predictions_to_intervals_respects_labeled_mask_and_thresholds():
    T = 12
    p1 = np.zeros((T, 3))
    p1[2:6, 0] = 0.9     # attack, labelled
    p1[6:10, 2] = 0.7    # sniff, labelled
    p1[:, 1] = 0.95      # rear, not labelled for this pair: never predicted
    p2 = np.zeros((T, 3))
    p2[0:4, 1] = 0.6     # self track: rear
    preds = make_preds([("L", 7, 1, 2, p1, [1, 0, 1]), ("L", 7, 1, 1, p2, [0, 1, 0])])
    cfg = PostprocessConfig(smooth_window=1, threshold=0.5, min_length=1, max_gap=0)
    iv = pp.predictions_to_intervals(preds, cfg, {})
    assert list(iv.columns) == list(pp.INTERVAL_COLUMNS)
    rows = [tuple(r) for r in iv.itertuples(index=False)]
    assert rows == [(7, 1, 2, "attack", 2, 6), (7, 1, 2, "sniff", 6, 10), (7, 1, 1, "rear", 0, 4)]
    # a fitted threshold above the probability, and "never"
    iv = pp.predictions_to_intervals(preds, cfg, {("L", "sniff"): 0.8, ("L", "rear"): None})
    assert [tuple(r) for r in iv.itertuples(index=False)] == [(7, 1, 2, "attack", 2, 6)]
    # thresholds of another lab do not apply
    iv = pp.predictions_to_intervals(preds, cfg, {("Other", "attack"): None})
    assert len(iv) == 3
    # min length drops the short ones; nothing predicted -> an empty frame with the columns
    cfg5 = PostprocessConfig(smooth_window=1, threshold=0.5, min_length=5, max_gap=0)
    empty = pp.predictions_to_intervals(preds, cfg5, {})
    assert len(empty) == 0 and list(empty.columns) == list(pp.INTERVAL_COLUMNS)


# ----------------------------------------------------------------------------- threshold fitting


def brute_force_f1(p, y, thr):
    pred = p > thr
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_fit_thresholds_separable_never_and_brute_force():
    rng = np.random.default_rng(0)
    tracks, labels = [], []
    for v in range(4):
        T = 200
        y = np.zeros((T, 3), dtype=np.uint8)
        y[50:120, 2] = 1                          # sniff: separable
        p = np.zeros((T, 3))
        p[:, 2] = np.where(y[:, 2] == 1, rng.uniform(0.6, 0.9, T), rng.uniform(0.0, 0.4, T))
        p[:, 0] = rng.uniform(0, 1, T)            # attack: allowed, never happens in lab A
        p[:, 1] = rng.uniform(0, 1, T)            # rear: not allowed anywhere in lab A
        tracks.append(("A", v, 1, 2, p, [1, 0, 1]))
        labels.append(y)
    # lab B: rear happens, noisy probabilities
    T = 300
    y = np.zeros((T, 3), dtype=np.uint8)
    y[100:200, 1] = 1
    p = np.zeros((T, 3))
    p[:, 1] = np.clip(y[:, 1] * 0.5 + rng.uniform(0, 0.6, T), 0, 1)
    tracks.append(("B", 9, 1, 1, p, [0, 1, 0]))
    labels.append(y)
    preds = make_preds(tracks, labels=labels)
    cfg = PostprocessConfig(smooth_window=1)
    grid = np.linspace(0.05, 0.95, 19)
    thr = pp.fit_thresholds(preds, cfg, grid)
    assert set(thr) == {("A", "attack"), ("A", "sniff"), ("B", "rear")}
    assert thr[("A", "attack")] is None                       # predicting it could only add an F1 of 0
    assert 0.4 - 1e-9 <= thr[("A", "sniff")] < 0.6             # the lowest grid value in the class gap
    # the chosen threshold is the best of the grid (lowest among equals), by brute force
    pB, yB = p[:, 1].astype(np.float16).astype(np.float32), y[:, 1] > 0
    f1s = [brute_force_f1(pB, yB, g) for g in grid]
    assert thr[("B", "rear")] == pytest.approx(grid[int(np.argmax(f1s))])
    # fit_thresholds_f1: the same thresholds, and the F1 they reach (None where nothing is scored)
    thr2, f1 = pp.fit_thresholds_f1(preds, cfg, grid)
    assert thr2 == thr
    assert f1[("A", "attack")] is None and f1[("A", "sniff")] == pytest.approx(1.0)
    assert f1[("B", "rear")] == pytest.approx(max(f1s))
    # fitted thresholds reproduce a perfect score on the separable action
    iv = pp.predictions_to_intervals(preds, PostprocessConfig(smooth_window=1, min_length=1, max_gap=0), thr)
    sniff = iv[iv.action == "sniff"]
    assert sorted(zip(sniff.video_id, sniff.start_frame, sniff.stop_frame)) == [(v, 50, 120) for v in range(4)]
    assert not (iv.action == "attack").any()


def test_fit_thresholds_uses_smoothing_and_needs_labels():
    y = np.zeros((40, 3), dtype=np.uint8)
    y[10:30, 0] = 1
    p = np.zeros((40, 3))
    p[10:30, 0] = 0.8
    p[10:30:2, 0] = 0.0   # flickers: raw frames at 0 inside the positive stretch
    preds = make_preds([("A", 1, 1, 2, p, [1, 0, 0])], labels=[y])
    raw = pp.fit_thresholds(preds, PostprocessConfig(smooth_window=1))
    smoothed = pp.fit_thresholds(preds, PostprocessConfig(smooth_window=3))
    assert raw[("A", "attack")] is not None and smoothed[("A", "attack")] is not None
    # after smoothing every positive frame is >= 0.8 * 1/3 and the best threshold can be higher
    grid = np.linspace(0.05, 0.95, 19)
    ps = pp.smooth(p[:, :1].astype(np.float16), 3)[:, 0]
    best = grid[int(np.argmax([brute_force_f1(ps, y[:, 0] > 0, g) for g in grid]))]
    assert smoothed[("A", "attack")] == pytest.approx(best)
    preds.labels = None
    with pytest.raises(MabeDataError, match="labels"):
        pp.fit_thresholds(preds)


def test_thresholds_json_round_trip_and_errors(tmp_path):
    thr = {("A", "sniff"): 0.35, ("A", "attack"): None, ("B", "rear"): 0.5}
    path = pp.save_thresholds(tmp_path / "t" / "thresholds.json", thr)
    assert pp.load_thresholds(path) == thr
    (tmp_path / "bad.json").write_text('{"A": {"sniff": "high"}}')
    with pytest.raises(MabeDataError, match="A.sniff"):
        pp.load_thresholds(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("[1, 2]")
    with pytest.raises(MabeDataError, match="bad2.json"):
        pp.load_thresholds(tmp_path / "bad2.json")
    with pytest.raises(MabeDataError, match="no such file"):
        pp.load_thresholds(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- predictions file


def random_preds(rng, n_tracks=3, n_actions=4, with_labels=True):
    lengths = rng.integers(5, 20, n_tracks)
    n = int(lengths.sum())
    return dict(
        probs=rng.random((n, n_actions)).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        video_id=rng.integers(1, 10**9, n_tracks),
        lab_id=np.array([f"lab{i % 2}" for i in range(n_tracks)]),
        agent_id=np.ones(n_tracks, dtype=np.int64),
        target_id=np.arange(1, n_tracks + 1),
        actions=np.array([f"act{i}" for i in range(n_actions)]),
        labeled=rng.random((n_tracks, n_actions)) < 0.7,
        fps=np.full(n_tracks, 30.0),
        labels=(rng.random((n, n_actions)) < 0.2).astype(np.uint8) if with_labels else None,
    )


def test_predictions_round_trip(tmp_path, rng):
    d = random_preds(rng)
    path = predictions.save(tmp_path / "p.npz", **d)
    p = predictions.load(path)
    assert p.probs.dtype == np.float16 and p.offsets.dtype == np.int64 and p.agent_id.dtype == np.int8
    assert p.target_id.dtype == np.int8 and p.labeled.dtype == bool and p.labels.dtype == np.uint8
    np.testing.assert_array_equal(p.probs, d["probs"].astype(np.float16))
    np.testing.assert_array_equal(p.video_id, d["video_id"])
    assert list(p.lab_id) == list(d["lab_id"]) and list(p.actions) == list(d["actions"])
    assert p.n_tracks == 3
    probs, labels = p.track(1)
    a, b = d["offsets"][1], d["offsets"][2]
    np.testing.assert_array_equal(probs, d["probs"][a:b].astype(np.float16))
    np.testing.assert_array_equal(labels, d["labels"][a:b])
    with pytest.raises(IndexError):
        p.track(3)
    with np.load(path, allow_pickle=False) as z:  # the binding layout, no pickle needed
        assert set(z.files) == {"probs", "offsets", "video_id", "lab_id", "agent_id", "target_id",
                                "actions", "labeled", "fps", "labels"}
    d2 = random_preds(rng, with_labels=False)
    p2 = predictions.load(predictions.save(tmp_path / "q.npz", **d2))
    assert p2.labels is None and p2.track(0)[1] is None


@pytest.mark.parametrize("key, value, match", [
    ("offsets", "last+1", "offsets"),
    ("video_id", "short", "video_id"),
    ("labeled", "transpose", "labeled"),
    ("labels", "short", "labels"),
    ("actions", "dup", "actions"),
    ("probs", "1d", "probs"),
])
def test_predictions_validation_names_the_file_and_key(tmp_path, rng, key, value, match):
    d = random_preds(rng)
    np.savez(tmp_path / "ok.npz", **{k: v for k, v in d.items() if v is not None})
    if value == "last+1":
        d[key] = d[key].copy()
        d[key][-1] += 1
    elif value == "short":
        d[key] = d[key][:-1]
    elif value == "transpose":
        d[key] = d[key].T
    elif value == "dup":
        d[key] = np.array(["a", "a", "b", "c"])
    elif value == "1d":
        d[key] = d[key][:, 0]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: v for k, v in d.items() if v is not None})
    with pytest.raises(MabeDataError) as err:
        predictions.load(bad)
    assert "bad.npz" in str(err.value) and match in str(err.value)
    predictions.load(tmp_path / "ok.npz")
    d = {k: v for k, v in random_preds(rng).items() if k != "fps"}
    np.savez(tmp_path / "nofps.npz", **d)
    with pytest.raises(MabeDataError, match="fps"):
        predictions.load(tmp_path / "nofps.npz")


def test_average_ensembles_and_checks_alignment(rng):
    d = random_preds(rng)
    p1 = predictions.validate(d)
    d2 = dict(d, probs=rng.random(d["probs"].shape).astype(np.float32))
    p2 = predictions.validate(d2)
    avg = predictions.average([p1, p2])
    expected = (p1.probs.astype(np.float32) + p2.probs.astype(np.float32)) / 2
    np.testing.assert_allclose(avg.probs.astype(np.float32), expected, atol=1e-3)
    assert avg.probs.dtype == np.float16 and avg.labels is not None
    w = predictions.average([p1, p2], weights=[3, 1])
    np.testing.assert_allclose(
        w.probs.astype(np.float32), (3 * p1.probs.astype(np.float32) + p2.probs.astype(np.float32)) / 4, atol=1e-3
    )
    other = predictions.validate(dict(d, actions=np.array(["act0", "act1", "act3", "act2"])))
    with pytest.raises(MabeDataError, match="member 1.*actions"):
        predictions.average([p1, other])
    other = predictions.validate(dict(d, video_id=d["video_id"][::-1].copy()))
    with pytest.raises(MabeDataError, match="video_id"):
        predictions.average([p1, other])
    with pytest.raises(ValueError):
        predictions.average([])


def test_concat_joins_disjoint_tracks_and_refuses_repeats_or_other_columns(rng):
    d = random_preds(rng)
    p1 = predictions.validate(d)
    p2 = predictions.validate(dict(d, video_id=d["video_id"] + 1000))
    both = predictions.concat([p1, p2])
    assert both.n_tracks == 2 * p1.n_tracks and both.n_frames == 2 * p1.n_frames
    for t in range(p1.n_tracks):  # every track keeps its own frames, labels and ids
        np.testing.assert_array_equal(both.track(p1.n_tracks + t)[0], p2.track(t)[0])
        np.testing.assert_array_equal(both.track(p1.n_tracks + t)[1], p2.track(t)[1])
        assert both.video_id[p1.n_tracks + t] == p2.video_id[t]
    predictions.validate({k: getattr(both, k) for k in ("probs", "offsets", "video_id", "lab_id", "agent_id",
                                                        "target_id", "actions", "labeled", "fps", "labels")})
    with pytest.raises(MabeDataError, match="tracks"):
        predictions.concat([p1, p1])
    other = predictions.validate(dict(d, video_id=d["video_id"] + 1000, actions=np.array(["act0", "act1", "act3", "act2"])))
    with pytest.raises(MabeDataError, match="actions"):
        predictions.concat([p1, other])
    assert predictions.concat([p1, predictions.validate({k: v for k, v in p2.__dict__.items() if k != "labels"}
                                                        )]).labels is None


# ----------------------------------------------------------------------------- seconds and the grid


def test_min_length_and_gap_in_seconds_follow_each_tracks_fps():
    """min_seconds 0.1 / gap_seconds 0.05: 1 frame / 1 frame at 10 fps (gap rounds 0.5 -> 0, no merge),
    12 / 6 frames at 120 fps; the same 5-frame interval is kept at 10 fps and dropped at 120 fps."""
    cfg = PostprocessConfig(smooth_window=1, threshold=0.5, min_seconds=0.1, gap_seconds=0.05, smooth_seconds=0.2)
    assert pp.frame_windows(cfg, 10.0) == (2, 1, 0)
    assert pp.frame_windows(cfg, 120.0) == (24, 12, 6)
    assert pp.frame_windows(PostprocessConfig(), 120.0) == (5, 3, 2)  # None: the frame counts
    p = np.zeros((60, 3))
    p[10:15, 0] = 0.9  # 5 frames: 0.5 s at 10 fps, 0.04 s at 120 fps
    p[30:40, 0] = p[44:56, 0] = 0.9  # a 4-frame hole: merged at 120 fps (0.033 s), not at 10 fps (0.4 s)
    preds = make_preds([("L", 1, 1, 2, p, [1, 0, 0]), ("L", 2, 1, 2, p, [1, 0, 0])])
    preds.fps = np.array([10.0, 120.0])
    cfg = PostprocessConfig(smooth_window=1, threshold=0.5, min_seconds=0.1, gap_seconds=0.05)
    iv = pp.predictions_to_intervals(preds, cfg, {})
    got = sorted(zip(iv.video_id, iv.start_frame, iv.stop_frame))
    assert got == [(1, 10, 15), (1, 30, 40), (1, 44, 56), (2, 30, 56)]


def test_a_threshold_below_the_old_floor_is_chosen_when_it_is_the_out_of_fold_optimum():
    """An under-confident model (positives at 0.03, negatives at 0.01): the default grid (floor 0.05)
    can only say "never", a grid reaching 0.005 finds the separating threshold."""
    y = np.zeros((200, 3), dtype=np.uint8)
    y[50:80, 0] = 1
    p = np.where(y > 0, 0.03, 0.01)
    preds = make_preds([("A", 1, 1, 2, p, [1, 0, 0])], labels=[y])
    assert pp.fit_thresholds(preds, PostprocessConfig(smooth_window=1))[("A", "attack")] is None
    low = PostprocessConfig(smooth_window=1, grid_low=0.005, grid_high=0.95, grid_n=190)
    thr = pp.fit_thresholds(preds, low)[("A", "attack")]
    assert thr is not None and 0.01 <= thr < 0.03
    np.testing.assert_allclose(pp.threshold_grid(low), np.linspace(0.005, 0.95, 190))
    thrs, f1 = pp.fit_thresholds_f1(preds, low)
    assert thrs[("A", "attack")] == thr and f1[("A", "attack")] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="grid"):
        pp.threshold_grid(PostprocessConfig(grid_low=0.5, grid_high=0.2))


# ----------------------------------------------------------------------------- resampled threshold fit


def _one_big_video_lab():
    """Lab A, 5 videos of "attack": video 0 has 100 positive frames at 0.9 and 60 negatives at 0.5, videos
    1-4 have 10 positives each at 0.45 and negatives at 0.1. Pooled as they are, 0.6 wins (F1 0.833 vs
    0.824 at 0.4); but 0.6 finds no positive in 4 of the 5 videos."""
    tracks, labels = [], []
    for v in range(5):
        n_pos, hi, n_neg, lo = (100, 0.9, 60, 0.5) if v == 0 else (10, 0.45, 30, 0.1)
        y = np.zeros((n_pos + n_neg, 3), dtype=np.uint8)
        y[:n_pos, 0] = 1
        p = np.zeros((n_pos + n_neg, 3))
        p[:n_pos, 0], p[n_pos:, 0] = hi, lo
        tracks.append(("A", 10 + v, 1, 2, p, [1, 0, 0]))
        labels.append(y)
    return make_preds(tracks, labels=labels)


def test_the_resampled_fit_prefers_the_threshold_that_holds_across_videos():
    preds = _one_big_video_lab()
    grid = np.array([0.4, 0.6])
    plain = pp.fit_thresholds(preds, PostprocessConfig(smooth_window=1, threshold_bootstrap=0), grid)
    assert plain[("A", "attack")] == pytest.approx(0.6)
    resampled, f1 = pp.fit_thresholds_f1(preds, PostprocessConfig(smooth_window=1), grid)
    assert resampled[("A", "attack")] == pytest.approx(0.4)
    assert 0.5 < f1[("A", "attack")] < 1.0  # the mean over resamples, not the pooled 0.824


def test_the_resampled_fit_is_the_mean_f1_over_documented_video_draws_by_brute_force():
    import zlib

    rng = np.random.default_rng(3)
    tracks, labels = [], []
    for v in range(4):  # two tracks per video: a resample draws videos, not tracks
        for agent in (1, 2):
            T = 120
            y = (rng.uniform(size=(T, 3)) < 0.2).astype(np.uint8)
            p = np.clip(0.35 * y + rng.uniform(0, 0.7, (T, 3)), 0, 1)
            tracks.append(("A", 100 + v, agent, 3 - agent, p, [1, 1, 0]))
            labels.append(y)
    preds = make_preds(tracks, labels=labels)
    cfg = PostprocessConfig(smooth_window=1, threshold_bootstrap=7, threshold_seed=5)
    grid = np.linspace(0.05, 0.95, 19)
    thr, f1 = pp.fit_thresholds_f1(preds, cfg, grid)
    draws = np.random.default_rng([5, zlib.crc32(b"A")]).multinomial(4, np.full(4, 0.25), size=7)
    for a, action in enumerate(("attack", "rear")):
        per_video = [(np.concatenate([preds.track(t)[0][:, a] for t in (2 * v, 2 * v + 1)]).astype(np.float32),
                      np.concatenate([preds.track(t)[1][:, a] for t in (2 * v, 2 * v + 1)]) > 0) for v in range(4)]
        curve = np.zeros(len(grid))
        for d in draws:
            p = np.concatenate([np.tile(per_video[v][0], d[v]) for v in range(4)])
            y = np.concatenate([np.tile(per_video[v][1], d[v]) for v in range(4)])
            curve += [brute_force_f1(p, y, g) for g in grid]
        curve /= len(draws)
        assert thr[("A", action)] == pytest.approx(grid[int(np.argmax(curve))])
        assert f1[("A", action)] == pytest.approx(curve.max())
    assert ("A", "sniff") not in thr
    with pytest.raises(ValueError, match="threshold_bootstrap"):
        pp.fit_thresholds(preds, PostprocessConfig(threshold_bootstrap=-1))


def test_one_video_or_no_resampling_gives_the_plain_fit():
    preds = _one_big_video_lab()
    grid = np.array([0.4, 0.6])
    first = preds.offsets[1]
    single = make_preds([("A", 10, 1, 2, preds.probs[:first].astype(np.float64), [1, 0, 0])],
                        labels=[preds.labels[:first]])
    assert pp.fit_thresholds_f1(single, PostprocessConfig(smooth_window=1), grid) == \
        pp.fit_thresholds_f1(single, PostprocessConfig(smooth_window=1, threshold_bootstrap=0), grid)

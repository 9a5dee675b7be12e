"""Post-processing edges found by mutation testing (scripts/mutation.sh postprocess): output dtypes
and shapes, 1-d input, ties at a threshold, defaults, several tracks, several actions pooled per
lab, the thresholds file's exact text and the error messages. docs/testing.md lists the mutants
these kill and the survivors judged equivalent."""

from __future__ import annotations

import json

import numpy as np
import pytest

# every mabe name these tests use, in one place
from mabe import postprocess as pp
from mabe import predictions
from mabe.config import PostprocessConfig
from mabe.errors import MabeDataError


def _preds(tracks, labels=None, actions=("sniff", "attack", "rear")) -> predictions.Predictions:
    """tracks: (lab, video, agent, target, probs (T, A), labeled (A,))."""
    probs = np.concatenate([np.asarray(t[4], np.float32) for t in tracks])
    arrays = dict(
        probs=probs.astype(np.float16), offsets=np.concatenate([[0], np.cumsum([len(t[4]) for t in tracks])]),
        video_id=np.array([t[1] for t in tracks]), lab_id=np.array([t[0] for t in tracks]),
        agent_id=np.array([t[2] for t in tracks]), target_id=np.array([t[3] for t in tracks]),
        actions=np.array(actions), labeled=np.array([t[5] for t in tracks], bool),
        fps=np.full(len(tracks), 30.0),
    )
    if labels is not None:
        arrays["labels"] = np.concatenate(labels).astype(np.uint8)
    return predictions.validate(arrays)


# ----------------------------------------------------------------------------- smooth


@pytest.mark.parametrize("window", [0, 1, 3, 4])
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_smooth_returns_float32_of_the_input_shape_for_1d_and_2d(window, dtype):
    x = np.array([0.0, 1.0, 0.0, 0.5, 0.25, 1.0], dtype=dtype)
    one = pp.smooth(x, window)
    two = pp.smooth(np.stack([x, 1 - x], 1), window)
    assert one.dtype == np.float32 and one.shape == x.shape
    assert two.dtype == np.float32 and two.shape == (6, 2)
    np.testing.assert_array_equal(one, two[:, 0])
    if window <= 1:  # no smoothing: the input, as float32 (and a copy)
        np.testing.assert_array_equal(one, x.astype(np.float32))
        assert not np.shares_memory(pp.smooth(two, window), two)
    else:
        assert not np.allclose(one, x)


def test_smooth_of_an_empty_track():
    assert pp.smooth(np.zeros((0, 3)), 5).shape == (0, 3)
    assert pp.smooth(np.zeros(0), 5).shape == (0,)


def test_smooth_sums_in_float64_on_long_tracks():
    """A float32 running sum over 10^6 frames loses ~1e-2 in absolute terms; float64 does not."""
    x = np.full(1_000_000, 0.3, dtype=np.float32)
    x[::2] = 0.7
    out = pp.smooth(x, 2)  # frames t, t + 1: always one 0.3 and one 0.7
    np.testing.assert_allclose(out[:-1], 0.5, atol=1e-6)


# ----------------------------------------------------------------------------- decide


def test_decide_needs_strictly_more_than_the_threshold_and_returns_int64():
    p = np.array([[0.5, 0.2], [0.50001, 0.2], [0.2, 0.7]], np.float32)
    codes = pp.decide(p, [0.5, 0.7])
    assert codes.dtype == np.int64 and codes.tolist() == [-1, 0, -1]
    assert pp.decide(np.zeros((0, 2)), [0.5, 0.5]).dtype == np.int64
    assert pp.decide(np.zeros((0, 2)), [0.5, 0.5]).shape == (0,)


def test_decide_nan_and_none_thresholds_never_predict():
    p = np.array([[0.9, 0.8], [0.1, 0.95]], np.float32)
    assert pp.decide(p, [np.nan, 0.5]).tolist() == [1, 1]
    assert pp.decide(p, [None, 0.5]).tolist() == [1, 1]
    assert pp.decide(p, [0.5, float("inf")]).tolist() == [0, -1]


def test_decide_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"probs must be \(T, A\), got shape \(3,\)"):
        pp.decide(np.zeros(3), [0.5])
    with pytest.raises(ValueError, match=r"need one threshold per action \(2\), got 3"):
        pp.decide(np.zeros((4, 2)), [0.5, 0.5, 0.5])


# ----------------------------------------------------------------------------- frames_to_intervals


def test_frames_to_intervals_defaults_keep_every_run_and_fill_no_gap():
    act, start, stop = pp.frames_to_intervals(np.array([0, -1, 0, 0, -1, -1, 1]))
    assert act.tolist() == [0, 0, 1] and start.tolist() == [0, 2, 6] and stop.tolist() == [1, 4, 7]


def test_frames_to_intervals_empty_input_gives_three_empty_int64_arrays():
    for out in (pp.frames_to_intervals(np.zeros(0, np.int64)), pp.frames_to_intervals(np.full(5, -1))):
        assert len(out) == 3 and all(a.shape == (0,) and a.dtype == np.int64 for a in out)
    with pytest.raises(ValueError, match=r"actions_per_frame must be 1-d, got shape \(2, 2\)"):
        pp.frames_to_intervals(np.zeros((2, 2)))


# ----------------------------------------------------------------------------- predictions_to_intervals


def test_every_track_is_post_processed_and_ids_are_int64():
    on = np.zeros((12, 3), np.float32)
    on[2:9, 0] = 0.9
    on[4, 0] = 0.1  # a one-frame gap that max_gap 1 fills
    tracks = [
        ("A", 1, 1, 2, on, [0, 0, 0]),  # labels nothing: skipped
        ("A", 1, 2, 1, np.zeros((12, 3)), [1, 1, 0]),  # labels, predicts nothing
        ("A", 2, 1, 2, on, [1, 0, 0]),
        ("B", 3, 2, 2, on, [1, 0, 0]),
    ]
    cfg = PostprocessConfig(smooth_window=1, threshold=0.5, min_length=1, max_gap=1)
    iv = pp.predictions_to_intervals(_preds(tracks), cfg, {("A", "sniff"): None})  # never in lab A
    assert iv.values.tolist() == [[3, 2, 2, "sniff", 2, 9]]
    iv = pp.predictions_to_intervals(_preds(tracks), cfg)
    assert iv[["video_id", "agent_id", "target_id", "start_frame", "stop_frame"]].values.tolist() == [
        [2, 1, 2, 2, 9], [3, 2, 2, 2, 9]]
    for col in ("video_id", "agent_id", "target_id", "start_frame", "stop_frame"):
        assert iv[col].dtype == np.int64, col


def test_no_interval_gives_an_empty_frame_with_int64_ids():
    iv = pp.predictions_to_intervals(_preds([("A", 1, 1, 2, np.zeros((5, 3)), [1, 1, 1])]))
    assert list(iv.columns) == list(pp.INTERVAL_COLUMNS) and len(iv) == 0
    for col in ("video_id", "agent_id", "target_id", "start_frame", "stop_frame"):
        assert iv[col].dtype == np.int64, col


# ----------------------------------------------------------------------------- fit_thresholds


def _brute_f1(p, y, thr):
    pred = p > thr
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_fit_pools_every_track_of_a_lab_and_fits_each_action_on_its_own():
    """Noisy probabilities, three actions with different base rates, three tracks in lab A (the
    first labels nothing, one is a single frame): each threshold is the brute-force best of the
    grid over the pooled frames (lowest among equals)."""
    rng = np.random.default_rng(5)
    grid = np.linspace(0.05, 0.95, 19)
    tracks, labels = [("A", 9, 1, 2, rng.uniform(size=(30, 3)), [0, 0, 0])], [np.zeros((30, 3))]
    for v, T in ((1, 200), (2, 1), (3, 150)):
        y = rng.random((T, 3)) < np.array([0.1, 0.3, 0.5])
        p = np.clip(0.35 * y + rng.uniform(0, 0.65, (T, 3)), 0, 1)
        tracks.append(("A", v, 1, 2, p, [1, 1, 1]))
        labels.append(y)
    thr = pp.fit_thresholds(_preds(tracks, labels), PostprocessConfig(smooth_window=1), grid)
    p_all = np.concatenate([t[4] for t in tracks[1:]]).astype(np.float16).astype(np.float32)
    y_all = np.concatenate(labels[1:]) > 0
    for a, action in enumerate(("sniff", "attack", "rear")):
        f1s = [_brute_f1(p_all[:, a], y_all[:, a], g) for g in grid]
        assert thr[("A", action)] == pytest.approx(grid[int(np.argmax(f1s))]), action


def test_fit_counts_a_single_positive_frame_and_a_single_frame_track():
    y = np.zeros((1, 3), np.uint8)
    y[0, 0] = 1
    p = np.array([[0.8, 0.1, 0.1]])
    thr = pp.fit_thresholds(_preds([("A", 1, 1, 2, p, [1, 1, 0])], [y]), PostprocessConfig(smooth_window=1))
    assert thr[("A", "sniff")] == pytest.approx(0.05)  # one positive frame: fitted, lowest best threshold
    assert thr[("A", "attack")] is None  # no positive frame: never


def test_fit_says_never_when_no_threshold_gets_a_true_positive():
    y = np.zeros((20, 3), np.uint8)
    y[:5, 0] = 1
    p = np.zeros((20, 3))
    p[5:, 0] = 0.9  # the positives score 0, the negatives 0.9: every threshold has F1 0
    thr = pp.fit_thresholds(_preds([("A", 1, 1, 2, p, [1, 0, 0])], [y]), PostprocessConfig(smooth_window=1))
    assert thr == {("A", "sniff"): None}


def test_fit_errors_name_the_missing_labels_and_the_empty_grid():
    preds = _preds([("A", 1, 1, 2, np.zeros((4, 3)), [1, 0, 0])], [np.zeros((4, 3))])
    assert pp.fit_thresholds(preds, grid=[0.5]) == {("A", "sniff"): None}  # a one-value grid is fine
    with pytest.raises(ValueError, match="^fit_thresholds needs a non-empty grid$"):
        pp.fit_thresholds(preds, grid=[])
    preds.labels = None
    with pytest.raises(MabeDataError) as err:
        pp.fit_thresholds(preds)
    assert str(err.value) == ("<predictions>, field 'labels': expected predictions with ground-truth labels "
                              "to fit thresholds, got no labels")


# ----------------------------------------------------------------------------- thresholds file


def test_thresholds_file_text_and_rewrite(tmp_path):
    path = tmp_path / "a" / "b" / "thresholds.json"  # parents are created
    thr = {("LabB", "sniff"): 0.25, ("LabA", "rear"): None, ("LabA", "attack"): 0.5}
    pp.save_thresholds(path, thr)
    assert path.read_text() == ('{\n "LabA": {\n  "attack": 0.5,\n  "rear": null\n },\n'
                                ' "LabB": {\n  "sniff": 0.25\n }\n}\n')
    pp.save_thresholds(path, {("LabC", "chase"): 0.1})  # the folder exists now: rewritten in place
    assert json.loads(path.read_text()) == {"LabC": {"chase": 0.1}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["thresholds.json"]


def test_missing_thresholds_file_error_names_it(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(MabeDataError) as err:
        pp.load_thresholds(missing)
    assert str(err.value) == f"{missing}: expected a thresholds JSON file, got no such file"


# ----------------------------------------------------------------------------- second round (survivors of the first)


def _f1_by_hand(total, pos):
    """F1 at threshold k from bins: predicted = frames in bins > k; written out with loops."""
    G = total.shape[-1] - 1
    out = np.zeros(total.shape[:-1] + (G,))
    for idx in np.ndindex(total.shape[:-1]):
        n_pos = pos[idx].sum()
        for k in range(G):
            pred, tp = total[idx][k + 1 :].sum(), pos[idx][k + 1 :].sum()
            fp, fn = pred - tp, n_pos - tp
            out[idx + (k,)] = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
    return out


def test_f1_from_bins_equals_the_f1_of_each_threshold_for_any_leading_shape():
    rng = np.random.default_rng(11)
    total = rng.integers(0, 30, size=(2, 3, 8))
    pos = rng.integers(0, 1 + total)  # pos <= total in every bin
    pos[0, 0] = 0
    total[0, 0] = 0
    total[0, 0, 0] = 5  # a row with nothing above any threshold and no positive: F1 0 everywhere
    got = pp._f1_from_bins(total, pos)
    assert got.shape == (2, 3, 7) and got.dtype == np.float64
    np.testing.assert_allclose(got, _f1_by_hand(total, pos), rtol=1e-12)
    assert (got[0, 0] == 0).all()


def test_default_grid_is_0_05_to_0_95_in_steps_of_0_05():
    y = np.zeros((40, 3), np.uint8)
    y[:20, 0] = 1
    p = np.zeros((40, 3))
    p[:20, 0], p[20:, 0] = 0.9, 0.4  # separable at any threshold in [0.4, 0.9) (0.4 in float16 is 0.39990)
    thr = pp.fit_thresholds(_preds([("A", 1, 1, 2, p, [1, 0, 0])], [y]), PostprocessConfig(smooth_window=1))
    assert thr[("A", "sniff")] == pytest.approx(0.4, abs=1e-12)  # the lowest grid value that separates


def test_frames_to_intervals_returns_int64_whatever_the_code_dtype():
    for codes in (np.array([0, 0, -1, 1], np.int8), np.array([0.0, 0.0, -1.0, 1.0])):
        out = pp.frames_to_intervals(codes)
        assert [a.dtype for a in out] == [np.int64] * 3
        assert [a.tolist() for a in out] == [[0, 1], [0, 3], [2, 4]]


def test_empty_intervals_keep_an_object_action_column():
    iv = pp.predictions_to_intervals(_preds([("A", 1, 1, 2, np.zeros((5, 3)), [1, 1, 1])]))
    assert iv["action"].dtype == object


@pytest.mark.parametrize("text, message", [
    ("{not json", "expected valid JSON, got Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("[1, 2]", "expected a mapping {lab: {action: threshold or null}}, got list"),
    ('{"LabA": 0.5}', "field 'LabA': expected a mapping {action: threshold or null}, got float"),
    ('{"LabA": {"sniff": "high"}}', "field 'LabA.sniff': expected a number or null, got 'high'"),
    ('{"LabA": {"sniff": true}}', "field 'LabA.sniff': expected a number or null, got True"),
])
def test_bad_thresholds_files_are_named_with_the_field_and_what_was_found(tmp_path, text, message):
    path = tmp_path / "thr.json"
    path.write_text(text)
    with pytest.raises(MabeDataError) as err:
        pp.load_thresholds(path)
    expect = f"{path}: {message}" if not message.startswith("field") else f"{path}, {message}"
    assert str(err.value) == expect

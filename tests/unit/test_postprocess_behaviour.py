"""Post-processing and submission behaviours that can break silently: smoothing before thresholds,
the overlap rule (one action per pair and frame; the same action may overlap itself), and
``submit TEST --fit VAL`` fitting on the validation predictions (docs/testing.md)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

# every mabe name these tests use, in one place
from mabe import postprocess, predictions, submit
from mabe.config import PostprocessConfig
from mabe.metric import find_pair_overlap


def _preds(probs: np.ndarray, labels: np.ndarray | None = None, lab: str = "LabA", video: int = 7) -> predictions.Predictions:
    """One (mouse1, mouse2) track over actions (sniff, attack), both labelled."""
    T = len(probs)
    return predictions.validate(dict(
        probs=probs.astype(np.float16), offsets=np.array([0, T]), video_id=np.array([video]),
        lab_id=np.array([lab]), agent_id=np.array([1]), target_id=np.array([2]),
        actions=np.array(["sniff", "attack"]), labeled=np.ones((1, 2), bool), fps=np.array([30.0]),
        **({} if labels is None else {"labels": labels.astype(np.uint8)}),
    ))


def _intervals(probs, smooth_window):
    cfg = PostprocessConfig(smooth_window=smooth_window, threshold=0.5, min_length=1, max_gap=0)
    iv = postprocess.predictions_to_intervals(_preds(probs), cfg)
    return [(a, int(s), int(e)) for a, s, e in zip(iv["action"], iv["start_frame"], iv["stop_frame"])]


def test_smoothing_bridges_a_one_frame_dip_and_drops_a_one_frame_spike():
    p = np.zeros((30, 2), np.float32)
    p[:, 0] = 0.1
    p[2:12, 0] = 0.9
    p[6, 0] = 0.2  # a one-frame dip inside a sniff
    p[20, 0] = 0.9  # a one-frame spike
    # window 3: frame 6 -> (0.9 + 0.2 + 0.9) / 3 = 0.67 stays on; frame 20 -> 0.37 goes off
    assert _intervals(p, 3) == [("sniff", 2, 12)]
    assert _intervals(p, 1) == [("sniff", 2, 6), ("sniff", 7, 12), ("sniff", 20, 21)]


def _sub(rows) -> pd.DataFrame:
    iv = pd.DataFrame(rows, columns=["video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"])
    return submit.to_submission(iv)


def test_the_same_action_may_overlap_itself_but_two_actions_may_not_share_a_frame():
    same = _sub([(5, 1, 2, "sniff", 0, 10), (5, 1, 2, "sniff", 5, 15), (5, 1, 2, "attack", 15, 20)])
    submit.validate_submission(same)  # overlapping rows of one action: allowed
    assert find_pair_overlap(np.zeros(3), np.array([0, 0, 1]), np.array([0, 5, 15]), np.array([10, 15, 20])) is None
    clash = _sub([(5, 1, 2, "sniff", 0, 10), (5, 1, 2, "attack", 9, 20)])
    try:
        submit.validate_submission(clash)
    except submit.InvalidSubmission as err:
        assert "both claim frame 9" in str(err)
    else:
        raise AssertionError("two actions on one frame of one pair were accepted")
    # other pairs and other videos may overlap freely
    submit.validate_submission(_sub([(5, 1, 2, "sniff", 0, 10), (5, 2, 1, "attack", 0, 10), (6, 1, 2, "attack", 0, 10)]))


def test_submit_fits_thresholds_on_the_validation_predictions_not_the_submitted_ones(tmp_path, capsys):
    T = 60
    # validation: sniff frames score 0.3, the others 0.1, so the best threshold lies in between
    y = np.zeros((T, 2), np.uint8)
    y[10:30, 0] = 1
    pv = np.where(y == 1, 0.3, 0.1).astype(np.float32)
    val = _preds(pv, y).save(tmp_path / "val.npz")
    # test: no labels; sniff at 0.35 on frames 20..39, below the default threshold 0.5
    pt = np.full((T, 2), 0.05, np.float32)
    pt[20:40, 0] = 0.35
    test = _preds(pt, video=8).save(tmp_path / "test.npz")
    args = argparse.Namespace(predictions=test, out=tmp_path / "sub" / "submission.csv", thresholds=None, fit=val,
                              config=None, overrides=["postprocess.smooth_window=1", "postprocess.min_length=1",
                                                      "postprocess.max_gap=0"])
    sub = submit.main_from_args(args)
    thr = postprocess.load_thresholds(tmp_path / "sub" / "thresholds.json")
    expect = postprocess.fit_thresholds(predictions.load(val), PostprocessConfig(smooth_window=1))
    assert thr == expect and 0.1 <= thr[("LabA", "sniff")] < 0.3
    assert sub[["video_id", "action", "start_frame", "stop_frame"]].values.tolist() == [[8, "sniff", 20, 40]]
    json.loads((tmp_path / "sub" / "thresholds.json").read_text())  # a readable file

"""Submission writing and validation, and the round trip predictions -> submission -> score."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest

from mabe import metric, postprocess, predictions, submit
from mabe.config import PostprocessConfig
from mabe.metric import InvalidSubmission

# ----------------------------------------------------------------------------- format


def test_to_submission_exact_format(tmp_path):
    intervals = pd.DataFrame({
        "video_id": [22, 5, 5, 5, 5],
        "agent_id": [1, 2, 1, 1, 1],
        "target_id": [2, 2, 2, 1, 2],
        "action": ["sniff", "rear", "attack", "selfgroom", "sniff"],
        "start_frame": [0, 7, 30, 3, 10],
        "stop_frame": [4, 9, 35, 6, 20],
    })
    sub = submit.to_submission(intervals)
    assert list(sub.columns) == ["row_id", "video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"]
    path = submit.write_submission(sub, tmp_path / "out" / "submission.csv")
    assert path.read_text() == (
        "row_id,video_id,agent_id,target_id,action,start_frame,stop_frame\n"
        "0,5,mouse1,mouse2,sniff,10,20\n"
        "1,5,mouse1,mouse2,attack,30,35\n"
        "2,5,mouse1,self,selfgroom,3,6\n"
        "3,5,mouse2,self,rear,7,9\n"
        "4,22,mouse1,mouse2,sniff,0,4\n"
    )
    submit.validate_submission(sub)
    back = pd.read_csv(path)
    submit.validate_submission(back)
    # string ids pass through unchanged
    again = submit.to_submission(back.drop(columns="row_id"))
    pd.testing.assert_frame_equal(again, back, check_dtype=False)


def test_empty_intervals_give_an_empty_valid_submission(tmp_path):
    cfg = PostprocessConfig(smooth_window=1, min_length=1, max_gap=0)
    preds = predictions.validate(dict(
        probs=np.zeros((5, 2)), offsets=np.array([0, 5]), video_id=np.array([1]), lab_id=np.array(["L"]),
        agent_id=np.array([1]), target_id=np.array([2]), actions=np.array(["attack", "sniff"]),
        labeled=np.ones((1, 2), bool), fps=np.array([30.0]),
    ))
    sub = submit.to_submission(postprocess.predictions_to_intervals(preds, cfg))
    assert len(sub) == 0
    submit.validate_submission(sub)
    path = submit.write_submission(sub, tmp_path / "s.csv")
    assert path.read_text().strip() == "row_id,video_id,agent_id,target_id,action,start_frame,stop_frame"


# ----------------------------------------------------------------------------- validation

LABELED = {5: ["mouse1,mouse2,sniff", "mouse1,mouse2,attack", "mouse1,self,rear"], 6: ["mouse2,mouse1,sniff"]}
META = pd.DataFrame({"video_id": list(LABELED), "behaviors_labeled": [json.dumps(v) for v in LABELED.values()]})


def good() -> pd.DataFrame:
    return pd.DataFrame({
        "row_id": [0, 1, 2, 3],
        "video_id": [5, 5, 5, 6],
        "agent_id": ["mouse1", "mouse1", "mouse1", "mouse2"],
        "target_id": ["mouse2", "mouse2", "self", "mouse1"],
        "action": ["sniff", "attack", "rear", "sniff"],
        "start_frame": [0, 10, 0, 3],
        "stop_frame": [10, 20, 30, 3],
    })


def test_validate_accepts_a_good_submission():
    submit.validate_submission(good())
    submit.validate_submission(good(), META)
    # load_metadata's parsed form works too
    parsed = pd.DataFrame({"video_id": [5, 6], "labeled": [[(1, 2, "sniff"), (1, 2, "attack"), (1, 1, "rear")],
                                                            [(2, 1, "sniff")]]})
    submit.validate_submission(good(), parsed)


def _broken(change):
    df = good()
    change(df)
    return df


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("action"), "missing.*action"),
    (lambda d: d.insert(7, "score", 1.0), "unexpected.*score"),
    (lambda d: d.__setitem__("start_frame", d["start_frame"].astype(float)), "start_frame must be integers"),
    (lambda d: d.loc.__setitem__((1, "start_frame"), 21), "row 1.*start_frame 21 > stop_frame 20"),
    (lambda d: d.loc.__setitem__((0, "stop_frame"), 11), r"rows 0 and 1.*video 5.*frame 10"),
    (lambda d: d.loc.__setitem__((2, "row_id"), 7), "row_id must be 0..3 in order; row 2 has 7"),
    (lambda d: d.loc.__setitem__((1, "agent_id"), "m1"), "row 1.*agent_id"),
    (lambda d: d.loc.__setitem__((2, "target_id"), "mouse1"), "row 2.*self"),
    (lambda d: d.loc.__setitem__((3, "action"), "dance"), "row 3.*'dance'"),
    (lambda d: d.loc.__setitem__((3, "start_frame"), -1), "row 3.*negative"),
])
def test_validate_rejects(change, match):
    df = _broken(change)
    with pytest.raises(InvalidSubmission, match=match):
        submit.validate_submission(df)


def test_validate_with_metadata_rejects_unknown_videos_and_unlisted_triples():
    df = good()
    df.loc[3, "video_id"] = 99
    df = df.sort_values(["video_id"]).reset_index(drop=True)  # still sorted: 5, 5, 5, 99
    submit.validate_submission(df)  # fine without metadata
    with pytest.raises(InvalidSubmission, match="row 3.*video_id 99"):
        submit.validate_submission(df, META)
    df = good()
    df.loc[3, "action"] = "attack"   # mouse2,mouse1,attack is not listed for video 6
    with pytest.raises(InvalidSubmission, match="row 3.*'mouse2,mouse1,attack'.*behaviors_labeled"):
        submit.validate_submission(df, META)


def test_validate_sort_order_is_by_video_agent_target_start():
    df = good()
    df = df.iloc[[3, 0, 1, 2]].reset_index(drop=True)
    df["row_id"] = np.arange(4)
    with pytest.raises(InvalidSubmission, match="row 1 .*out of order"):
        submit.validate_submission(df)
    df = good()
    df.loc[0, ["start_frame", "stop_frame"]] = [40, 50]   # same pair as row 1, later start
    with pytest.raises(InvalidSubmission, match="row 1 .*out of order"):
        submit.validate_submission(df)
    df = good()
    df = df.iloc[[0, 2, 1, 3]].reset_index(drop=True)  # self before mouse2 target
    df["row_id"] = np.arange(4)
    with pytest.raises(InvalidSubmission, match="out of order"):
        submit.validate_submission(df)


# ----------------------------------------------------------------------------- round trip


TRIPLE = re.compile(r"^mouse[0-9]+,(mouse[0-9]+|self),[a-z]+$")


def triples_of(text: str) -> list[str]:
    """The well-formed triples of a behaviors_labeled string (two real labs also hold mangled
    entries such as "mouse1','mouse2','attack'", which can never match a submission row)."""
    return [t for t in json.loads(text) if TRIPLE.match(t)]


def preds_from_solution(sol: pd.DataFrame, extra_frames: int = 17) -> predictions.Predictions:
    """One track per (video, agent, target) listed in behaviors_labeled; probabilities == labels."""
    actions = sorted(set(sol["action"]) | {t.split(",")[2] for s in sol["behaviors_labeled"].unique()
                                            for t in triples_of(s)})
    col = {a: i for i, a in enumerate(actions)}
    tracks = []
    for video, g in sol.groupby("video_id", sort=True):
        triples = triples_of(g["behaviors_labeled"].iloc[0])
        pairs = sorted({tuple(t.split(",")[:2]) for t in triples})
        T = int(g["stop_frame"].max()) + extra_frames
        for agent, target in pairs:
            a = int(agent[5:])
            t = a if target == "self" else int(target[5:])
            y = np.zeros((T, len(actions)), dtype=np.uint8)
            rows = g[(g.agent_id == agent) & (g.target_id == target)]
            for r in rows.itertuples():
                y[r.start_frame:r.stop_frame, col[r.action]] = 1
            labeled = np.zeros(len(actions), dtype=bool)
            for tr in triples:
                ag, tg, act = tr.split(",")
                if (ag, tg) == (agent, target):
                    labeled[col[act]] = True
            tracks.append((g["lab_id"].iloc[0], video, a, t, y, labeled))
    ys = [t[4] for t in tracks]
    return predictions.validate(dict(
        probs=np.concatenate(ys).astype(np.float16),
        offsets=np.concatenate([[0], np.cumsum([len(y) for y in ys])]),
        video_id=np.array([t[1] for t in tracks]), lab_id=np.array([t[0] for t in tracks]),
        agent_id=np.array([t[2] for t in tracks]), target_id=np.array([t[3] for t in tracks]),
        actions=np.array(actions), labeled=np.array([t[5] for t in tracks]),
        fps=np.full(len(tracks), 30.0), labels=np.concatenate(ys),
    ))


def synthetic_solution(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    labeled = {}
    pair_actions = ["sniff", "attack", "mount"]
    for v in range(6):
        video = 1000 + v
        lab = ["LabA", "LabB"][v % 2]
        mice = [f"mouse{i}" for i in range(1, 4 if v == 5 else 3)]
        triples = [f"{a},{t},{act}" for a in mice for t in mice if t != a for act in pair_actions]
        triples += [f"{a},self,rear" for a in mice]
        labeled[video] = triples + ["mouse1,mouse2,chase"]  # allowed, never labelled
        for tr in triples:
            a, t, act = tr.split(",")
            if rng.random() < 0.5:
                continue
            pos = int(rng.integers(0, 30))
            for _ in range(int(rng.integers(1, 4))):
                length = int(rng.integers(0, 20))   # 0: an empty interval
                rows.append((lab, video, a, t, act, pos, pos + length))
                pos += length + int(rng.integers(1, 30))
    df = pd.DataFrame(rows, columns=["lab_id", "video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"])
    # at most one action per pair and frame: keep, per pair, only the action of its first row
    first_action = df.groupby(["video_id", "agent_id", "target_id"])["action"].transform("first")
    df = df[(df["action"] == first_action) & (df["start_frame"] < df["stop_frame"])].reset_index(drop=True)
    df["behaviors_labeled"] = [json.dumps(labeled[v]) for v in df["video_id"]]
    return df


def _args(tmp_path, preds_path, **kw):
    base = dict(predictions=preds_path, out=tmp_path / "sub" / "submission.csv", thresholds=None, fit=None,
                config=None, overrides=["postprocess.smooth_window=1", "postprocess.min_length=1",
                                        "postprocess.max_gap=0"])
    base.update(kw)
    return argparse.Namespace(**base)


def test_round_trip_synthetic_scores_one(tmp_path, capsys):
    sol = synthetic_solution()
    preds = preds_from_solution(sol)
    path = preds.save(tmp_path / "preds.npz")
    sub = submit.main_from_args(_args(tmp_path, path))
    out = capsys.readouterr().out
    assert "intervals" in out and (tmp_path / "sub" / "submission.csv").is_file()
    meta = sol.drop_duplicates("video_id")[["video_id", "behaviors_labeled"]]
    written = pd.read_csv(tmp_path / "sub" / "submission.csv")
    submit.validate_submission(written, meta)
    assert len(written) == len(sub)
    assert metric.score(sol, written).final == 1.0
    # the probabilities are exactly the labels: perturbing them lowers the score
    shifted = written.copy()
    shifted["stop_frame"] = shifted["stop_frame"] + 1
    assert metric.score(sol, shifted).final < 1.0


def test_round_trip_with_fitted_and_loaded_thresholds(tmp_path):
    sol = synthetic_solution(1)
    preds = preds_from_solution(sol)
    path = preds.save(tmp_path / "preds.npz")
    submit.main_from_args(_args(tmp_path, path, fit=path))
    thr_path = tmp_path / "sub" / "thresholds.json"
    thr = postprocess.load_thresholds(thr_path)
    # actions allowed but never labelled in a lab are "never"; the others get a threshold
    labelled = set(zip(sol["lab_id"], sol["action"]))
    for (lab, action), value in thr.items():
        assert (value is None) == ((lab, action) not in labelled)
    assert metric.score(sol, pd.read_csv(tmp_path / "sub" / "submission.csv")).final == 1.0
    out2 = tmp_path / "sub2" / "submission.csv"
    submit.main_from_args(_args(tmp_path, path, thresholds=thr_path, out=out2))
    assert metric.score(sol, pd.read_csv(out2)).final == 1.0
    with pytest.raises(Exception, match="either --fit"):
        submit.main_from_args(_args(tmp_path, path, thresholds=thr_path, fit=path))


def test_predicting_a_never_labelled_action_lowers_the_score(tmp_path):
    sol = synthetic_solution(2)
    preds = preds_from_solution(sol)
    # predict an allowed action that no label has, on a pair's otherwise empty frames
    never = sorted({t.split(",")[2] for s in sol["behaviors_labeled"] for t in json.loads(s)} - set(sol["action"]))
    assert never, "the synthetic labels leave some allowed action unused"
    a = list(preds.actions).index(never[0])
    t = int(np.flatnonzero(preds.labeled[:, a])[0])
    probs, _ = preds.track(t)
    free = np.flatnonzero(probs.astype(np.float32).sum(axis=1) == 0)[:3]
    probs[free, a] = 1.0
    cfg = PostprocessConfig(smooth_window=1, min_length=1, max_gap=0)
    sub = submit.to_submission(postprocess.predictions_to_intervals(preds, cfg, {}))
    r = metric.score(sol, sub)
    lab = preds.lab_id[t]
    n = int(r.per_lab.set_index("lab_id").loc[lab, "n_actions"])
    assert r.per_lab.set_index("lab_id").loc[lab, "score"] == pytest.approx((n - 1) / n)
    # a fitted "never" for that lab-action removes it again
    sub = submit.to_submission(postprocess.predictions_to_intervals(preds, cfg, {(lab, never[0]): None}))
    assert metric.score(sol, sub).final == 1.0


def test_round_trip_real_labels_scores_one(real_data, tmp_path):
    import warnings

    labs = ["BoisterousParrot", "DeliriousFly", "ReflectiveManatee"]  # the last two: mangled triples too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these labs have no missing / orphan annotation file
        sol = metric.load_solution(real_data, labs=labs)
    assert set(sol["lab_id"]) == set(labs)
    sol["behaviors_labeled"] = sol["behaviors_labeled"].astype(str)
    preds = preds_from_solution(sol)
    cfg = PostprocessConfig(smooth_window=1, min_length=1, max_gap=0)
    sub = submit.to_submission(postprocess.predictions_to_intervals(preds, cfg, {}))
    meta = pd.read_csv(real_data / "train.csv", usecols=["video_id", "behaviors_labeled"])
    submit.validate_submission(sub, meta)
    assert metric.score(sol, sub).final == 1.0

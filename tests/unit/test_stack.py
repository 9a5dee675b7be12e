"""mabe.stack: the second stage on out-of-fold probabilities: features, its own k-fold, no leak, apply, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import error_line, make_predictions, run_cli
from mabe import blend, predictions, stack
from mabe.config import StackConfig
from mabe.errors import MabeError
from mabe.predictions import Predictions

pytest.importorskip("lightgbm")

ACTIONS = ("attack", "sniff")
FAST = StackConfig(folds=3, n_estimators=20, num_leaves=7, min_child_samples=20, neg_hz=6.0, n_jobs=1)


def make(tracks, actions=ACTIONS, with_labels=True) -> Predictions:
    """tracks: list of (lab, video, agent, target, probs (T, A), labels (T, A), labeled (A,))."""
    return make_predictions(tracks, actions, with_labels)


def bouts(rng, T, n=4):
    y = np.zeros((T, 2), np.uint8)
    for a in range(2):
        for s in rng.choice(T - 60, n, replace=False):
            y[s:s + int(rng.integers(20, 60)), a] = 1
    return y


def member(rng, videos, T=600, noise=0.6, shuffle=False, with_labels=True, video_tag=False):
    """p ~ labels + frame noise (a member that knows something); ``shuffle``: the labels are another
    video's, so p says nothing about them; ``video_tag``: sniff's p is a constant that names the video
    (a model that saw the video could memorise its labels from it)."""
    ys = [bouts(rng, T) for _ in videos]
    tracks = []
    for i, v in enumerate(videos):
        y = ys[i]
        p = np.clip((1 - noise) * y + noise * rng.random((T, 2)), 0, 1)
        if video_tag:
            p[:, 1] = (v + 1) / (len(videos) + 2)
        lab_y = ys[(i + 3) % len(ys)] if shuffle else y
        tracks.append(("labA" if v % 2 else "labB", v, 1, 2, p, lab_y, np.ones(2, bool)))
    return make(tracks, with_labels=with_labels)


def auc(p, y):
    """Rank AUC of scores p for 0/1 labels y."""
    r = np.argsort(np.argsort(p, kind="stable"), kind="stable") + 1.0
    n1 = y.sum()
    return float((r[y > 0].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1)))


def test_track_features_shapes_and_seconds():
    cfg = StackConfig(scales=[0.5, 2.0], context_seconds=1.0)
    p = np.random.default_rng(0).random((2, 100, 3)).astype(np.float32)
    p[1, :, 2] = np.nan  # member 1 lacks the third action
    X = stack.track_features(p, 30.0, cfg, lab_code=4.0)
    assert len(X) == 3 and all(x.shape == (100, stack.n_features(2, 3, cfg)) for x in X)
    assert stack.n_features(2, 3, cfg) == 2 * 5 + 2 * 2 + 1
    np.testing.assert_allclose(X[0][:, 0], p[0, :, 0], rtol=1e-6)  # own probability first
    assert np.all(X[0][:, -1] == 4.0)  # the lab code last
    assert np.isnan(X[2][:, 5:10]).all()  # member 1's own block of the action it lacks
    # a max over 2 s at 30 fps (60 frames) covers a spike 25 frames away, the 0.5 s one (15 frames) does not
    q = np.zeros((1, 100, 1), np.float32)
    q[0, 50, 0] = 1.0
    Xq = stack.track_features(q, 30.0, StackConfig(scales=[0.5, 2.0], context_seconds=0), 0.0)[0]
    assert Xq[75, 4] == 1.0 and Xq[75, 3] == 0.0  # columns: p, mean0.5, mean2, max0.5, max2


def test_stacker_learns_from_a_member_that_knows():
    rng = np.random.default_rng(1)
    m = member(rng, range(9))
    st = stack.fit_stack(blend.align([m]), FAST, progress=False)
    y = st.oof.labels[:, 0]
    assert auc(st.oof.probs[:, 0].astype(np.float32), y) > 0.9
    assert st.score > 0.5


def test_stacker_on_shuffled_labels_does_no_better_than_chance():
    rng = np.random.default_rng(2)
    m = member(rng, range(9), shuffle=True)
    st = stack.fit_stack(blend.align([m]), FAST, progress=False)
    for a in range(2):
        assert abs(auc(st.oof.probs[:, a].astype(np.float32), st.oof.labels[:, a]) - 0.5) < 0.08


def test_stage2_out_of_fold_rows_never_come_from_a_model_that_saw_their_fold():
    # labels are another video's and sniff's p names the video: only a model that saw the video's own rows
    # could score well; out of fold it must stay at chance
    rng = np.random.default_rng(3)
    m = member(rng, range(9), shuffle=True, video_tag=True)
    # free trees (no residual start, no monotone constraint) so that the positive control below can memorise
    cfg = StackConfig(folds=3, n_estimators=40, num_leaves=15, min_child_samples=10, neg_hz=6.0, n_jobs=1,
                      residual=False, monotone=False)
    st = stack.fit_stack(blend.align([m]), cfg, progress=False)
    for (fold, action), seen in st.trained_on.items():
        if fold != stack.REFIT:
            assert not any(st.fold_of[v] == fold for v in seen), (fold, action)
    assert len(set(st.fold_of.values())) == 3
    for a in range(2):
        assert abs(auc(st.oof.probs[:, a].astype(np.float32), st.oof.labels[:, a]) - 0.5) < 0.1
    # the same data scored by the refitted model (which saw every video) is far better: the tag leaks there
    ap = stack.apply_stack(st, [blend.align([m])])
    assert auc(ap.probs[:, 0].astype(np.float32), m.labels[:, 0]) > 0.6


def test_unlabelled_actions_are_not_negatives_and_stay_zero():
    rng = np.random.default_rng(4)
    m = member(rng, range(9))
    m.labeled[m.lab_id == "labA", 1] = False  # labA does not label sniff
    st = stack.fit_stack(blend.align([m]), FAST, progress=False)
    rows = np.concatenate([np.arange(m.offsets[t], m.offsets[t + 1]) for t in range(m.n_tracks)
                           if m.lab_id[t] == "labA"])
    assert np.all(st.oof.probs[rows, 1] == 0)
    assert ("labA", "sniff") not in st.thresholds or st.thresholds[("labA", "sniff")] is None


def test_apply_groups_average_and_align_columns_by_name():
    rng = np.random.default_rng(5)
    fit = member(rng, range(9))
    test = member(rng, range(20, 23), with_labels=False)
    st = stack.fit_stack(blend.align([fit]), FAST, progress=False)
    one = stack.apply_stack(st, [blend.align([test])])
    assert one.probs.shape == test.probs.shape and one.offsets.tolist() == test.offsets.tolist()
    # the same test file with its columns in the other order gives the same stage-2 probabilities
    rev = make([(str(test.lab_id[t]), int(test.video_id[t]), 1, 2, test.track(t)[0][:, ::-1].astype(np.float32),
                 None, np.ones(2, bool)) for t in range(test.n_tracks)], actions=ACTIONS[::-1], with_labels=False)
    other = stack.apply_stack(st, [blend.align([rev])])
    np.testing.assert_array_equal(other.probs[:, ::-1], one.probs)
    two = stack.apply_stack(st, [blend.align([test]), blend.align([test])])
    np.testing.assert_allclose(two.probs.astype(np.float32), one.probs.astype(np.float32), atol=1e-3)


def test_cli_writes_files_and_bad_input_names_the_file(tmp_path, capsys):
    rng = np.random.default_rng(6)
    fit = member(rng, range(9)).save(tmp_path / "oof.npz")
    test = member(rng, range(20, 23), with_labels=False).save(tmp_path / "test.npz")
    nolab = member(rng, range(9), with_labels=False).save(tmp_path / "nolab.npz")
    sets = ["--set", "stack.folds=3", "--set", "stack.n_estimators=10", "--set", "stack.n_jobs=1"]
    out = tmp_path / "s" / "test_predictions.npz"
    rc, _, err, _ = run_cli(["stack", "--fit", str(fit), "--apply", str(test), "--apply", str(test), "--out", str(out),
                             "--quiet", *sets], capsys)
    assert rc == 0, err
    assert predictions.load(out).n_tracks == 3
    meta = json.loads((tmp_path / "s" / "stack.json").read_text())
    assert len(meta["apply"]) == 2 and 0 <= meta["oof_score"] <= 1
    assert predictions.load(tmp_path / "s" / "stack_oof_predictions.npz").labels is not None
    assert (tmp_path / "s" / "thresholds.json").is_file()
    rc, _, err, _ = run_cli(["stack", "--fit", str(nolab), "--apply", str(test), "--out", str(out), *sets], capsys)
    assert "nolab.npz" in error_line(rc, err, "stack") and "labels" in err
    with pytest.raises(MabeError, match="share"):
        stack.main_from_args(_args(fit=[fit], apply=[[fit]], out=out))
    with pytest.raises(MabeError, match="--apply group"):
        stack.main_from_args(_args(fit=[fit], apply=[[test, test]], out=out))


def _args(**kw):
    import argparse

    return argparse.Namespace(config=None, overrides=["stack.n_estimators=5", "stack.folds=3"], quiet=True, **kw)

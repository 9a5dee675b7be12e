"""mabe.gbdt: the per-(lab, action) LightGBM family, k-fold by video, out-of-fold predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm")

from mabe import gbdt, postprocess, predictions, prepare  # noqa: E402
from mabe.config import FeatureConfig, GbdtConfig  # noqa: E402

FAST = GbdtConfig(folds=2, n_estimators=40, num_leaves=15, min_child_samples=10, n_jobs=1)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """The tiny preset with 12 train videos (4 per lab): 2 folds leave 2 videos per lab to learn from."""
    from mabe import synth

    out = tmp_path_factory.mktemp("gbdt") / "data"
    synth.write_dataset(out, preset="tiny", seed=0, n_train=12)
    return out


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    _, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    return float((ranks[y > 0].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_auc(preds: predictions.Predictions, videos=None) -> float:
    """Mean over (lab, action) of the AUC of the frames of tracks that list the action."""
    aucs = []
    for lab in sorted(set(preds.lab_id.tolist())):
        for j in range(len(preds.actions)):
            ps, ys = [], []
            for t in np.flatnonzero((preds.lab_id == lab) & preds.labeled[:, j]):
                if videos is not None and int(preds.video_id[t]) not in videos:
                    continue
                p, y = preds.track(t)
                ps.append(p[:, j].astype(np.float64))
                ys.append(y[:, j])
            if ps and 0 < np.concatenate(ys).sum() < len(np.concatenate(ys)):
                aucs.append(_auc(np.concatenate(ps), np.concatenate(ys).astype(np.float64)))
    return float(np.mean(aucs))


def _prepared(data: Path, out: Path) -> Path:
    return prepare.prepare_dataset(data, FeatureConfig(), cache_root=out / "cache", workers=1, progress=False)


def _shift_labels(cache_dir: Path, seed: int) -> None:
    """Circularly shift every train pair's label intervals by a random lag: same label statistics, no link to
    the pose (an interval that wraps past the end is split in two)."""
    rng = np.random.default_rng(seed)
    for path in sorted((cache_dir / "videos").glob("*/*/intervals.npy")):
        meta = json.loads((path.parent / "meta.json").read_text())
        T, iv = meta["n_frames"], np.load(path)
        if T < 4 or not len(iv):
            continue
        out = []
        for key in {(a, t) for a, t in iv[:, :2].tolist()}:
            lag = int(rng.integers(T // 4, 3 * T // 4))
            for a, t, act, s, e in iv[(iv[:, 0] == key[0]) & (iv[:, 1] == key[1])].tolist():
                s, e = s + lag, e + lag
                if e <= T or s >= T:
                    out.append((a, t, act, s % T, e - T * (s >= T)))
                else:  # wraps: its end goes to the start
                    out += [(a, t, act, s, T), (a, t, act, 0, e - T)]
        np.save(path, np.array(out, np.int32).reshape(-1, 5))
        meta["files"]["intervals.npy"] = path.stat().st_size
        (path.parent / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def true_run(small_data, tmp_path_factory) -> dict:
    return gbdt.run(small_data, tmp_path_factory.mktemp("true"), FAST, workers=1, progress=False)


@pytest.fixture(scope="module")
def shifted_run(small_data, tmp_path_factory) -> dict:
    """Labels shifted in time (no link to the pose left), fitted by trees flexible enough to memorise them."""
    out = tmp_path_factory.mktemp("shifted")
    _shift_labels(_prepared(small_data, out), seed=0)
    cfg = GbdtConfig(folds=2, n_estimators=60, num_leaves=63, min_child_samples=2, feature_fraction=1.0,
                     bagging_fraction=1.0, lambda_l2=0.0, n_jobs=1)
    return gbdt.run(small_data, out, cfg, workers=1, progress=False)


def test_fit_learns_true_labels_and_fails_on_shuffled_ones(true_run, shifted_run):
    auc_true = _mean_auc(predictions.load(true_run["oof"]))
    auc_shuffled = _mean_auc(predictions.load(shifted_run["oof"]))
    assert auc_true > 0.75
    assert auc_shuffled < 0.65
    assert auc_true - auc_shuffled > 0.2


def test_oof_predictions_come_from_models_that_never_saw_the_video(shifted_run, tmp_path):
    """Labels unrelated to the pose can only be predicted by a model that memorised them: the
    out-of-fold predictions must not, the all-fold ensemble on the same (seen) videos does."""
    oof = predictions.load(shifted_run["oof"])
    folds, actions = gbdt.load_models(shifted_run["models"])
    _, index = prepare.open_cache(shifted_run["cache"])
    train = gbdt._videos(index, "train", labelled_only=True)
    seen = gbdt.predict_cache(shifted_run["cache"], train, lambda lab, vid: folds, actions, tmp_path / "seen.npz",
                              with_labels=True, progress=False)
    auc_oof = _mean_auc(oof)
    auc_seen = _mean_auc(predictions.load(seen))
    assert auc_oof < 0.65  # nothing to learn from the pose: out-of-fold is chance
    assert auc_seen > auc_oof + 0.15  # a model that saw the video remembers its labels
    meta = json.loads((shifted_run["models"] / "models.json").read_text())
    assert sorted(set(meta["fold_of_video"].values())) == [0, 1]


def test_predictions_file_feeds_thresholds_and_submission(true_run):
    paths = true_run
    oof = predictions.load(paths["oof"])
    test = predictions.load(paths["test"])
    assert oof.labels is not None and test.labels is None
    assert list(oof.actions) == list(test.actions)
    # rows are video frames: each track is as long as its video
    _, index = prepare.open_cache(paths["cache"])
    n = dict(zip(zip(index["video_id"], index["agent_id"], index["target_id"]), index["n_frames"]))
    for t in range(oof.n_tracks):
        assert oof.track_length(t) == n[(oof.video_id[t], oof.agent_id[t], oof.target_id[t])]
    # an action a track does not list is never given a probability
    assert not np.any(oof.probs[np.repeat(~oof.labeled, np.diff(oof.offsets), axis=0)])
    thr = postprocess.fit_thresholds(oof)
    assert thr and all(k[0] in set(oof.lab_id.tolist()) for k in thr)
    intervals = postprocess.predictions_to_intervals(test, thresholds=thr)
    assert len(intervals) > 0


def test_saved_models_predict_new_data_like_the_run(true_run, small_data, tmp_path):
    again = gbdt.predict_with(true_run["models"], small_data, tmp_path / "again", "test", workers=1, progress=False)
    a, b = predictions.load(true_run["test"]), predictions.load(again)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.video_id, b.video_id)


def test_load_models_refuses_a_model_file_outside_its_folder(tmp_path):
    """models.json names its model files: a name that leaves the folder is refused before it is read."""
    import json

    from mabe import gbdt, tabular
    from mabe.errors import MabeError

    (tmp_path / "evil.txt").write_text("not a model")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "models.json").write_text(json.dumps({
        "actions": ["sniff"], "folds": 1, "fold_of_video": {}, "features": tabular.feature_names(),
        "models": [{"fold": 0, "lab": "L", "action": "sniff", "file": "../evil.txt"}]}))
    with pytest.raises(MabeError, match="outside"):
        gbdt.load_models(folder)


def test_pos_weights_raise_rare_positives_to_the_balance_share_and_never_lower():
    y = np.r_[np.ones(10), np.zeros(990)]
    w = gbdt.pos_weights(y, 0.5)
    assert w[y == 0].tolist() == [1.0] * 990
    assert w[y > 0].sum() == pytest.approx(0.5 * 990)
    np.testing.assert_array_equal(gbdt.pos_weights(y, 0.0), np.ones(1000))
    common = np.r_[np.ones(600), np.zeros(400)]  # positives already outweigh the share: left at 1
    np.testing.assert_array_equal(gbdt.pos_weights(common, 0.5), np.ones(1000))
    np.testing.assert_array_equal(gbdt.pos_weights(np.zeros(5), 0.5), np.ones(5))


def test_balanced_fit_lifts_a_rare_action_above_the_threshold_grid():
    """A rare, learnable positive (1 %) gets probabilities the 0.05-step threshold grid can resolve only
    with the positive weighting; without it the booster stays near the base rate."""
    rng = np.random.default_rng(0)
    n = 4000
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = ((X[:, 0] > 2.0) & (rng.random(n) < 0.8)).astype(np.uint8)
    rows = gbdt.TrainingRows(X, y[:, None], np.ones((n, 1), bool), np.full(n, "L"), np.zeros(n, np.int64),
                             ["sniff"])
    cfg = dict(n_estimators=30, num_leaves=7, min_child_samples=40, n_jobs=1)
    p_bal = gbdt.fit_models(rows, GbdtConfig(**cfg, pos_balance=0.5), progress=False)[("L", "sniff")].predict(X)
    p_off = gbdt.fit_models(rows, GbdtConfig(**cfg, pos_balance=0.0), progress=False)[("L", "sniff")].predict(X)
    assert np.median(p_bal[y > 0]) > np.median(p_off[y > 0]) + 0.1


def test_smooth_seconds_is_a_centred_mean_over_seconds_of_the_raw_probabilities(true_run):
    """predict_video(smooth_s) = the rolling mean over round(smooth_s * fps) frames of the unsmoothed
    probabilities, only on the columns a model predicts; 0 leaves them raw."""
    from mabe import tabular

    folds, actions = gbdt.load_models(true_run["models"])
    fcfg, index = prepare.open_cache(true_run["cache"])
    lab, vid = index.iloc[0]["lab_id"], index.iloc[0]["video_id"]
    v = prepare.load_video(true_run["cache"], lab, vid)
    slots = gbdt._slots(fcfg)
    raw = gbdt.predict_video(folds, v, actions, slots)
    sm = gbdt.predict_video(folds, v, actions, slots, smooth_s=0.5)
    w = max(int(round(0.5 * float(v["meta"]["fps"]))), 1)
    assert w > 1 and raw.any()
    for p in range(len(raw)):
        np.testing.assert_allclose(sm[p], tabular.rolling(raw[p], w)[0], rtol=1e-5, atol=1e-6)
    assert np.abs(np.diff(sm, axis=1)).sum() < np.abs(np.diff(raw, axis=1)).sum()


# ----------------------------------------------------------------------------- pooled models


def _two_lab_rows(rng: np.random.Generator, n_rare: int) -> tuple[gbdt.TrainingRows, np.ndarray]:
    """Lab A: 3000 rows with many positives where x0 > 1.5; lab B: 3000 rows, the same rule, n_rare positives."""
    n = 3000
    X = rng.normal(size=(2 * n, 3)).astype(np.float32)
    y = (X[:, 0] > 1.5).astype(np.uint8)
    b = np.arange(2 * n) >= n
    pos_b = np.flatnonzero(b & (y > 0))
    y[pos_b[n_rare:]] = 0  # lab B saw the action only n_rare times
    X[pos_b[n_rare:], 0] = -X[pos_b[n_rare:], 0]
    lab = np.where(b, "B", "A")
    return gbdt.TrainingRows(X, y[:, None], np.ones((2 * n, 1), bool), lab, np.zeros(2 * n, np.int64), ["chase"]), b


def test_pooled_model_learns_from_every_lab_and_rescues_a_rare_lab():
    rows, b = _two_lab_rows(np.random.default_rng(0), n_rare=2)
    cfg = dict(n_estimators=30, num_leaves=7, min_child_samples=20, n_jobs=1)
    models = gbdt.fit_models(rows, GbdtConfig(**cfg, pooled=True), progress=False)
    assert set(models) == {("A", "chase"), ("B", "chase"), (gbdt.POOLED, "chase")}
    assert (gbdt.POOLED, "chase") not in gbdt.fit_models(rows, GbdtConfig(**cfg, pooled=False), progress=False)
    rng = np.random.default_rng(1)
    Xt = rng.normal(size=(4000, 3)).astype(np.float32)
    yt = Xt[:, 0] > 1.5
    # lab B's own model, from 2 positives, stays near its base rate; the pool is confident where it should be
    own, pooled = models[("B", "chase")].predict(Xt), models[(gbdt.POOLED, "chase")].predict(Xt)
    assert np.median(pooled[yt]) > 0.5 and np.median(own[yt]) < 0.1
    assert _auc(pooled, yt.astype(float)) > 0.95
    # unlabelled is not negative for the pool either: rows of tracks that do not list the action are left out
    rows.labeled[b] = False
    rows.Y[b] = 1  # would teach "everything in B is a chase" if they were used
    m = gbdt.fit_models(rows, GbdtConfig(**cfg, pooled=True), progress=False)
    assert _auc(m[(gbdt.POOLED, "chase")].predict(Xt), yt.astype(float)) > 0.95


def _preds(probs: np.ndarray, labels: np.ndarray, labs: list[str]) -> predictions.Predictions:
    """One track per lab, each (T, A) probabilities and labels of the same length."""
    T = len(probs) // len(labs)
    A = probs.shape[1]
    return predictions.Predictions(
        probs=probs.astype(np.float16), offsets=np.arange(len(labs) + 1) * T, video_id=np.arange(len(labs)),
        lab_id=np.array(labs), agent_id=np.ones(len(labs), np.int8), target_id=np.full(len(labs), 2, np.int8),
        actions=np.array(["attack", "chase"][:A]), labeled=np.ones((len(labs), A), bool),
        fps=np.full(len(labs), 30.0), labels=labels.astype(np.uint8))


def test_choose_sources_takes_the_best_out_of_fold_f1_per_lab_action_and_ties_go_to_the_lab():
    from mabe.config import PostprocessConfig

    rng = np.random.default_rng(0)
    T = 400
    y = np.zeros((2 * T, 2))
    y[50:90, 0] = y[T + 200:T + 260, 0] = y[100:150, 1] = y[T + 10:T + 40, 1] = 1
    noise = rng.random(y.shape) * 0.3
    good, bad = 0.6 * y + noise, noise  # bad: no signal at all
    # lab A: its own model is good on attack, the pool on chase; lab B: the pool on attack; chase: tie
    lab_p = np.where(np.arange(2 * T)[:, None] < T, np.c_[good[:, 0], bad[:, 1]], np.c_[bad[:, 0], good[:, 1]])
    pool_p = np.where(np.arange(2 * T)[:, None] < T, np.c_[bad[:, 0], good[:, 1]], np.c_[good[:, 0], good[:, 1]])
    oof = {"lab": _preds(lab_p, y, ["A", "B"]), "pooled": _preds(pool_p, y, ["A", "B"])}
    oof["mean"] = _preds((lab_p + pool_p) / 2, y, ["A", "B"])
    cfg = PostprocessConfig(smooth_window=1)
    choice = gbdt.choose_sources(oof, cfg)
    assert choice[("A", "attack")] == "lab" and choice[("A", "chase")] == "pooled"
    assert choice[("B", "attack")] == "pooled" and choice[("B", "chase")] == "lab"  # same F1: the lab's own
    both = gbdt.combine_sources(oof, choice)
    np.testing.assert_array_equal(both.probs[:T, 0], oof["lab"].probs[:T, 0])
    np.testing.assert_array_equal(both.probs[:T, 1], oof["pooled"].probs[:T, 1])
    np.testing.assert_array_equal(both.probs[T:, 0], oof["pooled"].probs[T:, 0])
    np.testing.assert_array_equal(both.probs[T:, 1], oof["lab"].probs[T:, 1])
    np.testing.assert_array_equal(oof["lab"].probs, _preds(lab_p, y, ["A", "B"]).probs)  # inputs untouched


def test_run_saves_pooled_models_and_the_choice_and_predict_with_reuses_them(true_run):
    meta = json.loads((Path(true_run["models"]) / "models.json").read_text())
    assert any(e["lab"] == gbdt.POOLED and e["file"].split("/")[1].startswith("pooled__") for e in meta["models"])
    choice = gbdt.load_choice(true_run["models"])
    assert choice and set(choice.values()) <= set(gbdt.SOURCES)
    for s in gbdt.SOURCES:  # the per-source out-of-fold files the choice was made on stay beside the result
        assert (Path(true_run["oof"]).parent / f"oof_predictions.{s}.npz").is_file()

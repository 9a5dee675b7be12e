"""cv.py: k-fold network runs -> one out-of-fold predictions file whose every video was predicted by the
one fold model that never trained on it; resumable; `mabe predict` over a cv dir; blend fits on OOF."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from helpers import tiny_run
from mabe import cv, evaluate, predictions, prepare, runs
from mabe.config import config_from_dict, load_config
from mabe.errors import MabeError
from mabe.windows import run_split

torch.set_num_threads(1)


def _cfg(tmp_path, **train):
    return load_config(None, tiny_run(tmp_path, train={"epochs": 2, **train}, windows={"split_seed": 3}))


@pytest.fixture
def cv_run(tmp_path, fake_cache):
    cfg = _cfg(tmp_path)
    out = cv.run_cv(cfg, tmp_path / "runs" / "cvnet", folds=3)
    return cfg, tmp_path / "runs" / "cvnet", out


def test_oof_covers_every_video_once_and_no_fold_saw_its_oof_videos(cv_run, fake_cache):
    cfg, cv_dir, out = cv_run
    assert out["state"] == "finished"
    meta = json.loads((cv_dir / runs.CV_FILE).read_text())
    oof = predictions.load(out["oof"])
    assert oof.labels is not None
    _, index = prepare.open_cache(fake_cache)
    labelled = index[(index["split"] == "train") & index["has_labels"]]
    videos = {f"{lab}/{vid}" for lab, vid in zip(labelled["lab_id"], labelled["video_id"])}
    assert set(meta["fold_of_video"]) == videos
    oof_tracks = list(zip(oof.lab_id.tolist(), oof.video_id.tolist(), oof.agent_id.tolist(), oof.target_id.tolist()))
    assert len(set(oof_tracks)) == len(oof_tracks)  # each track once
    assert {f"{lab}/{vid}" for lab, vid, _, _ in oof_tracks} == videos  # every labelled train video
    for k, d in enumerate(runs.cv_fold_dirs(cv_dir)):
        # the fold's own saved config says what it trained on: recompute its split from it
        fcfg = config_from_dict(yaml.safe_load((d / "config.yaml").read_text()))
        assert (fcfg.windows.folds, fcfg.windows.fold) == (3, k)
        train_ids, val_ids = run_split(labelled, fcfg.windows.val_fraction, fcfg.windows.split_seed,
                                       fcfg.windows.folds, fcfg.windows.fold)
        part = predictions.load(d / "eval" / "val_predictions.npz")
        predicted = set(part.video_id.tolist())
        assert predicted == set(val_ids.tolist())
        assert not predicted & set(train_ids.tolist())  # the fold's model never trained on its OOF videos
        assert predicted == {int(v.split("/")[1]) for v, f in meta["fold_of_video"].items() if f == k}
        assert "train" in (d / "log.txt").read_text()
    thr = json.loads((cv_dir / "thresholds.json").read_text())
    assert thr  # fitted on the OOF file


def test_rerun_keeps_finished_folds_and_refuses_another_config(cv_run, tmp_path, capsys):
    cfg, cv_dir, _ = cv_run
    before = {d.name: (d / "checkpoints" / "best.pt").stat().st_mtime_ns for d in runs.cv_fold_dirs(cv_dir)}
    again = cv.run_cv(cfg, cv_dir, folds=3)
    assert again["state"] == "finished"
    assert "fold 3/3 already finished" in capsys.readouterr().out
    assert before == {d.name: (d / "checkpoints" / "best.pt").stat().st_mtime_ns for d in runs.cv_fold_dirs(cv_dir)}
    with pytest.raises(MabeError, match="another config"):
        cv.run_cv(_cfg(tmp_path, lr=1e-2), cv_dir, folds=3)
    with pytest.raises(MabeError, match="another config"):
        cv.run_cv(cfg, cv_dir, folds=2)


def test_an_interrupted_fold_resumes(tmp_path, fake_cache):
    cfg = _cfg(tmp_path)
    cv_dir = tmp_path / "runs" / "cvnet"
    meta = cv.plan(cfg, 2)
    cv_dir.mkdir(parents=True)
    (cv_dir / runs.CV_FILE).write_text(json.dumps(meta))
    from mabe import train

    # fold 1 wrote a checkpoint, then died (status failed, last.pt there): run_cv resumes it, trains fold 0
    one = cv.fold_config(cfg, 1, 2, meta["actions"])
    one.train.epochs = 1
    train.train(one, cv_dir / "fold1")
    runs.write_status(cv_dir / "fold1", state="failed")
    out = cv.run_cv(None, cv_dir)
    assert out["state"] == "finished"
    log = (cv_dir / "fold1" / "log.txt").read_text()
    assert "resumed" in log
    assert len(predictions.load(out["oof"]).video_id) > 0


def test_predict_of_a_cv_dir_means_its_folds_on_test_only(cv_run):
    _, cv_dir, _ = cv_run
    folds = [str(d) for d in runs.cv_fold_dirs(cv_dir)]
    assert evaluate.expand_cv([str(cv_dir)], "test") == folds
    assert evaluate.expand_cv(["some_run"], "val") == ["some_run"]
    with pytest.raises(MabeError, match="oof_predictions"):
        evaluate.expand_cv([str(cv_dir)], "val")


def _as_test(p: predictions.Predictions) -> predictions.Predictions:
    """The same tracks as other (test) videos, without labels."""
    return predictions.Predictions(probs=p.probs, offsets=p.offsets, video_id=p.video_id + 10**6, lab_id=p.lab_id,
                                   agent_id=p.agent_id, target_id=p.target_id, actions=p.actions,
                                   labeled=p.labeled, fps=p.fps)


def test_blend_and_submit_fit_on_the_oof_files_of_both_families_never_on_test_videos(cv_run, tmp_path):
    from mabe import blend, submit

    _, cv_dir, out = cv_run
    net = predictions.load(out["oof"])
    rng = np.random.default_rng(0)
    # a second family's out-of-fold file of the same train videos (as `mabe gbdt` writes one)
    gb = predictions.Predictions(**{**vars(net), "probs": np.clip(net.labels * 0.6 + rng.random(net.probs.shape) * 0.5,
                                                                  0, 1).astype(np.float16)})
    g_oof = gb.save(tmp_path / "gbdt_oof.npz")
    g_test, n_test = _as_test(gb).save(tmp_path / "g_test.npz"), _as_test(net).save(tmp_path / "n_test.npz")

    def run(fit, apply):
        return blend.main_from_args(argparse.Namespace(fit=fit, apply=apply, out=tmp_path / "b" / "test.npz",
                                                       step=0.5, weights=None, config=None, overrides=[]))

    run([g_oof, out["oof"]], [g_test, n_test])
    meta = json.loads((tmp_path / "b" / "blend.json").read_text())
    assert len(meta["grid"]) == 3 and meta["fit"] == [str(g_oof), str(out["oof"])]
    # an apply file holding an out-of-fold (train) video: refused, thresholds never fitted on submitted frames
    with pytest.raises(MabeError, match="share"):
        run([g_oof, out["oof"]], [g_test, out["oof"]])
    # mabe submit --fit takes the network's out-of-fold file as it takes the gbdt's
    sub = submit.main_from_args(argparse.Namespace(predictions=n_test, out=tmp_path / "s" / "sub.csv", fit=out["oof"],
                                                   thresholds=None, config=None, overrides=None))
    assert (tmp_path / "s" / "thresholds.json").is_file()
    assert not set(sub["video_id"].tolist()) & set(net.video_id.tolist())

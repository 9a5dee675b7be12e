"""The next problems a careful user hits after the obvious ones (issue 15, "go beyond")."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from helpers import error_line as _error_line
from helpers import run_cli
from mabe import cli, prepare
from mabe.config import FeatureConfig


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(argv, capsys)[:3]


def test_a_video_id_in_both_train_and_test_is_an_error(data, tmp_path, capsys):
    """Both rows would share one cache folder (the second 'already prepared'), and the index is keyed
    by video id: the test video would silently be the train video's features and labels."""
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv")
    lab, vid = train.loc[0, "lab_id"], train.loc[0, "video_id"]
    old_lab, old_vid = test.loc[0, "lab_id"], test.loc[0, "video_id"]
    test.loc[0, ["lab_id", "video_id"]] = [lab, vid]
    test.to_csv(data / "test.csv", index=False)
    (data / "test_tracking" / lab).mkdir(parents=True, exist_ok=True)
    shutil.move(data / "test_tracking" / old_lab / f"{old_vid}.parquet", data / "test_tracking" / lab / f"{vid}.parquet")

    rc, out, err = _run(["prepare", str(data), "--cache", str(tmp_path / "c"), "--workers", "1"], capsys)
    line = _error_line(rc, err, "prepare")
    assert "train.csv" in line and "test.csv" in line and "video_id" in line and str(vid) in line, line


def test_prepare_does_not_write_through_a_symlink_out_of_the_cache(data, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache_dir = prepare.cache_dir_for(cache, FeatureConfig())
    lab = pd.read_csv(data / "train.csv").loc[0, "lab_id"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (cache_dir / "videos").mkdir(parents=True)
    (cache_dir / "videos" / lab).symlink_to(outside)
    rc, out, err = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
    line = _error_line(rc, err, "prepare")
    assert "outside" in line and lab in line
    assert not list(outside.iterdir())


def test_cache_root_that_is_a_file_is_one_clear_error(data, tmp_path, capsys):
    (tmp_path / "cache").write_text("not a folder")
    rc, out, err = _run(["prepare", str(data), "--cache", str(tmp_path / "cache"), "--workers", "1"], capsys)
    line = _error_line(rc, err, "prepare")
    assert "cannot create" in line and str(tmp_path / "cache") in line and "Not a directory" in line, line


def test_runs_root_that_is_a_file_is_one_clear_error(data, tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    rc, out, err = _run(["train", "--data", str(data), "--name", "r", "--set", f"runs={tmp_path / 'runs'}",
                         "--set", f"cache={tmp_path / 'cache'}", "--set", "train.epochs=1",
                         "--set", "train.device=cpu"], capsys)
    line = _error_line(rc, err, "train")
    assert "cannot create" in line and str(tmp_path / "runs" / "r") in line, line


def _predictions(path: Path, lab: str = "LabA") -> Path:
    import numpy as np

    from mabe import predictions

    rng = np.random.default_rng(0)
    probs = rng.random((200, 2)).astype(np.float16)
    return predictions.save(path, probs, [0, 100, 200], [5, 5], [lab, lab], [1, 1], [2, 1], ["sniff", "rear"],
                            np.array([[True, False], [False, True]]), [30.0, 30.0])


@pytest.mark.parametrize("thresholds, warned", [
    ({"LabB": {"sniff": 0.3, "rear": 0.4}}, "no threshold for 2 of the 2"),  # another data set's labs
    ({"LabA": {"sniff": 0.3, "attack": 0.4}}, "no threshold for 1 of the 2"),  # another model's actions
    ({"LabA": {"sniff": 0.3, "rear": None}}, None),
])
def test_submit_warns_when_thresholds_do_not_cover_the_predictions(tmp_path, capsys, thresholds, warned):
    import json

    preds = _predictions(tmp_path / "test.npz")
    (tmp_path / "thr.json").write_text(json.dumps(thresholds))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = cli.main(["submit", str(preds), "--out", str(tmp_path / "sub.csv"), "--thresholds",
                       str(tmp_path / "thr.json")])
    assert rc == 0, capsys.readouterr().err
    hits = [str(w.message) for w in caught if "no threshold for" in str(w.message)]
    if warned is None:
        assert not hits
    else:
        assert len(hits) == 1 and warned in hits[0] and "thr.json" in hits[0], hits


TINY_TRAIN = [
    "model.conv_channels=[8]", "model.lstm_hidden=8", "model.lstm_layers=1", "train.epochs=1",
    "train.batch_size=8", "train.tensorboard=false", "train.report=false", "train.device=cpu", "train.steps_per_epoch=4",
]


def _index_videos(cache: Path) -> set[tuple[str, int]]:
    _, index = prepare.open_cache(prepare.cache_dir_for(cache, FeatureConfig()))
    return set(zip(index["lab_id"], index["video_id"].astype(int)))


def _csv_videos(root: Path) -> set[tuple[str, int]]:
    return {(r.lab_id, int(r.video_id)) for s in ("train", "test") if (root / f"{s}.csv").is_file()
            for r in pd.read_csv(root / f"{s}.csv").itertuples()}


def test_train_on_other_data_with_the_same_cache_uses_that_data(data, tmp_path, capsys):
    """The cache folder is named by the feature config only: a second data set prepared into the same
    cache root must not be mixed with (or replaced by) the first one's videos."""
    from mabe import synth

    cache = tmp_path / "cache"
    rc, *_ = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
    assert rc == 0 and _index_videos(cache) == _csv_videos(data)
    other = tmp_path / "other"
    synth.write_dataset(other, preset="tiny", seed=5, n_train=4)
    argv = ["train", "--data", str(other), "--name", "b", "--set", f"cache={cache}", "--set", f"runs={tmp_path / 'r'}"]
    for s in TINY_TRAIN:
        argv += ["--set", s]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    train_b = {(r.lab_id, int(r.video_id)) for r in pd.read_csv(other / "train.csv").itertuples()}
    assert _index_videos(cache) == train_b  # b's train split (prepared by mabe train), nothing of the first
    assert "4 to do" in out and "last prepared from" in out


def test_edited_metadata_rebuilds_that_video_and_drops_removed_rows(data, tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["prepare", str(data), "--cache", str(cache), "--workers", "1"]
    assert _run(argv, capsys)[0] == 0
    df = pd.read_csv(data / "train.csv")
    gone = (df.loc[0, "lab_id"], int(df.loc[0, "video_id"]))
    changed = (df.loc[1, "lab_id"], int(df.loc[1, "video_id"]))
    df.loc[1, "pix_per_cm_approx"] = df.loc[1, "pix_per_cm_approx"] * 2  # features in cm change
    df.iloc[1:].to_csv(data / "train.csv", index=False)
    (data / "train_tracking" / gone[0] / f"{gone[1]}.parquet").unlink()
    (data / "train_annotation" / gone[0] / f"{gone[1]}.parquet").unlink(missing_ok=True)
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    assert "6 already prepared, 1 to do" in out, out
    assert gone not in _index_videos(cache) and changed in _index_videos(cache)
    meta = prepare.load_video(prepare.cache_dir_for(cache, FeatureConfig()), *changed)["meta"]
    assert meta["pix_per_cm"] == pytest.approx(float(df.loc[1, "pix_per_cm_approx"]))


def test_a_cache_copied_without_its_data_is_used_as_it_is(data, tmp_path, capsys):
    from mabe.config import Config

    cache = tmp_path / "cache"
    assert _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)[0] == 0
    cfg = Config()
    cfg.cache = str(cache)
    assert prepare.ensure_prepared(tmp_path / "nowhere", cfg.features, cache, ["train"]) == \
        prepare.cache_dir_for(cache, cfg.features)

"""A damaged position cache (truncated or missing arrays, broken meta.json / index) is detected, named,
and rebuilt by the next ``mabe prepare``; ``mabe train`` says which video and what to run."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import error_line as _error_line
from helpers import run_cli as _run
from mabe import prepare
from mabe.config import FeatureConfig
from mabe.errors import MabeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN_SETTINGS = [  # as tests/test_bad_input.py: a tiny model, one epoch
    "model.conv_channels=[8]", "model.lstm_hidden=8", "model.lstm_layers=1", "train.epochs=1",
    "train.batch_size=8", "train.tensorboard=false", "train.report=false", "train.device=cpu", "train.steps_per_epoch=4",
]


@pytest.fixture
def prepared(tiny_data, tmp_path, capsys) -> tuple[Path, Path, Path]:
    """(data, cache root, the folder of one labelled training video) after a clean ``mabe prepare``."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    rc, *_ = _run(["prepare", str(data), "--cache", str(tmp_path / "cache"), "--workers", "1"], capsys)
    assert rc == 0
    cache_dir = prepare.cache_dir_for(tmp_path / "cache", FeatureConfig())
    _, index = prepare.open_cache(cache_dir)
    row = index[(index["split"] == "train") & index["has_labels"]].iloc[0]
    return data, tmp_path / "cache", prepare.video_dir(cache_dir, row["lab_id"], row["video_id"])


def _train(data: Path, cache: Path, tmp_path: Path, capsys, name: str = "run"):
    argv = ["train", "--data", str(data), "--name", name, "--set", f"cache={cache}",
            "--set", f"runs={tmp_path / 'runs'}"]
    for s in TRAIN_SETTINGS:
        argv += ["--set", s]
    return _run(argv, capsys)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated-xy": (lambda v: _truncate(v / "xy.npy"), "xy.npy"),
    "truncated-intervals-header": (lambda v: (v / "intervals.npy").write_bytes(b"\x93NUMPY"), "intervals.npy"),
    "empty-xy": (lambda v: (v / "xy.npy").write_bytes(b""), "xy.npy"),
    "missing-labeled": (lambda v: (v / "labeled.npy").unlink(), "labeled.npy"),
    "broken-meta": (lambda v: (v / "meta.json").write_text('{"lab": "Ad'), "meta.json"),
    "meta-not-a-dict": (lambda v: (v / "meta.json").write_text("[1, 2]"), "meta.json"),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_train_names_the_damaged_video_and_prepare_rebuilds_it(case, prepared, tmp_path, capsys):
    data, cache, video = prepared
    good = {p.name: p.read_bytes() for p in video.iterdir()}
    damage, file = DAMAGE[case]
    damage(video)

    rc, out, err, _ = _train(data, cache, tmp_path, capsys)
    line = _error_line(rc, err, "train")
    assert str(video) in line and file in line and "mabe prepare" in line, line

    rc, out, err, caught = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
    assert rc == 0, err
    assert "1 damaged" in out and f"{video.parent.name}/{video.name}" in out and file in out, out
    assert "7 already prepared, 1 to do" in out
    for name, content in good.items():  # rebuilt bit for bit (meta.json: same content)
        if name == "meta.json":
            assert json.loads((video / name).read_text()) == json.loads(content)
        else:
            assert (video / name).read_bytes() == content, name
    if case == "truncated-xy":  # and training reads it again (once: each run costs seconds)
        rc, out, err, _ = _train(data, cache, tmp_path, capsys)
        assert rc == 0, err


def test_damaged_index_is_named_and_rebuilt(prepared, tmp_path, capsys):
    data, cache, video = prepared
    index = prepare.cache_dir_for(cache, FeatureConfig()) / "index.parquet"
    before = pd.read_parquet(index)
    _truncate(index)
    rc, out, err, _ = _train(data, cache, tmp_path, capsys)
    line = _error_line(rc, err, "train")
    assert "index.parquet" in line and "mabe prepare" in line
    rc, out, err, _ = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
    assert rc == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(index), before)


def test_meta_records_file_sizes_and_a_layout_version(prepared):
    _, _, video = prepared
    meta = json.loads((video / "meta.json").read_text())
    assert meta["layout"] == prepare.CACHE_LAYOUT
    assert meta["files"] == {p.name: p.stat().st_size for p in video.glob("*.npy")}


def _as_float32_cache(video: Path) -> None:
    """Turn a cached video folder into one of the old float32 feature cache (layout 2)."""
    meta = json.loads((video / "meta.json").read_text())
    for p in video.iterdir():
        p.unlink()
    np.save(video / "scene.npy", np.zeros((meta["n_frames"], 288), np.float32))
    meta.update(layout=2, files={"scene.npy": (video / "scene.npy").stat().st_size})
    (video / "meta.json").write_text(json.dumps(meta))


def test_a_cache_of_the_old_float32_layout_is_named_and_rebuilt(prepared, tmp_path, capsys):
    """Folders written by the float32 feature cache (layout 2): check_video says so, `mabe prepare` rebuilds
    them naming the folder, and `mabe train` on such a cache rebuilds it first (with a message) and trains."""
    data, cache, video = prepared
    good = (video / "xy.npy").read_bytes()
    _as_float32_cache(video)
    assert "layout 2" in prepare.check_video(video) and "float32" in prepare.check_video(video)
    with pytest.raises(MabeError, match="layout 2"):
        prepare.read_video(video.parents[2], video.parent.name, video.name)
    rc, out, err, _ = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
    assert rc == 0, err
    assert "rebuilding 1 cached video(s)" in out and "layout 2 (the float32 feature cache)" in out, out
    assert str(video.parents[1]) in out and "7 already prepared, 1 to do" in out
    assert (video / "xy.npy").read_bytes() == good and not (video / "scene.npy").exists()

    cache_dir = video.parents[2]
    for meta in cache_dir.glob("videos/*/*/meta.json"):
        _as_float32_cache(meta.parent)
    rc, out, err, _ = _train(data, cache, tmp_path, capsys)
    assert rc == 0, err
    assert "written by cache layout 2" in out and str(cache_dir) in out, out
    _, index = prepare.open_cache(cache_dir)  # the training videos rebuilt (train prepares its split)
    assert all(prepare.check_video(cache_dir / p) is None for p in index.loc[index["split"] == "train", "path"])


def test_disk_full_while_writing_says_so_and_keeps_the_rest(tiny_data, tmp_path, capsys, monkeypatch):
    """ENOSPC in the middle of prepare: not a 'bad tracking file'; nothing half-written is left, and the
    next run resumes."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    real_save, calls = np.save, {"n": 0}

    def save(path, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the third video (3 arrays a video)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(prepare.np, "save", save)
    cache = tmp_path / "cache"
    argv = ["prepare", str(data), "--cache", str(cache), "--workers", "1"]
    rc, out, err, _ = _run(argv + ["--skip-bad"], capsys)  # a full disk is no bad video to skip
    line = _error_line(rc, err, "prepare")
    assert "No space left on device" in line and "cannot write" in line and "mabe prepare" in line, line
    assert ".parquet" not in line  # not blamed on the input
    cache_dir = prepare.cache_dir_for(cache, FeatureConfig())
    assert not list(cache_dir.glob("videos/*/.tmp-*"))
    monkeypatch.setattr(prepare.np, "save", real_save)
    rc, out, err, _ = _run(argv, capsys)
    assert rc == 0, err
    assert "2 already prepared, 6 to do" in out


def test_video_being_written_by_another_process_is_not_touched(tiny_data, tmp_path, capsys):
    import subprocess
    import sys

    from test_crash import _env, _kill

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cache = tmp_path / "cache"
    cache_dir = prepare.cache_dir_for(cache, FeatureConfig())
    row = pd.read_csv(data / "train.csv").iloc[0]
    lock = prepare.video_lock_path(cache_dir, row["lab_id"], row["video_id"])
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mabe import paths; l = paths.lock(sys.argv[1], 'x'); "
         "print('held', flush=True); sys.stdin.read()", str(lock)],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, out, err, _ = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
        line = _error_line(rc, err, "prepare")
        assert f"{row['lab_id']}/{row['video_id']}" in line and f"process {holder.pid}" in line, line
    finally:
        _kill(holder)
    rc, out, err, _ = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)
    assert rc == 0, err

"""Names read from files (lab ids, video ids, run names, cache entries) never lead outside their root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers import error_line as _error_line
from helpers import run_cli
from mabe import paths, prepare
from mabe.errors import MabeDataError, MabeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(argv, capsys)[:3]


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_lab_id_with_dot_dot_cannot_escape_the_cache(tiny_data, tmp_path, capsys):
    """The issue's case: lab_id ``../../../escape`` with a tracking file where that path points."""
    data = tmp_path / "d1" / "d2" / "data"
    shutil.copytree(tiny_data, data)
    df = pd.read_csv(data / "train.csv")
    lab, vid = df.loc[0, "lab_id"], df.loc[0, "video_id"]
    evil = "../../../escape"
    target = data / "train_tracking" / evil / f"{vid}.parquet"  # where the csv's path points
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "train_tracking" / lab / f"{vid}.parquet", target)
    df["lab_id"] = df["lab_id"].astype(object)
    df.loc[0, "lab_id"] = evil
    df.to_csv(data / "train.csv", index=False)
    cache = tmp_path / "deep" / "a" / "b" / "cache"
    before = _files_under(tmp_path)

    rc, _, err = _run(["prepare", str(data), "--cache", str(cache), "--workers", "1"], capsys)

    line = _error_line(rc, err, "prepare")
    assert "train.csv" in line and "'lab_id'" in line and evil in line
    written = _files_under(tmp_path) - before
    outside = [p for p in written if cache not in p.parents]
    assert not outside, outside
    assert not (tmp_path / "deep" / "a" / "b" / "escape").exists()


@pytest.mark.parametrize("bad", ["a/b", "..", ".hidden", "-rf", "lab\\x", "with space", "", "x" * 200])
def test_safe_name_refuses_what_is_not_one_plain_component(bad):
    with pytest.raises(MabeDataError) as err:
        paths.safe_name(bad, "train.csv", "lab_id")
    assert "train.csv" in str(err.value) and "'lab_id'" in str(err.value)


def test_safe_name_accepts_real_looking_names():
    for good in ("AdaptableSnail", "CalMS21_task1", "CRIM13", "20261202-053300", "run.v2"):
        assert paths.safe_name(good, "f", "x") == good
    assert paths.safe_name(438887472, "f", "video_id") == "438887472"
    with pytest.raises(MabeDataError):
        paths.safe_name(-3, "f", "video_id")


def test_every_real_lab_and_video_id_is_a_safe_name(real_data):
    for split in ("train", "test"):
        df = pd.read_csv(real_data / f"{split}.csv")
        for lab in df["lab_id"].unique():
            paths.safe_name(lab, split, "lab_id")
        for vid in df["video_id"].to_numpy():
            paths.safe_name(vid, split, "video_id")


def test_cache_paths_validate_lab_and_video(tmp_path):
    """A tampered index.parquet / meta.json names a lab that climbs out: refused before any access."""
    with pytest.raises(MabeDataError):
        prepare.video_dir(tmp_path, "../../etc", 1)
    with pytest.raises(MabeDataError):
        prepare.video_dir(tmp_path, "Lab", "../1")


def test_within_refuses_a_symlinked_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert paths.within(root, root / "a" / "b") == root / "a" / "b"
    with pytest.raises(MabeError, match="outside"):
        paths.within(root, root / "link" / "elsewhere")


@pytest.mark.parametrize("name", ["../escaped", "a/b", "/abs/olute"])
def test_run_name_cannot_leave_the_runs_root(tiny_data, tmp_path, capsys, name):
    rc, _, err = _run(["train", "--data", str(tiny_data), "--name", name, "--set", f"cache={tmp_path / 'cache'}",
                       "--set", f"runs={tmp_path / 'runs' / 'r'}", "--set", "train.epochs=1",
                       "--set", "train.device=cpu", "--set", "train.report=false",
                       "--set", "train.tensorboard=false"], capsys)
    line = _error_line(rc, err, "train")
    assert "name" in line and repr(name) in line
    assert not (tmp_path / "runs" / "escaped").exists()
    assert not Path("/abs/olute").exists()
    assert not (tmp_path / "runs").exists()  # refused before anything was created

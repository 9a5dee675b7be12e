"""Malformed input through the user-facing entry points: ``mabe prepare`` and ``mabe train``.

Each case copies the tiny synthetic dataset, corrupts one file and runs the command the way a user
would (``mabe.cli.main``). The expected outcome is one of:

- ``Error(file, field)``: exit code 2 and exactly one line on stderr, ``mabe <cmd>: error: ...``,
  naming the file and the field (no traceback, nothing from deep inside numpy or pyarrow);
- ``Warn(text)``: exit code 0, a warning with that text, and the documented safe handling (checked
  per case where there is something to check: points set to NaN, intervals dropped, rows ignored).

The per-function reader errors (every field of every file) are in tests/test_data.py; this suite
checks that they reach the user as one clear line from the commands, and the cases only an entry
point can see (empty dataset, a csv row without its parquet, a config with a wrong type...).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helpers import run_cli as _run
from mabe import prepare
from mabe.config import FeatureConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process runs: one intra-op thread


@dataclass(frozen=True)
class Error:
    file: str  # a path fragment the message must contain ("{tracking}" etc. are filled per case)
    field: str | None  # the field the message must name (None: a whole-file problem)
    text: str = ""  # more text the message must contain


@dataclass(frozen=True)
class Warn:
    text: str  # text of a warning that must be raised
    check: str | None = None  # name of an extra check on the prepared cache


# ----------------------------------------------------------------------------- the dataset


def _row(root: Path, i: int = 0) -> pd.Series:
    return pd.read_csv(root / "train.csv").iloc[i]


def _tracking(root: Path, i: int = 0) -> Path:
    r = _row(root, i)
    return root / "train_tracking" / r["lab_id"] / f"{r['video_id']}.parquet"


def _annotation(root: Path, i: int = 0) -> Path:
    r = _row(root, i)
    return root / "train_annotation" / r["lab_id"] / f"{r['video_id']}.parquet"


def _edit_table(path: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _edit_values(path: Path, name: str, fn) -> None:
    """Replace column ``name`` by ``fn(numpy values)`` (same dtype)."""
    def edit(t: pa.Table) -> pa.Table:
        values = t.column(name).to_numpy().copy()
        out = fn(values)
        return _set_column(t, name, pa.array(out, type=t.schema.field(name).type))
    _edit_table(path, edit)


def _edit_csv(root: Path, fn, split: str = "train") -> None:
    df = pd.read_csv(root / f"{split}.csv")
    df = fn(df)
    df.to_csv(root / f"{split}.csv", index=False)


def _csv_value(col: str, value, row: int = 0):
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return lambda root: _edit_csv(root, edit)


def _every(n: int):
    return lambda v: np.arange(len(v)) % n == 0


# ----------------------------------------------------------------------------- corruptions


def truncate(path_of):
    def go(root):
        p = path_of(root)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return go


def empty_file(path_of):
    return lambda root: path_of(root).write_bytes(b"")


def zero_rows(path_of):
    return lambda root: _edit_table(path_of(root), lambda t: t.slice(0, 0))


def cast(path_of, name, typ):
    return lambda root: _edit_table(path_of(root), lambda t: _set_column(t, name, t.column(name).cast(typ)))


def drop_column(path_of, name):
    return lambda root: _edit_table(path_of(root), lambda t: t.drop_columns([name]))


def x_as_text(root):
    _edit_table(_tracking(root), lambda t: _set_column(t, "x", pc.cast(t.column("x"), pa.string())))


def coords(fn):
    """Apply ``fn(x, y) -> (x, y)`` to the first video's tracking coordinates."""
    def go(root):
        def edit(t):
            x, y = fn(t.column("x").to_numpy().astype(np.float64), t.column("y").to_numpy().astype(np.float64))
            t = _set_column(t, "x", pa.array(x, type=t.schema.field("x").type))
            return _set_column(t, "y", pa.array(y, type=t.schema.field("y").type))
        _edit_table(_tracking(root), edit)
    return go


def _nan_some(x, y):
    x[::7] = np.nan
    return x, y


def _inf_some(x, y):
    x[::50] = np.inf
    y[1::50] = -np.inf
    return x, y


def _far_some(x, y):
    x[::40] += 1e6  # 1 km to the right of a 1,000-pixel frame
    return x, y


def _far_all(x, y):
    return x * 1000.0, y * 1000.0  # tracking in another unit than the metadata's frame size


def negative_frame(root):
    _edit_values(_tracking(root), "video_frame", lambda v: np.where(np.arange(len(v)) == 3, -5, v))


def duplicate_rows(root):
    _edit_table(_tracking(root), lambda t: pa.concat_tables([t, t.slice(10, 3)]))


def unknown_bodypart(root):
    def edit(t):
        parts = t.column("bodypart").to_pylist()
        parts[::9] = ["left_wing"] * len(parts[::9])
        return _set_column(t, "bodypart", pa.array(parts, type=t.schema.field("bodypart").type))
    _edit_table(_tracking(root), edit)


def mouse_out_of_range(root):
    _edit_values(_tracking(root), "mouse_id", lambda v: np.where(np.arange(len(v)) == 5, 7, v))


def null_mouse(root):
    def edit(t):
        v = t.column("mouse_id").to_pylist()
        v[2] = None
        return _set_column(t, "mouse_id", pa.array(v, type=t.schema.field("mouse_id").type))
    _edit_table(_tracking(root), edit)


def one_frame_video(root):
    _edit_table(_tracking(root), lambda t: t.filter(pc.equal(t.column("video_frame"), 0)))


def all_points_missing(root):
    _edit_table(_tracking(root), lambda t: _set_column(
        _set_column(t, "x", pa.nulls(t.num_rows, t.schema.field("x").type)), "y", pa.nulls(t.num_rows, t.schema.field("y").type)))


def ann_value(name, value, row=0):
    return lambda root: _edit_values(_annotation(root), name, lambda v: np.where(np.arange(len(v)) == row, value, v))


def ann_start_after_stop(root):
    def edit(t):
        start = t.column("start_frame").to_numpy().copy()
        stop = t.column("stop_frame").to_numpy().copy()
        start[1], stop[1] = stop[1] + 5, start[1]
        t = _set_column(t, "start_frame", pa.array(start, type=t.schema.field("start_frame").type))
        return _set_column(t, "stop_frame", pa.array(stop, type=t.schema.field("stop_frame").type))
    _edit_table(_annotation(root), edit)


def ann_unknown_action(root):
    def edit(t):
        a = t.column("action").to_pylist()
        a[0] = "dance"
        return _set_column(t, "action", pa.array(a, type=t.schema.field("action").type))
    _edit_table(_annotation(root), edit)


def ann_absent_mouse(root):
    """An interval for mouse 4 in a video that tracks mice 1-3 (row 0: AdaptableSnail, 3 mice)."""
    def edit(t):
        extra = t.slice(0, 1).to_pylist()[0]
        extra.update(agent_id=4, target_id=1)
        return pa.concat_tables([t, pa.Table.from_pylist([extra], schema=t.schema)])
    _edit_table(_annotation(root), edit)


def ann_past_end(root):
    _edit_values(_annotation(root), "stop_frame", lambda v: np.where(np.arange(len(v)) == 0, 30_000, v))


def row_without_parquet(root):
    _tracking(root, 2).unlink()


def parquet_without_row(root):
    shutil.copy(_tracking(root), root / "train_tracking" / _row(root)["lab_id"] / "999999.parquet")


def csv_header_only(root):
    for split in ("train", "test"):
        _edit_csv(root, lambda df: df.iloc[:0], split)


def no_csv(root):
    (root / "train.csv").unlink()
    (root / "test.csv").unlink()


def csv_missing_column(root):
    _edit_csv(root, lambda df: df.drop(columns=["pix_per_cm_approx"]))


def csv_duplicate_video(root):
    def edit(df):
        df.loc[1, "video_id"] = df.loc[0, "video_id"]
        return df
    _edit_csv(root, edit)


def csv_garbage(root):
    (root / "train.csv").write_bytes(bytes(range(256)) * 4)


TRACKING = "{tracking}"
ANNOTATION = "{annotation}"
CSV = "train.csv"

# id -> (corruption, expected outcome of `mabe prepare`)
PREPARE_CASES: dict[str, tuple] = {
    # --- tracking parquet
    "tracking-truncated": (truncate(_tracking), Error(TRACKING, None, "readable")),
    "tracking-empty-file": (empty_file(_tracking), Error(TRACKING, None, "readable")),
    "tracking-zero-rows": (zero_rows(_tracking), Error(TRACKING, None, "at least one tracking row")),
    "tracking-frame-as-float": (cast(_tracking, "video_frame", pa.float64()), Error(TRACKING, "video_frame")),
    "tracking-mouse-as-text": (cast(_tracking, "mouse_id", pa.string()), Error(TRACKING, "mouse_id")),
    "tracking-x-as-text": (x_as_text, Error(TRACKING, "x")),
    "tracking-missing-column": (drop_column(_tracking, "y"), Error(TRACKING, "y")),
    "tracking-nan-coordinates": (coords(_nan_some), Warn("", "nan_is_missing")),
    "tracking-inf-coordinates": (coords(_inf_some), Warn("infinite x/y read as missing")),
    "tracking-far-outside-video": (coords(_far_some), Warn("far outside the", "far_points_dropped")),
    "tracking-all-outside-video": (coords(_far_all), Error(TRACKING, "x, y", "video_width_pix")),
    "tracking-negative-frame": (negative_frame, Error(TRACKING, "video_frame", "min -5")),
    "tracking-duplicate-rows": (duplicate_rows, Error(TRACKING, "video_frame, mouse_id, bodypart", "duplicate")),
    "tracking-unknown-bodypart": (unknown_bodypart, Error(TRACKING, "bodypart", "left_wing")),
    "tracking-mouse-out-of-range": (mouse_out_of_range, Error(TRACKING, "mouse_id", "max 7")),
    "tracking-null-mouse": (null_mouse, Error(TRACKING, "mouse_id", "null")),
    "tracking-one-frame": (one_frame_video, Warn("run past the video's 1 frames, clipped", "short_video_kept")),
    "tracking-no-points": (all_points_missing, Warn("no tracked point")),
    # --- annotation parquet
    "annotation-truncated": (truncate(_annotation), Error(ANNOTATION, None, "readable")),
    "annotation-empty-file": (empty_file(_annotation), Error(ANNOTATION, None, "readable")),
    "annotation-missing-column": (drop_column(_annotation, "action"), Error(ANNOTATION, "action")),
    "annotation-frame-as-float": (cast(_annotation, "start_frame", pa.float32()), Error(ANNOTATION, "start_frame")),
    "annotation-mouse-out-of-range": (ann_value("agent_id", 9), Error(ANNOTATION, "agent_id", "9")),
    "annotation-negative-start": (ann_value("start_frame", -3), Error(ANNOTATION, "start_frame", "-3")),
    "annotation-start-after-stop": (ann_start_after_stop, Error(ANNOTATION, "start_frame, stop_frame")),
    "annotation-unknown-action": (ann_unknown_action, Error(ANNOTATION, "action", "dance")),
    "annotation-absent-mouse": (ann_absent_mouse, Warn("absent from the tracking", "absent_mouse_dropped")),
    "annotation-past-the-end": (ann_past_end, Warn("clipped")),
    # --- metadata csv and the files it lists
    "csv-behaviors-not-json": (_csv_value("behaviors_labeled", "[mouse1,mouse2"), Error(CSV, "behaviors_labeled")),
    "csv-behaviors-unknown-action": (_csv_value("behaviors_labeled", '["mouse1,mouse2,dance"]'),
                                     Error(CSV, "behaviors_labeled", "dance")),
    "csv-behaviors-bad-mouse": (_csv_value("behaviors_labeled", '["mouse1,mouse9,sniff"]'),
                                Error(CSV, "behaviors_labeled", "mouse9")),
    "csv-behaviors-not-a-triple": (_csv_value("behaviors_labeled", '["mouse1,sniff"]'), Error(CSV, "behaviors_labeled")),
    "csv-body-parts-unknown": (_csv_value("body_parts_tracked", '["nose", "wing"]'), Error(CSV, "body_parts_tracked", "wing")),
    "csv-fps-zero": (_csv_value("frames_per_second", 0.0), Error(CSV, "frames_per_second")),
    "csv-fps-text": (_csv_value("frames_per_second", "fast"), Error(CSV, "frames_per_second", "fast")),
    "csv-fps-missing": (_csv_value("frames_per_second", np.nan), Error(CSV, "frames_per_second")),
    "csv-pix-per-cm-negative": (_csv_value("pix_per_cm_approx", -2.0), Error(CSV, "pix_per_cm_approx")),
    "csv-width-zero": (_csv_value("video_width_pix", 0), Error(CSV, "video_width_pix")),
    "csv-video-id-text": (_csv_value("video_id", "abc"), Error(CSV, "video_id", "abc")),
    "csv-duplicate-video": (csv_duplicate_video, Error(CSV, "video_id", "duplicated")),
    "csv-missing-column": (csv_missing_column, Error(CSV, "columns", "pix_per_cm_approx")),
    "csv-garbage": (csv_garbage, Error(CSV, None)),
    "csv-row-without-parquet": (row_without_parquet, Error("{tracking2}", None, "no such file")),
    "parquet-without-csv-row": (parquet_without_row, Warn("999999.parquet", "orphan_ignored")),
    "empty-dataset": (csv_header_only, Error(CSV, None, "no video")),
    "no-metadata-at-all": (no_csv, Error("", None, "train.csv and/or test.csv")),
}


def _fill(text: str, root: Path) -> str:
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    return text.format(tracking=rel(_tracking(root)), annotation=rel(_annotation(root)),
                       tracking2=rel(_tracking(root, 2)))


def assert_one_line_error(rc: int, err: str, command: str, *fragments: str) -> str:
    assert rc == 2, f"exit code {rc}, stderr: {err}"
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("prepare:", "\r"))
             and "it/s]" not in ln and "video/s]" not in ln]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"mabe {command}: error: "), line
    assert "Traceback" not in err
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"
    return line


# ----------------------------------------------------------------------------- mabe prepare


@pytest.mark.parametrize("case", list(PREPARE_CASES), ids=list(PREPARE_CASES))
def test_prepare(case, data, tmp_path, capsys):
    corrupt, expected = PREPARE_CASES[case]
    file_fragment = _fill(expected.file, data) if isinstance(expected, Error) else ""
    corrupt(data)
    cache_root = tmp_path / "cache"
    rc, out, err, warned = _run(["prepare", str(data), "--cache", str(cache_root), "--workers", "1"], capsys)
    if isinstance(expected, Error):
        fragments = [file_fragment, expected.text] + ([f"field {expected.field!r}"] if expected.field else [])
        assert_one_line_error(rc, err, "prepare", *[f for f in fragments if f])
        return
    assert rc == 0, err
    assert "Traceback" not in err
    if expected.text:
        assert any(expected.text in w for w in warned), warned
    if expected.check:
        CHECKS[expected.check](data, prepare.cache_dir_for(cache_root, FeatureConfig()), warned)


# ----------------------------------------------------------------------------- checks of the safe handling


def _video(cache: Path, root: Path, i: int = 0) -> dict:
    r = _row(root, i)
    return prepare.load_video(cache, r["lab_id"], int(r["video_id"]))


def _positions(v: dict) -> np.ndarray:
    """Scene positions (T, 4 mice, 18 slots, 2) cm from the cached scene features."""
    return v["scene"][:, : 4 * 18 * 2].reshape(len(v["scene"]), 4, 18, 2)


def nan_is_missing(root: Path, cache: Path, warned: list[str]) -> None:
    v = _video(cache, root)
    assert np.isfinite(_positions(v)).any()  # the video is still there, gaps interpolated or NaN


def far_points_dropped(root: Path, cache: Path, warned: list[str]) -> None:
    msg = next(w for w in warned if "far outside" in w)
    assert "point(s)" in msg and _tracking(root).name in msg
    r = _row(root)
    pos = _positions(_video(cache, root))
    half = max(r["video_width_pix"], r["video_height_pix"]) / r["pix_per_cm_approx"]
    assert np.nanmax(np.abs(pos)) < 2 * half  # no point kept 1 km away (arena-centred cm)


def short_video_kept(root: Path, cache: Path, warned: list[str]) -> None:
    v = _video(cache, root)
    assert v["meta"]["n_frames"] == 1 and v["scene"].shape[0] == 1


def absent_mouse_dropped(root: Path, cache: Path, warned: list[str]) -> None:
    v = _video(cache, root)
    assert [4, 1] not in v["meta"]["pairs"] and v["labels"].shape[0] == len(v["meta"]["pairs"])


def orphan_ignored(root: Path, cache: Path, warned: list[str]) -> None:
    _, index = prepare.open_cache(cache)
    assert 999999 not in set(index["video_id"])


CHECKS = {f.__name__: f for f in (nan_is_missing, far_points_dropped, short_video_kept, absent_mouse_dropped,
                                  orphan_ignored)}


# ----------------------------------------------------------------------------- --skip-bad


def test_skip_bad_finishes_and_lists_what_it_skipped(data, tmp_path, capsys):
    truncate(_tracking)(data)  # row 0: unreadable tracking
    ann_start_after_stop_at = _annotation(data, 3)
    _edit_table(ann_start_after_stop_at, lambda t: _set_column(
        t, "start_frame", pa.array(np.full(t.num_rows, 10_000), type=t.schema.field("start_frame").type)))
    _csv_value("frames_per_second", 0.0, row=4)(data)  # a metadata problem of one row
    bad = [_row(data, i) for i in (0, 3, 4)]
    cache_root = tmp_path / "cache"
    rc, out, err, warned = _run(["prepare", str(data), "--cache", str(cache_root), "--workers", "1", "--skip-bad"],
                                capsys)
    assert rc == 0, err
    assert "skipped 3 bad video(s)" in out
    listing = out[out.index("skipped 3 bad video(s)"):]
    for r, why in zip(bad, ("readable", "start_frame", "frames_per_second")):
        line = next(ln for ln in listing.splitlines() if f"{r['lab_id']}/{r['video_id']}:" in ln)
        assert why in line, line
    cache = prepare.cache_dir_for(cache_root, FeatureConfig())
    skipped = json.loads((cache / "skipped.json").read_text())
    assert sorted(int(s["video_id"]) for s in skipped) == sorted(int(r["video_id"]) for r in bad)
    assert all(s["reason"] for s in skipped)
    _, index = prepare.open_cache(cache)
    assert set(index["video_id"]) == (set(pd.read_csv(data / "train.csv")["video_id"])
                                      | set(pd.read_csv(data / "test.csv")["video_id"])) - {int(r["video_id"]) for r in bad}


# ----------------------------------------------------------------------------- mabe train


TRAIN_SETTINGS = [
    "model.conv_channels=[8]", "model.lstm_hidden=8", "model.lstm_layers=1", "train.epochs=1",
    "train.batch_size=8", "train.tensorboard=false", "train.report=false", "train.device=cpu",
]


def _train_argv(data: Path, tmp_path: Path, *extra: str, config: Path | None = None) -> list[str]:
    argv = ["train", "--data", str(data), "--name", "run", "--set", f"cache={tmp_path / 'cache'}",
            "--set", f"runs={tmp_path / 'runs'}"]
    for s in (*(TRAIN_SETTINGS if config is None else ()), *extra):
        argv += ["--set", s]
    if config is not None:
        argv += ["--config", str(config)]
    return argv


CONFIG_CASES = {
    "wrong-type": ("train:\n  batch_size: lots\n", "train.batch_size must be int"),
    "unknown-key": ("train:\n  epochz: 3\n", "train.epochz"),
    "out-of-range": ("train:\n  lr: -1.0\n", "train.lr=-1.0 is out of range"),
    "bad-choice": ("task:\n  mode: solo\n", "task.mode must be one of"),
    "not-a-mapping": ("- just\n- a list\n", "top level must be a mapping"),
    "not-yaml": ("train: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES), ids=list(CONFIG_CASES))
def test_train_bad_config(case, data, tmp_path, capsys):
    text, expected = CONFIG_CASES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    rc, out, err, _ = _run(_train_argv(data, tmp_path, config=cfg), capsys)
    assert_one_line_error(rc, err, "train", "bad.yaml", expected)
    assert not (tmp_path / "runs").exists()  # nothing started


def test_train_bad_override_names_the_key(data, tmp_path, capsys):
    rc, out, err, _ = _run(_train_argv(data, tmp_path, "train.batch_size=[1, 2]"), capsys)
    assert_one_line_error(rc, err, "train", "train.batch_size must be int")


def test_train_empty_dataset(data, tmp_path, capsys):
    csv_header_only(data)
    rc, out, err, _ = _run(_train_argv(data, tmp_path), capsys)
    assert_one_line_error(rc, err, "train", "train.csv", "no video")


def test_train_no_labelled_videos(data, tmp_path, capsys):
    shutil.rmtree(data / "train_annotation")
    _edit_csv(data, lambda df: df.assign(behaviors_labeled="[]"))
    rc, out, err, _ = _run(_train_argv(data, tmp_path), capsys)
    assert_one_line_error(rc, err, "train", "no labelled training videos")


def test_train_videos_shorter_than_one_window_are_padded(data, tmp_path, capsys):
    """Every video is shorter than sequence_length: one window per track, padded; the padding is
    masked out of the loss and the metrics (windows.gather's ``valid``)."""
    longest = int(pd.read_csv(data / "train.csv")["video_duration_sec"].mul(
        pd.read_csv(data / "train.csv")["frames_per_second"]).max())
    rc, out, err, _ = _run(_train_argv(data, tmp_path, f"windows.sequence_length={longest + 200}"), capsys)
    assert rc == 0, err
    run = tmp_path / "runs" / "run"
    metrics = json.loads((run / "eval" / "val_metrics.json").read_text())
    assert np.isfinite(metrics["f1_macro"]) and np.isfinite(metrics["accuracy"])
    rows = pd.read_csv(run / "metrics.csv")
    assert np.isfinite(rows["loss"]).all() and np.isfinite(rows["val_loss"]).all()

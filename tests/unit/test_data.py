"""The reader: metadata csv, tracking and annotation parquet, intervals -> frames, the per-lab summary.

Every malformed case is a small file written here; each error test checks the error type and that
the message names the file and the field, so a user can find the bad value.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mabe import data
from mabe.data import ACTIONS, DEFAULT_SLOTS, MabeDataWarning
from mabe.errors import MabeDataError

SLOT = {s: i for i, s in enumerate(DEFAULT_SLOTS)}


# ----------------------------------------------------------------------------- builders


def write_parquet(path: Path, columns: dict, **kw) -> Path:
    """Columns (name -> list or pyarrow array) -> parquet at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, **kw)
    return path


def tracking_columns() -> dict:
    """A tiny valid long-format table: 2 mice, a gap at frame 1, headpiece markers on mouse 1."""
    return {
        "video_frame": pa.array([0, 0, 0, 0, 2, 2, 2, 2], pa.int64()),
        "mouse_id": pa.array([1, 1, 1, 2, 1, 1, 1, 2], pa.int64()),
        "bodypart": ["nose", "headpiece_topfrontleft", "headpiece_bottombackright", "nose",
                     "nose", "headpiece_topfrontleft", "tail_base", "tail_base"],
        "x": pa.array([1.0, 10.0, 20.0, 3.0, 4.0, 30.0, 5.0, 6.0]),
        "y": pa.array([2.0, 40.0, 60.0, 4.0, 8.0, 50.0, 9.0, 7.0]),
    }


def annotation_columns(**override) -> dict:
    cols = {
        "agent_id": pa.array([1, 2, 1], pa.int8()),
        "target_id": pa.array([2, 1, 1], pa.int8()),
        "action": ["sniff", "attack", "rear"],
        "start_frame": pa.array([0, 5, 10], pa.int32()),
        "stop_frame": pa.array([4, 9, 12], pa.int32()),
    }
    cols.update(override)
    return cols


def metadata_row(video_id: int, lab: str = "LabA", **override) -> dict:
    """One valid train.csv row: 2 mice, 30 fps, 7 parts, two labelled triples."""
    row: dict = {c: None for c in data.METADATA_COLUMNS}
    for m in (1, 2):
        row.update({f"mouse{m}_strain": "C57Bl/6J", f"mouse{m}_color": "black", f"mouse{m}_sex": "male",
                    f"mouse{m}_id": float(m), f"mouse{m}_age": "8 weeks", f"mouse{m}_condition": "none"})
    row.update({
        "lab_id": lab, "video_id": video_id, "frames_per_second": 30.0, "video_duration_sec": 60.0,
        "pix_per_cm_approx": 10.0, "video_width_pix": 640, "video_height_pix": 480, "arena_width_cm": 40.0,
        "arena_height_cm": 40.0, "arena_shape": "square", "arena_type": "familiar",
        "body_parts_tracked": json.dumps(["nose", "ear_left", "ear_right", "neck", "hip_left", "hip_right",
                                          "tail_base"]),
        "behaviors_labeled": json.dumps(["mouse1,mouse2,sniff", "mouse1,self,rear"]),
        "tracking_method": "MARS",
    })
    row.update(override)
    return row


def write_csv(root: Path, rows: list[dict], split: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{split}.csv"
    pd.DataFrame(rows, columns=list(data.METADATA_COLUMNS)).to_csv(path, index=False)
    return path


def write_dataset(root: Path, video_ids=(101, 102), tracking=True, annotation=True, lab="LabA") -> Path:
    """A metadata csv with matching tracking / annotation files."""
    write_csv(root, [metadata_row(v, lab) for v in video_ids])
    for v in video_ids:
        if tracking:
            write_parquet(root / "train_tracking" / lab / f"{v}.parquet", tracking_columns())
        if annotation:
            write_parquet(root / "train_annotation" / lab / f"{v}.parquet", annotation_columns())
    return root


def messages(record) -> str:
    return "\n".join(str(w.message) for w in record)


def assert_names(err: pytest.ExceptionInfo, file: str, *fields: str) -> None:
    """The error message names the file and every field."""
    text = str(err.value)
    assert file in text, text
    for f in fields:
        assert f in text, text


# ----------------------------------------------------------------------------- parse_behaviors


@pytest.mark.parametrize("text", ["", "   ", "[]", None, float("nan")])
def test_parse_behaviors_empty(text):
    assert data.parse_behaviors(text, "x.csv") == []


def test_parse_behaviors_pairs_and_self():
    text = json.dumps(["mouse1,mouse2,sniff", "mouse2,self,rear", "mouse4,mouse3,attack"])
    assert data.parse_behaviors(text, "x.csv") == [(1, 2, "sniff"), (2, 2, "rear"), (4, 3, "attack")]


def test_parse_behaviors_stray_quotes_real_quirk():
    # As in real DeliriousFly / ReflectiveManatee rows: quotes inside items, and the same triple twice.
    text = json.dumps(["'mouse1','mouse2','sniff'", "mouse1','mouse2','attack'", "mouse1,mouse2,attack"])
    assert data.parse_behaviors(text, "x.csv") == [(1, 2, "sniff"), (1, 2, "attack")]


@pytest.mark.parametrize("text", [
    '["mouse1,mouse2,sniff"',  # truncated JSON
    '{"mouse1": 2}',  # not a list
    "[1, 2]",  # not strings
    '["mouse1,mouse2"]',  # two parts
    '["mouse5,mouse2,sniff"]',  # mouse id out of range
    '["mouse0,self,rear"]',
    '["mouse1,rat2,sniff"]',
    '["mouse1,mouse2,dance"]',  # unknown action
])
def test_parse_behaviors_errors(text):
    with pytest.raises(MabeDataError) as err:
        data.parse_behaviors(text, "train.csv (video_id 7)")
    assert_names(err, "train.csv (video_id 7)", "behaviors_labeled")


# ----------------------------------------------------------------------------- load_metadata


def test_load_metadata_parsed_columns(tmp_path):
    root = write_dataset(tmp_path / "d")
    meta = data.load_metadata(root)
    assert list(meta["video_id"]) == [101, 102]
    row = meta.iloc[0]
    assert row["body_parts"][:2] == ["nose", "ear_left"]
    assert row["labeled"] == [(1, 2, "sniff"), (1, 1, "rear")]
    assert row["n_mice"] == 2
    assert row["tracking_path"] == str(root / "train_tracking" / "LabA" / "101.parquet")
    assert row["annotation_path"] == str(root / "train_annotation" / "LabA" / "101.parquet")
    assert meta["has_tracking"].all() and meta["has_annotation"].all()
    assert len(meta.columns) == len(data.METADATA_COLUMNS) + 7


def test_n_mice_uses_highest_block_and_labeled_ids(tmp_path):
    rows = [
        metadata_row(1),
        metadata_row(2, mouse4_age="8 weeks"),  # only one field of block 4: ids are positional -> 4
        metadata_row(3, behaviors_labeled=json.dumps(["mouse3,mouse1,sniff"])),  # real AdaptableSnail quirk
    ]
    write_csv(tmp_path, rows)
    assert data.load_metadata(tmp_path, check_files=False).set_index("video_id")["n_mice"].to_dict() == {1: 2, 2: 4, 3: 3}


def test_load_metadata_test_split_has_no_annotation(tmp_path):
    write_csv(tmp_path, [metadata_row(5, behaviors_labeled=None)], split="test")
    meta = data.load_metadata(tmp_path, "test")
    assert meta["annotation_path"].isna().all() and not meta["has_annotation"].any()
    assert meta["labeled"].iloc[0] == []


def _drop(*cols):
    return lambda df: df.drop(columns=list(cols))


def _set(col, value, row=0):
    def edit(df):
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return edit


@pytest.mark.parametrize("edit, fields", [
    (_drop("frames_per_second", "behaviors_labeled"), ["frames_per_second", "behaviors_labeled"]),
    (_set("frames_per_second", 0.0), ["frames_per_second", "video_id 101"]),
    (_set("frames_per_second", "fast"), ["frames_per_second", "video_id 101", "fast"]),
    (_set("pix_per_cm_approx", -1.0), ["pix_per_cm_approx", "video_id 101"]),
    (_set("video_width_pix", float("nan")), ["video_width_pix", "video_id 101"]),
    (_set("video_id", 102), ["video_id", "102"]),  # duplicate
    (_set("video_id", "abc"), ["video_id", "abc"]),
    (_set("lab_id", None), ["lab_id"]),
    (_set("body_parts_tracked", json.dumps(["nose", "paw"])), ["body_parts_tracked", "paw", "video_id 101"]),
    (_set("body_parts_tracked", None), ["body_parts_tracked", "video_id 101"]),
    (_set("behaviors_labeled", '["mouse1,mouse9,sniff"]'), ["behaviors_labeled", "mouse9", "video_id 101"]),
    (_set("behaviors_labeled", "[not json"), ["behaviors_labeled", "video_id 101"]),
])
def test_load_metadata_errors(tmp_path, edit, fields):
    csv = write_csv(tmp_path, [metadata_row(101), metadata_row(102)])
    edit(pd.read_csv(csv)).to_csv(csv, index=False)
    with pytest.raises(MabeDataError) as err:
        data.load_metadata(tmp_path, check_files=False)
    assert_names(err, str(csv), *fields)


def test_load_metadata_missing_or_unreadable_csv(tmp_path):
    with pytest.raises(MabeDataError) as err:
        data.load_metadata(tmp_path)
    assert_names(err, "train.csv")
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(MabeDataError) as err:
        data.load_metadata(tmp_path)
    assert_names(err, "train.csv")


def test_missing_tracking_files_listed_in_one_error(tmp_path):
    root = write_dataset(tmp_path, video_ids=(1, 2, 3))
    (root / "train_tracking/LabA/1.parquet").unlink()
    (root / "train_tracking/LabA/3.parquet").unlink()
    with pytest.raises(MabeDataError) as err:
        data.load_metadata(root)
    assert_names(err, "train.csv", "tracking_path", "LabA/1.parquet", "LabA/3.parquet")
    assert "2 missing" in str(err.value)
    assert not data.load_metadata(root, check_files=False)["has_tracking"].iloc[[0, 2]].any()


def test_no_annotation_folder_warns_once(tmp_path):
    root = write_dataset(tmp_path, annotation=False)
    with pytest.warns(MabeDataWarning, match="train_annotation: no such folder; 2 video") as record:
        meta = data.load_metadata(root)
    assert len(record) == 1 and not meta["has_annotation"].any()


def test_no_tracking_folder_is_metadata_only(tmp_path):
    root = write_dataset(tmp_path, tracking=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: a labels-only dataset is normal
        meta = data.load_metadata(root)
    assert not meta["has_tracking"].any() and meta["has_annotation"].all()


def test_file_quirks_warn(tmp_path):
    root = write_dataset(tmp_path, video_ids=(1, 2, 3))
    (root / "train_annotation/LabA/2.parquet").unlink()  # labelled, no annotation (PleasantMeerkat)
    write_parquet(root / "train_annotation/LabA/99.parquet", annotation_columns())  # no csv row (CRIM13)
    write_parquet(root / "train_tracking/LabB/98.parquet", tracking_columns())
    with pytest.warns(MabeDataWarning) as record:
        meta = data.load_metadata(root)
    text = messages(record)
    assert "LabA/2.parquet" in text and "1 video(s) have behaviors_labeled but no annotation" in text
    assert "LabA/99.parquet" in text and "LabB/98.parquet" in text
    assert meta.set_index("video_id")["has_annotation"].to_dict() == {1: True, 2: False, 3: True}


def test_unlabelled_row_without_annotation_is_fine(tmp_path):
    root = write_dataset(tmp_path, video_ids=(1,))
    write_csv(root, [metadata_row(1), metadata_row(2, behaviors_labeled=None)])
    write_parquet(root / "train_tracking/LabA/2.parquet", tracking_columns())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta = data.load_metadata(root)
    assert meta["labeled"].iloc[1] == [] and not meta["has_annotation"].iloc[1]


# ----------------------------------------------------------------------------- read_tracking


def test_read_tracking_exact_slots(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", tracking_columns())
    tr = data.read_tracking(path)
    assert tr.xy.shape == (3, 4, 18, 2) and tr.xy.dtype == np.float32
    assert tr.present.shape == (3, 4, 18) and tr.present.dtype == bool
    np.testing.assert_array_equal(tr.mice, [True, True, False, False])
    assert tr.body_parts == ["headpiece_bottombackright", "headpiece_topfrontleft", "nose", "tail_base"]
    nose, tail, head = SLOT["nose"], SLOT["tail_base"], SLOT["headpiece"]
    np.testing.assert_array_equal(tr.xy[0, 0, nose], [1, 2])
    np.testing.assert_array_equal(tr.xy[0, 1, nose], [3, 4])
    np.testing.assert_array_equal(tr.xy[2, 0, nose], [4, 8])
    np.testing.assert_array_equal(tr.xy[2, 0, tail], [5, 9])
    np.testing.assert_array_equal(tr.xy[2, 1, tail], [6, 7])
    np.testing.assert_array_equal(tr.xy[0, 0, head], [15, 50])  # mean of the two markers seen
    np.testing.assert_array_equal(tr.xy[2, 0, head], [30, 50])  # one marker seen
    assert np.isnan(tr.xy[0, 1, head]).all()
    # exactly the written points are present; everything else is NaN (never 0)
    expected = np.zeros((3, 4, 18), dtype=bool)
    for t, m, s in [(0, 0, nose), (0, 1, nose), (2, 0, nose), (2, 0, tail), (2, 1, tail), (0, 0, head), (2, 0, head)]:
        expected[t, m, s] = True
    np.testing.assert_array_equal(tr.present, expected)
    assert np.isnan(tr.xy[~expected]).all()
    assert np.isnan(tr.xy[1]).all()  # the missing frame keeps its row: index == video_frame


def test_read_tracking_n_frames_and_slots(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", tracking_columns())
    assert data.read_tracking(path, n_frames=10).xy.shape[0] == 10
    assert data.read_tracking(path, n_frames=1).xy.shape[0] == 3  # never shorter than the data
    tr = data.read_tracking(path, slots=("tail_base", "nose"), n_mice=2)
    assert tr.xy.shape == (3, 2, 2, 2)
    np.testing.assert_array_equal(tr.xy[2, 0], [[5, 9], [4, 8]])
    assert tr.present.sum() == 5  # the headpiece rows are not in these slots
    with pytest.raises(ValueError, match="paw"):
        data.read_tracking(path, slots=("nose", "paw"))


def test_read_tracking_row_groups_and_large_strings(tmp_path):
    cols = tracking_columns()
    ref = data.read_tracking(write_parquet(tmp_path / "a.parquet", cols))
    # one row group per row: each group has its own dictionary, in a different order
    split = data.read_tracking(write_parquet(tmp_path / "b.parquet", cols, row_group_size=1))
    cols["bodypart"] = pa.array(cols["bodypart"], pa.large_string())
    large = data.read_tracking(write_parquet(tmp_path / "c.parquet", cols, use_dictionary=False))
    for other in (split, large):
        np.testing.assert_array_equal(other.xy, ref.xy)
        np.testing.assert_array_equal(other.present, ref.present)


def test_read_tracking_nan_and_inf_points(tmp_path):
    cols = tracking_columns()
    cols["x"] = pa.array([np.nan, 10.0, 20.0, np.inf, 4.0, 30.0, 5.0, 6.0])
    cols["y"] = pa.array([2.0, 40.0, np.nan, 4.0, 8.0, 50.0, 9.0, None])
    with pytest.warns(MabeDataWarning, match="1 row"):
        tr = data.read_tracking(write_parquet(tmp_path / "t.parquet", cols))
    assert not tr.present[0, 0, SLOT["nose"]] and np.isnan(tr.xy[0, 0, SLOT["nose"]]).all()  # x NaN -> y too
    assert not tr.present[0, 1, SLOT["nose"]]  # inf
    assert not tr.present[2, 1, SLOT["tail_base"]]  # null y
    np.testing.assert_array_equal(tr.xy[0, 0, SLOT["headpiece"]], [10, 40])  # the NaN marker is not averaged


def test_read_tracking_table_is_dictionary_encoded(tmp_path):
    table = data.read_tracking_table(write_parquet(tmp_path / "t.parquet", tracking_columns(), row_group_size=2))
    assert table.column_names == list(data.TRACKING_COLUMNS)
    assert pa.types.is_dictionary(table.schema.field("bodypart").type)
    assert table.num_rows == 8


def _cols(**override):
    cols = tracking_columns()
    cols.update(override)
    return cols


def _without(name):
    cols = tracking_columns()
    del cols[name]
    return cols


N = 8
TRACKING_ERRORS = {
    "missing x": (_without("x"), ["x"]),
    "missing video_frame": (_without("video_frame"), ["video_frame"]),
    "string x": (_cols(x=["1"] * N), ["x", "string"]),
    "float frame": (_cols(video_frame=pa.array([0.0] * 4 + [2.0] * 4)), ["video_frame", "double"]),
    "float mouse": (_cols(mouse_id=pa.array([1.0] * N)), ["mouse_id", "double"]),
    "int bodypart": (_cols(bodypart=list(range(N))), ["bodypart"]),
    "mouse 5": (_cols(mouse_id=pa.array([1, 1, 1, 5, 1, 1, 1, 2])), ["mouse_id", "max 5"]),
    "mouse 0": (_cols(mouse_id=pa.array([0, 1, 1, 2, 1, 1, 1, 2])), ["mouse_id", "min 0"]),
    "negative frame": (_cols(video_frame=pa.array([-1, 0, 0, 0, 2, 2, 2, 2])), ["video_frame", "min -1"]),
    "null frame": (_cols(video_frame=pa.array([None, 0, 0, 0, 2, 2, 2, 2], pa.int64())), ["video_frame", "null"]),
    "duplicate": (_cols(bodypart=["nose", "nose"] + tracking_columns()["bodypart"][2:]),
                  ["video_frame, mouse_id, bodypart", "frame 0, mouse 1, 'nose'"]),
    "unknown part": (_cols(bodypart=["paw"] + tracking_columns()["bodypart"][1:]), ["bodypart", "paw"]),
    "empty": ({k: pa.array(v)[:0] for k, v in tracking_columns().items()}, ["row"]),
}


@pytest.mark.parametrize("case", list(TRACKING_ERRORS))
def test_read_tracking_errors(tmp_path, case):
    cols, fields = TRACKING_ERRORS[case]
    path = write_parquet(tmp_path / "bad.parquet", cols)
    with pytest.raises(MabeDataError) as err:
        data.read_tracking(path)
    assert_names(err, str(path), *fields)
    with pytest.raises(MabeDataError):
        data.read_tracking_table(path)


@pytest.mark.parametrize("content", [b"", b"not a parquet file at all", "truncated"])
def test_read_tracking_unreadable(tmp_path, content):
    path = tmp_path / "bad.parquet"
    if content == "truncated":
        good = write_parquet(tmp_path / "good.parquet", tracking_columns()).read_bytes()
        content = good[: len(good) // 2]
    path.write_bytes(content)
    with pytest.raises(MabeDataError) as err:
        data.read_tracking(path)
    assert_names(err, str(path), "parquet")


def test_read_tracking_missing_file(tmp_path):
    with pytest.raises(MabeDataError) as err:
        data.read_tracking(tmp_path / "nope.parquet")
    assert_names(err, "nope.parquet")


# ----------------------------------------------------------------------------- read_annotation


@pytest.mark.parametrize("frame_type", [pa.int16(), pa.int32(), pa.int64()])
def test_read_annotation_dtypes(tmp_path, frame_type):
    cols = annotation_columns(start_frame=pa.array([0, 5, 10], frame_type), stop_frame=pa.array([4, 9, 12], frame_type),
                              agent_id=pa.array([1, 2, 1], pa.int64()))
    ann = data.read_annotation(write_parquet(tmp_path / "a.parquet", cols))
    assert list(ann.columns) == list(data.ANNOTATION_COLUMNS)
    assert [str(t) for t in ann.dtypes[["agent_id", "target_id", "start_frame", "stop_frame"]]] == \
        ["int8", "int8", "int32", "int32"]
    assert ann["action"].tolist() == ["sniff", "attack", "rear"]
    assert ann["stop_frame"].tolist() == [4, 9, 12]
    assert ann.attrs["path"].endswith("a.parquet")


def test_read_annotation_empty_file(tmp_path):
    cols = {k: pa.array(v)[:0] for k, v in annotation_columns().items()}
    ann = data.read_annotation(write_parquet(tmp_path / "a.parquet", cols))
    assert len(ann) == 0 and list(ann.columns) == list(data.ANNOTATION_COLUMNS)
    assert data.intervals_to_frames(ann, 5, [(1, 2)]).sum() == 0


def test_read_annotation_keeps_empty_intervals(tmp_path):
    cols = annotation_columns(stop_frame=pa.array([0, 9, 12], pa.int32()))
    with pytest.warns(MabeDataWarning, match="1 empty interval"):
        ann = data.read_annotation(write_parquet(tmp_path / "a.parquet", cols))
    assert len(ann) == 3


ANNOTATION_ERRORS = {
    "missing action": ({k: v for k, v in annotation_columns().items() if k != "action"}, ["action"]),
    "float start": (annotation_columns(start_frame=pa.array([0.0, 5.0, 10.0])), ["start_frame", "double"]),
    "start > stop": (annotation_columns(start_frame=pa.array([0, 11, 10], pa.int32())),
                     ["start_frame", "stop_frame", "row 1", "11", "9"]),
    "negative start": (annotation_columns(start_frame=pa.array([0, -5, 10], pa.int32())), ["start_frame", "-5"]),
    "agent 5": (annotation_columns(agent_id=pa.array([1, 5, 1], pa.int8())), ["agent_id", "5", "row 1"]),
    "target 0": (annotation_columns(target_id=pa.array([0, 1, 1], pa.int8())), ["target_id", "row 0"]),
    "unknown action": (annotation_columns(action=["sniff", "dance", "rear"]), ["action", "dance"]),
    "null action": (annotation_columns(action=["sniff", None, "rear"]), ["action", "null"]),
}


@pytest.mark.parametrize("case", list(ANNOTATION_ERRORS))
def test_read_annotation_errors(tmp_path, case):
    cols, fields = ANNOTATION_ERRORS[case]
    path = write_parquet(tmp_path / "bad.parquet", cols)
    with pytest.raises(MabeDataError) as err:
        data.read_annotation(path)
    assert_names(err, str(path), *fields)


def test_read_annotation_unreadable(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_bytes(b"PAR1 garbage")
    with pytest.raises(MabeDataError) as err:
        data.read_annotation(path)
    assert_names(err, str(path))


# ----------------------------------------------------------------------------- intervals_to_frames


def ann_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(data.ANNOTATION_COLUMNS))
    df.attrs["path"] = "video.parquet"
    return df


def naive_frames(ann: pd.DataFrame, n_frames: int, pairs, actions=ACTIONS) -> np.ndarray:
    """The obvious loop, as a reference for small inputs."""
    out = np.zeros((len(pairs), n_frames, len(actions)), dtype=np.uint8)
    for r in ann.itertuples():
        if (r.agent_id, r.target_id) in pairs and r.action in actions:
            out[pairs.index((r.agent_id, r.target_id)), r.start_frame:min(r.stop_frame, n_frames),
                actions.index(r.action)] = 1
    return out


def test_intervals_to_frames_hand_computed():
    ann = ann_frame([
        (1, 2, "sniff", 2, 5),  # frames 2, 3, 4: stop is exclusive
        (1, 2, "attack", 3, 3),  # empty interval: no frame
        (2, 1, "sniff", 0, 3),  # overlapping intervals of one triple: union 0..5
        (2, 1, "sniff", 2, 6),
        (1, 1, "rear", 7, 8),  # self
    ])
    out = data.intervals_to_frames(ann, 10, [(1, 2), (2, 1), (1, 1)])
    assert out.shape == (3, 10, 37) and out.dtype == np.uint8
    sniff, attack, rear = (ACTIONS.index(a) for a in ("sniff", "attack", "rear"))
    np.testing.assert_array_equal(out[0, :, sniff], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[1, :, sniff], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[2, :, rear], [0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    assert out[:, :, attack].sum() == 0
    assert out.sum() == 3 + 6 + 1
    np.testing.assert_array_equal(out, naive_frames(ann, 10, [(1, 2), (2, 1), (1, 1)]))


def test_intervals_to_frames_action_subset_and_order():
    ann = ann_frame([(1, 2, "sniff", 0, 2), (1, 2, "attack", 1, 3)])
    out = data.intervals_to_frames(ann, 4, [(1, 2)], actions=("attack", "sniff"))
    np.testing.assert_array_equal(out[0], [[0, 1], [1, 1], [1, 0], [0, 0]])
    assert data.intervals_to_frames(ann, 4, [(1, 2)], actions=("rear",)).sum() == 0
    assert data.intervals_to_frames(ann.iloc[:0], 4, [(1, 2)]).shape == (1, 4, 37)


def test_intervals_to_frames_clips_and_warns():
    ann = ann_frame([(1, 2, "sniff", 8, 15), (1, 2, "sniff", 12, 20), (1, 2, "attack", 0, 2)])
    with pytest.warns(MabeDataWarning, match=r"video\.parquet: 2 interval\(s\) run past"):
        out = data.intervals_to_frames(ann, 10, [(1, 2)])
    np.testing.assert_array_equal(out[0, :, ACTIONS.index("sniff")], [0] * 8 + [1, 1])


def test_intervals_to_frames_absent_pair_warns_and_is_ignored():
    ann = ann_frame([(1, 2, "sniff", 0, 3), (3, 1, "attack", 0, 5), (3, 3, "rear", 1, 2)])
    with pytest.warns(MabeDataWarning, match=r"video\.parquet: 2 interval\(s\).*\(3, 1\), \(3, 3\)"):
        out = data.intervals_to_frames(ann, 5, [(1, 2), (2, 1)])
    np.testing.assert_array_equal(out, data.intervals_to_frames(ann.iloc[:1], 5, [(1, 2), (2, 1)]))


def test_intervals_to_frames_random_matches_loop(rng):
    pairs = [(1, 2), (2, 1), (1, 1), (2, 2)]
    n = 200
    start = rng.integers(0, 120, n)
    rows = [(int(a), int(t), ACTIONS[int(k)], int(s), int(s + d)) for a, t, k, s, d in zip(
        rng.integers(1, 3, n), rng.integers(1, 3, n), rng.integers(0, 37, n), start, rng.integers(0, 30, n))]
    ann = ann_frame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MabeDataWarning)
        np.testing.assert_array_equal(data.intervals_to_frames(ann, 130, pairs), naive_frames(ann, 130, pairs))


# ----------------------------------------------------------------------------- print_info


def test_print_info_synthetic(tmp_path, capsys):
    root = write_dataset(tmp_path / "d")
    summary = data.print_info(root)
    out = capsys.readouterr().out
    assert "LabA" in out and "total" in out
    row = summary.iloc[0]
    assert (row["videos"], row["mice"], row["fps"], row["body_parts"], row["actions"]) == (2, "2", "30", "7", 2)
    assert (row["intervals"], row["frames"], row["tracking"]) == (6, 2 * (4 + 4 + 2), "yes")


# ----------------------------------------------------------------------------- real labels


def test_real_metadata_loads_and_warns_about_quirks(real_data):
    with pytest.warns(MabeDataWarning) as record:
        meta = data.load_metadata(real_data)  # check_files=True, no tracking folder: no error
    text = messages(record)
    assert "CRIM13/1733903958.parquet" in text
    assert "PleasantMeerkat/1375833299.parquet" in text
    assert len(meta) == 862 and meta["lab_id"].nunique() == 19
    assert not meta["has_tracking"].any()
    assert not meta.set_index("video_id").loc[1375833299, "has_annotation"]
    assert meta["has_annotation"].sum() == 846
    empty = meta[meta["labeled"].map(len) == 0]
    assert len(empty) == 15 and set(empty["lab_id"]) == {"SparklingTapir"}
    assert meta["n_mice"].between(2, 4).all() and (meta["n_mice"] == 2).sum() == 845
    used = {a for trip in meta["labeled"] for _, _, a in trip}
    assert used == set(ACTIONS)
    assert all(len(b) >= 4 for b in meta["body_parts"])


def test_real_annotations_all_read(real_data):
    paths = sorted((real_data / "train_annotation").glob("*/*.parquet"))
    assert len(paths) == 847
    n = empty = 0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", MabeDataWarning)
        for p in paths:
            ann = data.read_annotation(p)
            n += len(ann)
            empty += int((ann["start_frame"] == ann["stop_frame"]).sum())
    assert n == 83_620 and empty == 59
    assert all("empty interval" in str(w.message) for w in record)


def test_real_annotation_frames_match_loop(real_data):
    # one file per lab: the vectorised difference array equals the plain loop on real intervals
    for lab_dir in sorted((real_data / "train_annotation").iterdir()):
        path = min(lab_dir.glob("*.parquet"), key=lambda p: (p.stat().st_size, p.name))  # the smallest
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MabeDataWarning)
            ann = data.read_annotation(path)
        pairs = sorted({(int(a), int(t)) for a, t in zip(ann["agent_id"], ann["target_id"])})
        T = int(ann["stop_frame"].max()) + 1
        np.testing.assert_array_equal(data.intervals_to_frames(ann, T, pairs), naive_frames(ann, T, pairs))


def test_real_print_info(real_data, capsys):
    summary = data.print_info(real_data)
    out = capsys.readouterr().out
    meta_labs = pd.read_csv(real_data / "train.csv", usecols=["lab_id"])["lab_id"].unique()
    assert len(summary) == 19
    for lab in meta_labs:
        assert lab in out
    assert summary["intervals"].sum() == 83_620 - 29  # minus the CRIM13 file without a csv row
    assert (summary["tracking"] == "no").all()
    assert "1733903958" in out  # the quirks are reported under the table


# ----------------------------------------------------------------------------- synthetic generator


def test_synthetic_dataset_reads(request):
    synth = pytest.importorskip("mabe.synth")
    if not hasattr(synth, "write_dataset"):
        pytest.skip("mabe.synth.write_dataset not written yet")
    root = request.getfixturevalue("tiny_data")
    meta = data.load_metadata(root)
    assert meta["has_tracking"].all()
    row = meta[meta["has_annotation"]].iloc[0]
    tr = data.read_tracking(row["tracking_path"])
    assert tr.present.any() and tr.mice.sum() >= 2
    ann = data.read_annotation(row["annotation_path"])
    pairs = [(a + 1, t + 1) for a in np.flatnonzero(tr.mice) for t in np.flatnonzero(tr.mice)]
    assert data.intervals_to_frames(ann, tr.n_frames, pairs).shape == (len(pairs), tr.n_frames, 37)

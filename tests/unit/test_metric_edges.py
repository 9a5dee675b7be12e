"""metric.py edge cases found by mutation testing (scripts/mutation.sh metric; docs/testing.md).

Input checks and their messages word for word, float and mixed id columns, a solution whose
intervals are all empty, the data-directory solution loader (warnings and errors), the
full-precision JSON result and the printed tables. The scoring rules themselves are pinned in
tests/test_metric.py against a set-based reference.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mabe import metric
from mabe.errors import MabeDataError
from mabe.metric import InvalidSolution, InvalidSubmission

LABELED = json.dumps(["mouse1,mouse2,sniff", "mouse1,self,rear"])


def _solution(rows, labeled=LABELED) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["lab_id", "video_id", "agent_id", "target_id", "action",
                                     "start_frame", "stop_frame"])
    df["behaviors_labeled"] = labeled
    return df


def _submission(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"])
    df.insert(0, "row_id", np.arange(len(df)))
    return df


SOL = _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 10)])


def _tp_fp_fn(result, action="sniff"):
    r = result.per_action.set_index("action").loc[action]
    return int(r.tp), int(r.fp), int(r.fn)


# ----------------------------------------------------------------------------- messages


def test_inputs_that_are_not_frames_or_lack_columns_are_named_word_for_word():
    with pytest.raises(InvalidSolution) as e:
        metric.score([1, 2], _submission([]))
    assert str(e.value) == "solution: expected a pandas DataFrame, got list"
    with pytest.raises(InvalidSubmission) as e:
        metric.score(SOL, {"video_id": [7]})
    assert str(e.value) == "submission: expected a pandas DataFrame, got dict"
    with pytest.raises(InvalidSolution) as e:
        metric.score(SOL.drop(columns=["action", "lab_id"]), _submission([]))
    assert str(e.value) == ("solution is missing column(s) lab_id, action; it has video_id, agent_id, target_id, "
                            "start_frame, stop_frame, behaviors_labeled")
    with pytest.raises(InvalidSubmission) as e:
        metric.score(SOL, _submission([]).drop(columns=["stop_frame"]))
    assert str(e.value) == ("submission is missing column(s) stop_frame; it has row_id, video_id, agent_id, "
                            "target_id, action, start_frame")


def test_frame_columns_must_hold_integer_frame_numbers():
    sub = _submission([(7, "mouse1", "mouse2", "sniff", 0, 10)])
    with pytest.raises(InvalidSubmission) as e:
        metric.score(SOL, sub.assign(start_frame=pd.Series(["0"], dtype=object)))
    assert str(e.value) == "submission: column start_frame must be integer frame numbers, got dtype object"
    with pytest.raises(InvalidSolution) as e:
        metric.score(SOL.assign(stop_frame=[True]), sub)
    assert str(e.value) == "solution: column stop_frame must be integer frame numbers, got dtype bool"
    with pytest.raises(InvalidSubmission) as e:
        metric.score(SOL, pd.concat([sub, sub]).assign(stop_frame=[10.0, 4.5]))
    assert str(e.value) == f"submission: row 1 has a non-integer stop_frame ({np.float64(4.5)!r})"
    with pytest.raises(InvalidSubmission) as e:
        metric.score(SOL, sub.assign(start_frame=[np.nan]))
    assert str(e.value) == f"submission: row 0 has a non-integer start_frame ({np.float64(np.nan)!r})"
    # whole-number floats are frame numbers
    assert metric.score(SOL, sub.assign(start_frame=[0.0], stop_frame=[10.0])).final == 1.0


def test_behaviors_labeled_that_is_missing_or_not_a_json_list_is_named():
    sub = _submission([])
    with pytest.raises(InvalidSolution) as e:
        metric.score(SOL.assign(behaviors_labeled=[np.nan]), sub)
    assert re.fullmatch(r"solution: video 7 has no behaviors_labeled \(got (np\.float64\()?nan\)?\)", str(e.value))
    with pytest.raises(InvalidSolution) as e:
        metric.score(SOL.assign(behaviors_labeled=["[oops"]), sub)
    assert str(e.value).startswith("solution: video 7: behaviors_labeled is not valid JSON (Expecting value")
    long = json.dumps({"k": "x" * 100})
    with pytest.raises(InvalidSolution) as e:
        metric.score(SOL.assign(behaviors_labeled=[long]), sub)
    assert str(e.value) == f"solution: video 7: behaviors_labeled must be a JSON list, got {long[:80]!r}"
    # a list (not JSON text) is taken as it is, its items as strings
    as_list = SOL.copy()
    as_list["behaviors_labeled"] = [["mouse1,mouse2,sniff"]]
    r = metric.score(as_list, _submission([(7, "mouse1", "mouse2", "sniff", 0, 5)]))
    assert _tp_fp_fn(r) == (5, 0, 5)


def test_malformed_submission_ids_are_counted_with_a_few_distinct_examples():
    rows = [(7, "mouse1", "mouse2", "sniff", 0, 10)] + [(7, f"m{i % 3}", "mouse2", "sniff", 20, 21) for i in range(6)]
    rows += [(7, "mouse1", "Self", "sniff", 30, 31), (7, "mouse1", "self", "rear", 40, 41)]
    with pytest.warns(UserWarning) as rec:
        r = metric.score(SOL, _submission(rows))
    assert [str(w.message) for w in rec] == [
        "submission: 7 submission row(s) have an agent_id / target_id that is neither mouseN nor (target) self, "
        "e.g. 'm0', 'm1', 'm2', 'Self'; they match no behaviors_labeled entry and score nothing"]
    assert _tp_fp_fn(r) == (10, 0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # well-formed ids: no warning
        metric.score(SOL, _submission([(7, "mouse1", "self", "rear", 0, 3)]))


# ----------------------------------------------------------------------------- id columns


def test_float_video_ids_match_when_whole_and_never_when_fractional():
    # failed before the fix: one fractional or NaN id made every id of the column text ("7.0")
    sub = _submission([(7.0, "mouse1", "mouse2", "sniff", 0, 10)])
    assert metric.score(SOL, sub).final == 1.0
    frac = _submission([(7.0, "mouse1", "mouse2", "sniff", 0, 10), (7.5, "mouse1", "mouse2", "sniff", 20, 30)])
    assert _tp_fp_fn(metric.score(SOL, frac)) == (10, 0, 0)  # 7.5 is no video of the solution
    nan = _submission([(7.0, "mouse1", "mouse2", "sniff", 0, 10), (np.nan, "mouse1", "mouse2", "sniff", 20, 30)])
    assert _tp_fp_fn(metric.score(SOL, nan)) == (10, 0, 0)
    sol_f = SOL.assign(video_id=[7.0])
    assert metric.score(sol_f, _submission([(7, "mouse1", "mouse2", "sniff", 0, 4)])).final == pytest.approx(4 / 7)


def test_integer_ids_on_one_side_of_a_column_pair_are_read_as_text():
    sub = _submission([(7, 1, "mouse2", "sniff", 0, 10)])  # integer agent, text target: "1" matches nothing
    with pytest.warns(UserWarning, match="1 submission row"):
        r = metric.score(SOL, sub)
    assert _tp_fp_fn(r) == (0, 0, 10)
    ints = _submission([(7, 1, 2, "sniff", 0, 10)])  # both integer: mouse1 / mouse2
    assert metric.score(SOL, ints).final == 1.0


def test_a_solution_of_empty_intervals_only_scores_predictions_as_false_positives():
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", 5, 5)])
    r = metric.score(sol, _submission([(7, "mouse1", "mouse2", "sniff", 0, 4)]))
    assert _tp_fp_fn(r) == (0, 4, 0) and r.final == 0.0
    assert r.per_lab["label_frames"].tolist() == [0]


# ----------------------------------------------------------------------------- the data-directory loader


def _write_ann(path, rows, dtype=None):
    dtype = dtype or pa.int64()
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(zip(*rows)) if rows else [[]] * 5
    pq.write_table(pa.table({
        "agent_id": pa.array(cols[0], dtype), "target_id": pa.array(cols[1], dtype),
        "action": pa.array(cols[2], pa.string()),
        "start_frame": pa.array(cols[3], pa.int64()), "stop_frame": pa.array(cols[4], pa.int64()),
    }), path)


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    meta = pd.DataFrame({
        "lab_id": ["A", "A", "A", "B", "B"],
        "video_id": [1, 2, 3, 4, 5],
        "behaviors_labeled": [LABELED, LABELED, "[]", json.dumps(["mouse2,mouse1,sniff"]), np.nan],
        "fps": [30.0] * 5,
    })
    meta.to_csv(root / "train.csv", index=False)
    _write_ann(root / "train_annotation/A/1.parquet", [(1, 2, "sniff", 0, 10), (1, 1, "rear", 5, 5)])
    # video 2: labelled, no annotation file; video 3: "[]" but has a file (an orphan)
    _write_ann(root / "train_annotation/A/3.parquet", [(1, 2, "sniff", 0, 3)])
    _write_ann(root / "train_annotation/B/4.parquet", [(2, 1, "sniff", 7, 9)])
    return root


def test_a_data_directory_gives_one_solution_row_per_annotation_of_a_labelled_video(data_dir):
    with pytest.warns(UserWarning) as rec:
        sol = metric.load_solution(data_dir)
    assert sorted(str(w.message) for w in rec) == [
        "1 annotation file(s) have no labelled row in train.csv and are skipped (e.g. A/3.parquet)",
        "1 labelled video(s) have no annotation file and contribute nothing to the solution (e.g. A/2)",
    ]
    assert list(sol.columns) == list(metric.SOLUTION_COLUMNS)
    assert sol[["lab_id", "video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"]].values.tolist() == [
        ["A", 1, "mouse1", "mouse2", "sniff", 0, 10],
        ["A", 1, "mouse1", "self", "rear", 5, 5],
        ["B", 4, "mouse2", "mouse1", "sniff", 7, 9],
    ]
    assert sol["video_id"].dtype == np.int64 and sol["start_frame"].dtype == np.int64
    assert sol["behaviors_labeled"].astype(str).tolist() == [LABELED, LABELED, json.dumps(["mouse2,mouse1,sniff"])]
    r = metric.score(sol, _submission([(1, "mouse1", "mouse2", "sniff", 0, 10), (4, "mouse2", "mouse1", "sniff", 7, 9)]))
    assert r.per_lab["score"].tolist() == [0.5, 1.0]  # lab A: sniff 1.0 and rear (empty interval) 0.0


def test_a_lab_filter_reads_only_those_labs(data_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = metric.load_solution(data_dir, labs=["B"])
    assert sol["video_id"].tolist() == [4] and sol["lab_id"].tolist() == ["B"]


def test_data_directory_errors_name_the_file(data_dir, tmp_path):
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(data_dir, split="test")
    assert "test.csv" in str(e.value) and "no such file" in str(e.value)
    pd.read_csv(data_dir / "train.csv").drop(columns="behaviors_labeled").to_csv(data_dir / "train.csv", index=False)
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(data_dir)
    assert "train.csv" in str(e.value) and "behaviors_labeled" in str(e.value)

    empty = tmp_path / "empty"
    (empty / "train_annotation").mkdir(parents=True)
    pd.DataFrame({"lab_id": ["A"], "video_id": [1], "behaviors_labeled": [LABELED]}).to_csv(empty / "train.csv", index=False)
    with pytest.raises(MabeDataError) as e, pytest.warns(UserWarning, match="no annotation file"):
        metric.load_solution(empty)
    assert "train_annotation" in str(e.value) and "at least one annotation file" in str(e.value)


def test_annotation_files_with_text_ids_or_damage_are_refused(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    pd.DataFrame({"lab_id": ["A"], "video_id": [1], "behaviors_labeled": [LABELED]}).to_csv(root / "train.csv", index=False)
    f = root / "train_annotation/A/1.parquet"
    _write_ann(f, [("1", "2", "sniff", 0, 10)], dtype=pa.string())
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root)
    assert "1.parquet" in str(e.value) and "agent_id" in str(e.value) and "integers" in str(e.value)
    f.write_bytes(b"not parquet")
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root)
    assert "1.parquet" in str(e.value) and "unreadable" in str(e.value)


def test_solution_from_annotations_drops_videos_without_metadata_with_a_warning():
    ann = pd.DataFrame({"video_id": [1, 9, 9], "agent_id": [1, 1, 2], "target_id": [1, 2, 1],
                        "action": ["rear", "sniff", "sniff"], "start_frame": [0, 1, 2], "stop_frame": [3, 4, 5]})
    meta = pd.DataFrame({"video_id": [1, 1], "lab_id": [5, 5], "behaviors_labeled": [LABELED, LABELED]})
    with pytest.warns(UserWarning) as rec:
        sol = metric.solution_from_annotations(ann, meta)
    assert [str(w.message) for w in rec] == ["2 annotation row(s) of 1 video(s) without metadata dropped (e.g. video 9)"]
    assert sol.values.tolist() == [["5", 1, "mouse1", "self", "rear", 0, 3, LABELED]]


def test_solution_csv_lab_filter_and_missing_file(tmp_path):
    sol = pd.concat([SOL, SOL.assign(lab_id="B", video_id=8)])
    sol.to_csv(tmp_path / "s.csv", index=False)
    back = metric.load_solution(tmp_path / "s.csv", labs=["B"])
    assert back["video_id"].tolist() == [8] and back.index.tolist() == [0]
    assert back["agent_id"].tolist() == ["mouse1"]
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(tmp_path / "nope.csv")
    assert "nope.csv" in str(e.value) and "no such file or directory" in str(e.value)
    with pytest.raises(MabeDataError) as e:
        metric.read_submission(tmp_path / "nosub.csv")
    assert "nosub.csv" in str(e.value) and "no such file" in str(e.value)


def test_read_submission_keeps_ids_and_actions_as_text(tmp_path):
    p = tmp_path / "sub.csv"
    p.write_text("row_id,video_id,agent_id,target_id,action,start_frame,stop_frame\n0,7,1,2,1,0,10\n")
    sub = metric.read_submission(p)
    assert sub["agent_id"].tolist() == ["1"] and sub["target_id"].tolist() == ["2"] and sub["action"].tolist() == ["1"]
    assert sub["video_id"].tolist() == [7]


# ----------------------------------------------------------------------------- results out


def test_the_json_result_keeps_full_precision_and_is_written_atomically(tmp_path):
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 7), ("B", 8, "mouse1", "self", "rear", 0, 3)])
    r = metric.score(sol, _submission([(7, "mouse1", "mouse2", "sniff", 0, 3)]))
    out = metric.write_result_json(r, tmp_path / "deep" / "er" / "scores.json")
    assert out == tmp_path / "deep" / "er" / "scores.json"
    assert [p.name for p in out.parent.iterdir()] == ["scores.json"]
    d = json.loads(out.read_text())
    assert d == metric.result_dict(r)
    assert d["score"] == float(r) == (2 * 3 / (2 * 3 + 4)) / 2
    assert d["per_lab"] == [{"lab_id": "A", "score": 0.6, "n_actions": 1, "label_frames": 7},
                            {"lab_id": "B", "score": 0.0, "n_actions": 1, "label_frames": 3}]
    assert d["per_action"] == [{"lab_id": "A", "action": "sniff", "tp": 3, "fp": 0, "fn": 4, "f1": 0.6},
                               {"lab_id": "B", "action": "rear", "tp": 0, "fp": 0, "fn": 3, "f1": 0.0}]


def test_main_prints_both_tables_and_writes_the_json(tmp_path, capsys):
    sol = _solution([("LabX", 7, "mouse1", "mouse2", "sniff", 0, 7)])
    sol.to_csv(tmp_path / "sol.csv", index=False)
    _submission([(7, "mouse1", "mouse2", "sniff", 0, 3)]).to_csv(tmp_path / "sub.csv", index=False)
    args = argparse.Namespace(solution=tmp_path / "sol.csv", submission=tmp_path / "sub.csv", json=tmp_path / "r.json")
    assert metric.main_from_args(args) == pytest.approx(0.6)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 solution rows, 1 submission rows, 1 labs, scored in ")
    assert lines[-1] == f"scores (full precision) -> {tmp_path / 'r.json'}" and lines[-2] == "score: 0.600000"
    text = "\n".join(lines)
    for title in ("per action", "per lab"):
        assert title in text
    row = next(line for line in lines if "sniff" in line)
    assert row.split("│")[1:-1] == [" LabX  ", " sniff  ", "  3 ", "  0 ", "  4 ", " 0.6000 "] or \
        [c.strip() for c in row.split("│")[1:-1]] == ["LabX", "sniff", "3", "0", "4", "0.6000"]
    lab_row = next(line for line in lines if "LabX" in line and "sniff" not in line)
    assert [c.strip() for c in lab_row.split("│")[1:-1]] == ["LabX", "0.6000", "1", "7"]
    assert json.loads((tmp_path / "r.json").read_text())["score"] == 0.6


def test_a_video_listed_under_two_labs_is_refused():
    sol = pd.concat([SOL, SOL.assign(lab_id="B", start_frame=20, stop_frame=30)], ignore_index=True)
    with pytest.raises(InvalidSolution) as e:
        metric.score(sol, _submission([]))
    assert str(e.value) == "solution: video 7 appears under several labs ['A', 'B']"

"""metric.py: reading solutions and submissions, the messages of every refusal word for word, the printed
tables, and a few inputs the reference tests never generate (negative frames, an empty submission against
several intervals) (found by mutation testing, round 2; docs/testing.md). The scoring rules are pinned in
test_metric.py (set-based reference) and test_metric_edges.py.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mabe import metric
from mabe.errors import MabeDataError

LABELED = json.dumps(["mouse1,mouse2,sniff", "mouse1,self,rear"])
COLS = ["lab_id", "video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"]


def _solution(rows, labeled=LABELED) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLS)
    df["behaviors_labeled"] = labeled
    return df


def _submission(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLS[1:])
    df.insert(0, "row_id", range(len(df)))
    return df


def _write_ann(path, rows, columns=("agent_id", "target_id", "action", "start_frame", "stop_frame")):
    path.parent.mkdir(parents=True, exist_ok=True)
    types = {"agent_id": pa.int64(), "target_id": pa.int64(), "action": pa.string(),
             "start_frame": pa.int64(), "stop_frame": pa.int64()}
    cols = list(zip(*rows))
    pq.write_table(pa.table({c: pa.array(cols[i], types[c]) for i, c in enumerate(columns)}), path)


def _data_dir(root, meta_rows, files):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(meta_rows, columns=["lab_id", "video_id", "behaviors_labeled"]).assign(fps=30.0).to_csv(
        root / "train.csv", index=False)
    for (lab, video), rows in files.items():
        _write_ann(root / "train_annotation" / lab / f"{video}.parquet", rows)
    return root


# ----------------------------------------------------------------------------- every refusal, word for word


def test_solution_and_submission_files_that_cannot_be_read_are_named_word_for_word(tmp_path):
    nope = tmp_path / "nope.csv"
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(nope)
    assert str(e.value) == f"{nope}: expected a data directory or a solution CSV, got no such file or directory"
    with pytest.raises(MabeDataError) as e:
        metric.read_submission(nope)
    assert str(e.value) == f"{nope}: expected a submission CSV, got no such file"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for read in (metric.load_solution, metric.read_submission):
        with pytest.raises(MabeDataError) as e:
            read(empty)
        assert str(e.value) == f"{empty}: expected a readable CSV, got No columns to parse from file"
    short = tmp_path / "short.csv"
    _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 10)]).drop(columns="action").to_csv(short, index=False)
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(short)
    assert str(e.value) == (f"{short}, field 'action': expected a solution CSV with the columns lab_id, video_id, "
                            "agent_id, target_id, action, start_frame, stop_frame, behaviors_labeled, got the column "
                            "is missing")


def test_data_directory_refusals_are_named_word_for_word(tmp_path):
    root = _data_dir(tmp_path / "d", [("A", 1, LABELED)], {})
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root, split="test")
    assert str(e.value) == f"{root}: expected a data directory holding test.csv, got no such file"
    with pytest.raises(MabeDataError) as e, pytest.warns(UserWarning):
        metric.load_solution(root)
    assert str(e.value) == (f"{root / 'train_annotation'}: expected at least one annotation file of a labelled video, "
                            "got none")
    pd.DataFrame({"lab_id": ["A"], "behaviors_labeled": [LABELED]}).to_csv(root / "train.csv", index=False)
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root)
    assert str(e.value) == f"{root / 'train.csv'}, field 'video_id': expected this column, got it is missing"


def test_annotation_files_with_text_ids_missing_columns_or_damage_are_named_word_for_word(tmp_path):
    root = _data_dir(tmp_path / "d", [("A", 1, LABELED)], {})
    f = root / "train_annotation/A/1.parquet"
    f.parent.mkdir(parents=True)
    pq.write_table(pa.table({"agent_id": pa.array(["1"]), "target_id": pa.array([2]), "action": pa.array(["sniff"]),
                             "start_frame": pa.array([0]), "stop_frame": pa.array([4])}), f)
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root)
    assert str(e.value) == f"{f}, field 'agent_id': expected integers, got dtype object"
    _write_ann(f, [(1, 2, "sniff", 0)], columns=("agent_id", "target_id", "action", "start_frame"))
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root)
    cols = ["agent_id", "target_id", "action", "start_frame", "stop_frame"]
    assert str(e.value).startswith(f"{f}: expected an annotation parquet with columns {cols}, got unreadable (")
    f.write_bytes(b"PAR1 not really")
    with pytest.raises(MabeDataError) as e:
        metric.load_solution(root)
    assert str(e.value).startswith(f"{f}: expected an annotation parquet with columns {cols}, got unreadable (")


# ----------------------------------------------------------------------------- what the loaders keep


def test_a_solution_csv_keeps_ids_actions_and_labs_as_text(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("lab_id,video_id,agent_id,target_id,action,start_frame,stop_frame,behaviors_labeled\n"
                 "007,5,1,2,3,0,10,\"[\"\"1,2,3\"\"]\"\n")
    sol = metric.load_solution(p, labs=["007"])
    assert sol[["lab_id", "agent_id", "target_id", "action"]].values.tolist() == [["007", "1", "2", "3"]]
    assert isinstance(sol["behaviors_labeled"].dtype, pd.CategoricalDtype)
    # text ids "1"/"2" are no mouse names: nothing matches (integer columns would be read as mouse1/mouse2)
    r = metric.score(sol, _submission([(5, "mouse1", "mouse2", "3", 0, 10)]))
    assert r.per_lab["lab_id"].tolist() == ["007"] and r.final == 0.0


def test_a_data_directory_solution_has_integer_frames_categorical_labels_and_warns_at_the_caller(tmp_path):
    root = _data_dir(tmp_path / "d", [("A", 1, LABELED), ("A", 2, LABELED), ("A", 3, "[oops")],
                     {("A", 1): [(1, 2, "sniff", 0, 10)], ("A", 3): [(1, 2, "sniff", 0, 3)]})
    with pytest.warns(UserWarning) as rec:
        sol = metric.load_solution(root)
    # invalid JSON in behaviors_labeled is "not labelled": its file is skipped, never scored
    assert sorted(str(w.message) for w in rec) == [
        "1 annotation file(s) have no labelled row in train.csv and are skipped (e.g. A/3.parquet)",
        "1 labelled video(s) have no annotation file and contribute nothing to the solution (e.g. A/2)"]
    assert all(w.filename != metric.__file__ for w in rec)  # attributed to the caller
    assert sol["video_id"].tolist() == [1]
    assert sol["stop_frame"].dtype == "int64" and sol["start_frame"].dtype == "int64"
    assert isinstance(sol["behaviors_labeled"].dtype, pd.CategoricalDtype)


def test_solution_from_annotations_takes_a_videos_first_metadata_row_and_warns_at_the_caller():
    ann = pd.DataFrame({"video_id": [1, 9], "agent_id": [1, 1], "target_id": [2, 2], "action": ["sniff", "sniff"],
                        "start_frame": [0, 1], "stop_frame": [3, 4]})
    other = json.dumps(["mouse1,mouse2,chase"])
    meta = pd.DataFrame({"video_id": [1, 1], "lab_id": ["A", "A"], "behaviors_labeled": [LABELED, other]})
    with pytest.warns(UserWarning) as rec:
        sol = metric.solution_from_annotations(ann, meta)
    assert rec[0].filename != metric.__file__
    assert sol["behaviors_labeled"].astype(str).tolist() == [LABELED]
    assert sol["stop_frame"].dtype == "int64" and sol["start_frame"].dtype == "int64"


# ----------------------------------------------------------------------------- the printed tables


def _cells(line: str) -> list[str]:
    sep = "┃" if "┃" in line else "│"
    return line.split(sep)[1:-1]


def test_the_tables_have_their_titles_headers_and_alignment(capsys):
    sol = _solution([("LabA", 7, "mouse1", "mouse2", "sniff", 0, 7), ("LabB", 8, "mouse1", "self", "rear", 0, 3)])
    metric.print_result(metric.score(sol, _submission([(7, "mouse1", "mouse2", "sniff", 0, 3)])))
    lines = capsys.readouterr().out.splitlines()
    assert [line.strip() for line in lines if "│" not in line and "┃" not in line and "━" not in line
            and "─" not in line] == ["per action", "per lab", "score: 0.300000"]
    rows = [_cells(line) for line in lines if "│" in line or "┃" in line]
    # text columns left-aligned, numbers right-aligned (the padding shows which)
    assert rows[:3] == [[" lab  ", " action ", " tp ", " fp ", " fn ", "     f1 "],
                        [" LabA ", " sniff  ", "  3 ", "  0 ", "  4 ", " 0.6000 "],
                        [" LabB ", " rear   ", "  0 ", "  0 ", "  3 ", " 0.0000 "]]
    assert rows[3:] == [[" lab  ", "  score ", " actions ", " labelled frames "],
                        [" LabA ", " 0.6000 ", "       1 ", "               7 "],
                        [" LabB ", " 0.0000 ", "       1 ", "               3 "]]


def test_the_tables_use_at_least_100_columns_so_long_action_names_stay_on_one_line(capsys):
    long = "a" * 52  # a table of about 90 columns: wider than the 80 a non-terminal gets by default
    sol = _solution([("LabA", 7, "mouse1", "mouse2", long, 0, 7)], labeled=json.dumps([f"mouse1,mouse2,{long}"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.print_result(metric.score(sol, _submission([])))
    out = capsys.readouterr().out
    assert any(long in line for line in out.splitlines())


# ----------------------------------------------------------------------------- score's own refusals, edge inputs

SOL = _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 10)])


def test_score_refusals_name_the_side_the_row_and_the_rule_word_for_word():
    with pytest.raises(metric.InvalidSolution) as e:
        metric.score(SOL.iloc[:0], _submission([]))
    assert str(e.value) == "solution has no rows (no labelled intervals)"
    with pytest.raises(metric.InvalidSolution) as e:
        metric.score(SOL.assign(start_frame=[4.5]), _submission([]))
    assert str(e.value) == f"solution: row 0 has a non-integer start_frame ({np.float64(4.5)!r})"
    with pytest.raises(metric.InvalidSolution) as e:
        metric.score(SOL.assign(start_frame=pd.Series(["0"], dtype=object)), _submission([]))
    assert str(e.value) == "solution: column start_frame must be integer frame numbers, got dtype object"
    with pytest.raises(metric.InvalidSolution) as e:
        metric.score(SOL.assign(start_frame=[12]), _submission([]))
    assert str(e.value) == ("solution: 1 row(s) have start_frame > stop_frame; first: row 0 of video 7 "
                            "(start_frame=12, stop_frame=10)")
    with pytest.raises(metric.InvalidSubmission) as e:
        metric.score(SOL, _submission([(7, "mouse1", "mouse2", "sniff", 0, 3), (8, "mouse1", "mouse2", "sniff", 9, 2)]))
    assert str(e.value) == ("submission: 1 row(s) have start_frame > stop_frame; first: row 1 of video 8 "
                            "(start_frame=9, stop_frame=2)")
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 10)], labeled=json.dumps(
        ["mouse1,mouse2,sniff", "mouse1,mouse2,chase"]))
    with pytest.raises(metric.InvalidSubmission) as e:
        metric.score(sol, _submission([(7, "mouse1", "mouse2", "sniff", 0, 5), (7, "mouse1", "mouse2", "chase", 4, 8)]))
    assert str(e.value) == ("submission: video 7, agent mouse1, target mouse2: two actions on frame 4 ('sniff' in row 0 "
                            "and 'chase' in row 1); only one action per (agent, target) pair and frame is allowed")


def test_the_video_named_under_several_labs_is_the_first_such_video():
    sol = pd.concat([_solution([("A", v, "mouse1", "mouse2", "sniff", 0, 10)]) for v in (5, 9, 10)]
                    + [_solution([("B", v, "mouse1", "mouse2", "sniff", 20, 30)]) for v in (9, 10)], ignore_index=True)
    with pytest.raises(metric.InvalidSolution) as e:
        metric.score(sol, _submission([]))
    assert str(e.value) == "solution: video 9 appears under several labs ['A', 'B']"  # not 5 (one lab), not 10


def test_a_warning_lists_at_most_five_examples_of_malformed_ids():
    rows = [(7, f"m{i}", "mouse2", "sniff", 20 + 2 * i, 21 + 2 * i) for i in range(7)]
    with pytest.warns(UserWarning) as rec:
        metric.score(SOL, _submission(rows))
    assert str(rec[0].message).startswith("submission: 7 submission row(s) have an agent_id / target_id that is "
                                          "neither mouseN nor (target) self, e.g. 'm0', 'm1', 'm2', 'm3', 'm4'; they")
    assert rec[0].filename != metric.__file__  # attributed to the caller of score()


def test_an_empty_submission_against_several_intervals_misses_them_all():
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 10), ("A", 7, "mouse1", "self", "rear", 3, 5),
                     ("B", 8, "mouse1", "mouse2", "sniff", 0, 4)])
    r = metric.score(sol, _submission([]))
    assert r.per_action[["lab_id", "action", "tp", "fp", "fn"]].values.tolist() == [
        ["A", "rear", 0, 0, 2], ["A", "sniff", 0, 0, 10], ["B", "sniff", 0, 0, 4]]
    assert r.final == 0.0


def test_negative_frame_numbers_are_frames_like_any_other():
    """The official scorer builds Python ranges of frames: negative numbers are frames too, and keys must not mix."""
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", -30, -20), ("A", 7, "mouse1", "self", "rear", -25, -5)])
    sub = _submission([(7, "mouse1", "mouse2", "sniff", -24, -18), (7, "mouse1", "self", "rear", -30, -10)])
    r = metric.score(sol, sub)
    assert r.per_action[["action", "tp", "fp", "fn"]].values.tolist() == [["rear", 15, 5, 5], ["sniff", 4, 2, 6]]


def test_the_clash_message_names_two_overlapping_rows_of_the_offending_pair_only():
    labeled = json.dumps(["mouse1,mouse2,sniff", "mouse1,mouse2,chase", "mouse1,mouse2,rest", "mouse2,mouse1,sniff"])
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", 0, 10)], labeled=labeled)
    sub = _submission([(7, "mouse2", "mouse1", "sniff", 0, 20),  # another pair, covering the frame
                       (7, "mouse1", "mouse2", "chase", 2, 6),   # ends where the clash starts: no overlap
                       (7, "mouse1", "mouse2", "sniff", 6, 9),
                       (7, "mouse1", "mouse2", "rest", 6, 8)])
    with pytest.raises(metric.InvalidSubmission) as e:
        metric.score(sol, sub)
    assert str(e.value) == ("submission: video 7, agent mouse1, target mouse2: two actions on frame 6 ('sniff' in row 2 "
                            "and 'rest' in row 3); only one action per (agent, target) pair and frame is allowed")


def test_clashes_at_negative_frames_are_found_and_touching_ones_are_not():
    labeled = json.dumps(["mouse1,mouse2,sniff", "mouse1,mouse2,chase"])
    sol = _solution([("A", 7, "mouse1", "mouse2", "sniff", -40, -30)], labeled=labeled)
    touching = _submission([(7, "mouse1", "mouse2", "sniff", -40, -30), (7, "mouse1", "mouse2", "chase", -30, -25)])
    assert metric.score(sol, touching).per_action["tp"].tolist() == [0, 10]  # chase, sniff
    with pytest.raises(metric.InvalidSubmission, match="two actions on frame -31 "):
        metric.score(sol, _submission([(7, "mouse1", "mouse2", "sniff", -40, -30),
                                       (7, "mouse1", "mouse2", "chase", -31, -25)]))


def test_counts_are_integers_and_names_with_spaces_survive():
    sol = _solution([("Lab A", 7, "mouse1", "mouse2", "sniff face", 0, 10)],
                    labeled=json.dumps(["mouse1,mouse2,sniff face"]))
    r = metric.score(sol, _submission([(7, "mouse1", "mouse2", "sniff face", 5, 12)]))
    assert r.per_action[["lab_id", "action", "tp", "fp", "fn"]].values.tolist() == [["Lab A", "sniff face", 5, 2, 5]]
    assert [str(r.per_action[c].dtype) for c in ("tp", "fp", "fn")] == ["int64"] * 3
    assert r.per_lab["lab_id"].tolist() == ["Lab A"] and str(r.per_lab["label_frames"].dtype) == "int64"

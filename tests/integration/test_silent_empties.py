"""Nothing is empty in silence: a split with no rows or no csv, submission ids that can never match."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

from helpers import run_cli as _run
from mabe import metric


def test_prepare_warns_when_train_csv_has_only_a_header(data, tmp_path, capsys):
    df = pd.read_csv(data / "train.csv")
    df.iloc[:0].to_csv(data / "train.csv", index=False)
    rc, out, err, caught = _run(["prepare", str(data), "--cache", str(tmp_path / "c"), "--workers", "1"], capsys)
    assert rc == 0, err
    hits = [w for w in caught if "train.csv" in w and "no video rows" in w]
    assert len(hits) == 1, caught
    assert "mabe train" in hits[0]  # says what it means for the user


def test_prepare_warns_when_there_is_no_train_csv(data, tmp_path, capsys):
    (data / "train.csv").unlink()
    rc, out, err, caught = _run(["prepare", str(data), "--cache", str(tmp_path / "c"), "--workers", "1"], capsys)
    assert rc == 0, err
    hits = [w for w in caught if str(data / "train.csv") in w and "no such file" in w]
    assert len(hits) == 1, caught
    assert "test" in out  # the test split was prepared all the same


def test_prepare_of_an_explicit_split_with_no_rows_is_an_error(data, tmp_path, capsys):
    pd.read_csv(data / "train.csv").iloc[:0].to_csv(data / "train.csv", index=False)
    rc, out, err, _ = _run(["prepare", str(data), "--cache", str(tmp_path / "c"), "--split", "train",
                            "--workers", "1"], capsys)
    assert rc == 2 and "no video rows" in err and "Traceback" not in err


def _solution() -> pd.DataFrame:
    labeled = json.dumps(["mouse1,mouse2,sniff", "mouse1,self,rear"])
    return pd.DataFrame({
        "lab_id": ["L", "L"], "video_id": [7, 7], "agent_id": ["mouse1", "mouse1"], "target_id": ["mouse2", "self"],
        "action": ["sniff", "rear"], "start_frame": [0, 20], "stop_frame": [10, 30], "behaviors_labeled": labeled,
    })


def _submission(agents, targets) -> pd.DataFrame:
    n = len(agents)
    return pd.DataFrame({
        "row_id": np.arange(n), "video_id": [7] * n, "agent_id": agents, "target_id": targets,
        "action": ["sniff", "rear", "sniff"][:n], "start_frame": [0, 20, 40][:n], "stop_frame": [10, 30, 50][:n],
    })


def test_score_warns_about_ids_that_are_neither_mouse_n_nor_self():
    sub = _submission(["mouseX", "mouse1", "1"], ["mouse2", "mouse 1", "mouse2"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = metric.score(_solution(), sub)
    hits = [str(w.message) for w in caught if "mouseN" in str(w.message)]
    assert len(hits) == 1, [str(w.message) for w in caught]
    assert "3 submission row(s)" in hits[0] and "'mouseX'" in hits[0]
    assert result.final == 0.0  # still scored as the official metric would: those rows match nothing


def test_score_is_quiet_for_well_formed_ids():
    sub = _submission(["mouse1", "mouse1"], ["mouse2", "self"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metric.score(_solution(), sub).final == 1.0


def test_mabe_score_prints_the_warning(tmp_path, capsys):
    sol, sub = tmp_path / "solution.csv", tmp_path / "submission.csv"
    _solution().to_csv(sol, index=False)
    _submission(["mouseX"], ["mouse2"]).to_csv(sub, index=False)
    rc, out, err, caught = _run(["score", str(sol), str(sub)], capsys)
    assert rc == 0, err
    assert any("1 submission row(s)" in w for w in caught), caught

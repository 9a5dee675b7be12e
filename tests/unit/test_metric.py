"""The competition metric: hand-computed cases, a randomized cross-check against a slow set-based
reference written here, and the real labels scored against themselves."""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from mabe import metric
from mabe.errors import MabeDataError, MabeError
from mabe.metric import InvalidSolution, InvalidSubmission

# ----------------------------------------------------------------------------- helpers


def labeled_json(*triples: str) -> str:
    return json.dumps(list(triples))


def solution(rows, labeled: dict) -> pd.DataFrame:
    """rows: (lab, video, agent, target, action, start, stop); labeled: video -> list of triples."""
    df = pd.DataFrame(rows, columns=["lab_id", "video_id", "agent_id", "target_id", "action",
                                     "start_frame", "stop_frame"])
    df["behaviors_labeled"] = [json.dumps(labeled[v]) for v in df["video_id"]]
    return df


def submission(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"])
    df.insert(0, "row_id", np.arange(len(df)))
    return df


def counts(result, lab, action):
    r = result.per_action.set_index(["lab_id", "action"]).loc[(lab, action)]
    return int(r.tp), int(r.fp), int(r.fn), float(r.f1)


class RefError(Exception):
    pass


def reference_score(sol: pd.DataFrame, sub: pd.DataFrame):
    """Slow reference: the rules of mabe-format.md with Python sets of frames, row by row.

    Returns (final, {lab: score}, {(lab, action): (tp, fp, fn)}); raises RefError where the
    scorer must raise. Scored actions: those of every solution row and every kept submission row
    (a row counts even when empty, as the official scorer creates the key).
    """
    for df in (sol, sub):
        for r in df.itertuples():
            if r.start_frame > r.stop_frame:
                raise RefError("start > stop")
    lab_of, allowed = {}, {}
    for r in sol.itertuples():
        v = str(r.video_id)
        lab_of.setdefault(v, r.lab_id)
        allowed.setdefault(v, set(json.loads(r.behaviors_labeled)))
    label = defaultdict(set)
    scored = defaultdict(set)
    for r in sol.itertuples():
        v = str(r.video_id)
        label[(lab_of[v], v, r.agent_id, r.target_id, r.action)] |= set(range(r.start_frame, r.stop_frame))
        scored[lab_of[v]].add(r.action)
    pred = defaultdict(set)
    owner: dict = defaultdict(dict)  # (video, agent, target) -> frame -> action
    for r in sub.itertuples():
        v = str(r.video_id)
        if v not in lab_of or f"{r.agent_id},{r.target_id},{r.action}" not in allowed[v]:
            continue
        lab = lab_of[v]
        scored[lab].add(r.action)
        frames = set(range(r.start_frame, r.stop_frame))
        for f in frames:
            prev = owner[(v, r.agent_id, r.target_id)].get(f)
            if prev is not None and prev != r.action:
                raise RefError(f"two actions on frame {f}")
            owner[(v, r.agent_id, r.target_id)][f] = r.action
        pred[(lab, v, r.agent_id, r.target_id, r.action)] |= frames
    tally = defaultdict(lambda: [0, 0, 0])
    for key in set(label) | set(pred):
        lab, action = key[0], key[4]
        L, P = label.get(key, set()), pred.get(key, set())
        t = tally[(lab, action)]
        t[0] += len(L & P)
        t[1] += len(P - L)
        t[2] += len(L - P)
    lab_scores = {}
    for lab, actions in scored.items():
        f1s = []
        for a in actions:
            tp, fp, fn = tally[(lab, a)]
            f1s.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
        lab_scores[lab] = sum(f1s) / len(f1s)
    final = sum(lab_scores.values()) / len(lab_scores)
    return final, lab_scores, {k: tuple(v) for k, v in tally.items()}


# ----------------------------------------------------------------------------- hand-computed cases

V1, V2, V3 = 101, 202, 303
L1 = ["mouse1,mouse2,sniff", "mouse1,mouse2,attack", "mouse2,mouse1,sniff", "mouse1,self,rear"]


def test_shifted_boundaries_exact_counts():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 10, 20)], {V1: L1})
    sub = submission([(V1, "mouse1", "mouse2", "sniff", 15, 25)])
    r = metric.score(sol, sub)
    assert counts(r, "A", "sniff") == (5, 5, 5, pytest.approx(0.5))
    assert r.final == pytest.approx(0.5)
    # stop is exclusive: [20, 30) shares nothing with [10, 20)
    r = metric.score(sol, submission([(V1, "mouse1", "mouse2", "sniff", 20, 30)]))
    assert counts(r, "A", "sniff")[:3] == (0, 10, 10)
    # one frame of overlap
    r = metric.score(sol, submission([(V1, "mouse1", "mouse2", "sniff", 19, 30)]))
    assert counts(r, "A", "sniff")[:3] == (1, 10, 9)


def test_dropped_and_spurious_intervals_pooled_over_videos_and_pairs():
    lab = {V1: L1, V2: L1}
    sol = solution([
        ("A", V1, "mouse1", "mouse2", "sniff", 0, 10),
        ("A", V1, "mouse2", "mouse1", "sniff", 50, 60),   # missed entirely: 10 FN
        ("A", V2, "mouse1", "mouse2", "sniff", 100, 130),
    ], lab)
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 10),        # 10 TP
        (V2, "mouse1", "mouse2", "sniff", 100, 130),     # 30 TP
        (V2, "mouse2", "mouse1", "sniff", 0, 7),         # spurious: 7 FP
    ])
    r = metric.score(sol, sub)
    tp, fp, fn, f1 = counts(r, "A", "sniff")
    assert (tp, fp, fn) == (40, 7, 10)
    assert f1 == pytest.approx(80 / 97)
    assert r.final == pytest.approx(80 / 97)
    assert int(r.per_lab.set_index("lab_id").loc["A", "label_frames"]) == 50


def test_unlabelled_triples_are_ignored_and_cause_no_overlap_error():
    labeled = {V1: ["mouse1,mouse2,sniff"]}
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], labeled)
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 10),
        (V1, "mouse1", "mouse2", "attack", 0, 10),    # not in behaviors_labeled: ignored, no clash
        (V1, "mouse2", "mouse1", "sniff", 0, 100),    # not labelled for this direction: ignored
        (V1, "mouse1", "self", "rear", 0, 100),
    ])
    r = metric.score(sol, sub)
    assert r.final == 1.0
    assert list(r.per_action["action"]) == ["sniff"]


def test_duplicate_and_overlapping_rows_of_one_key_count_once():
    sol = solution([
        ("A", V1, "mouse1", "mouse2", "sniff", 0, 10),
        ("A", V1, "mouse1", "mouse2", "sniff", 5, 15),    # labels overlap too: frames 0..14
    ], {V1: L1})
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 20),
        (V1, "mouse1", "mouse2", "sniff", 0, 20),
        (V1, "mouse1", "mouse2", "sniff", 10, 20),
    ])
    r = metric.score(sol, sub)
    assert counts(r, "A", "sniff")[:3] == (15, 5, 0)


def test_two_actions_of_one_pair_on_one_frame_raise():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 10),
        (V1, "mouse1", "mouse2", "attack", 9, 12),
    ])
    with pytest.raises(InvalidSubmission) as err:
        metric.score(sol, sub)
    msg = str(err.value)
    assert str(V1) in msg and "mouse1" in msg and "mouse2" in msg and "frame 9" in msg
    assert isinstance(err.value, MabeError)


def test_touching_actions_other_pairs_and_other_videos_do_not_clash():
    labeled = {V1: L1, V2: L1}
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10), ("A", V2, "mouse1", "mouse2", "sniff", 0, 5)],
                   labeled)
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 10),
        (V1, "mouse1", "mouse2", "attack", 10, 12),     # touches, stop exclusive: no shared frame
        (V1, "mouse2", "mouse1", "sniff", 0, 12),       # other pair (direction matters)
        (V1, "mouse1", "self", "rear", 0, 12),          # self is its own pair
        (V2, "mouse1", "mouse2", "attack", 0, 10),      # other video
        (V1, "mouse1", "mouse2", "attack", 11, 11),     # empty
        (V1, "mouse1", "mouse2", "attack", 5, 5),       # empty, inside sniff: covers no frame
    ])
    r = metric.score(sol, sub)
    assert counts(r, "A", "sniff")[:3] == (10, 12, 5)
    assert counts(r, "A", "attack")[:3] == (0, 12, 0)


def test_clash_through_merged_runs_and_identical_starts():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    # a long attack run made of two touching rows; sniff starts inside the second one
    sub = submission([
        (V1, "mouse1", "mouse2", "attack", 0, 50),
        (V1, "mouse1", "mouse2", "attack", 50, 100),
        (V1, "mouse1", "mouse2", "sniff", 70, 71),
    ])
    with pytest.raises(InvalidSubmission, match="frame 70"):
        metric.score(sol, sub)
    sub = submission([(V1, "mouse1", "mouse2", "attack", 30, 31), (V1, "mouse1", "mouse2", "sniff", 30, 31)])
    with pytest.raises(InvalidSubmission, match="frame 30"):
        metric.score(sol, sub)


def test_empty_intervals_cover_no_frame_but_make_the_action_scored():
    labeled = {V1: L1}
    sol = solution([
        ("A", V1, "mouse1", "mouse2", "sniff", 0, 10),
        ("A", V1, "mouse1", "mouse2", "sniff", 20, 20),
    ], labeled)
    r = metric.score(sol, submission([(V1, "mouse1", "mouse2", "sniff", 0, 10), (V1, "mouse1", "mouse2", "sniff", 3, 3)]))
    assert r.final == 1.0
    # an empty predicted interval of an action never labelled in the lab: no frame, yet the official
    # scorer creates its key, so the action is scored with F1 0
    r = metric.score(sol, submission([(V1, "mouse1", "mouse2", "sniff", 0, 10), (V1, "mouse1", "self", "rear", 4, 4)]))
    assert counts(r, "A", "rear") == (0, 0, 0, 0.0)
    assert r.final == pytest.approx(0.5)
    # an action whose only label is empty is scored too (F1 0 whatever is predicted)
    sol2 = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10), ("A", V1, "mouse1", "self", "rear", 7, 7)], labeled)
    r = metric.score(sol2, submission([(V1, "mouse1", "mouse2", "sniff", 0, 10)]))
    assert r.final == pytest.approx(0.5)


def test_start_after_stop_is_an_error_anywhere():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    with pytest.raises(InvalidSubmission, match="start_frame > stop_frame"):
        metric.score(sol, submission([(V1, "mouse1", "mouse2", "sniff", 5, 4)]))
    # even in a row that rule 1 or rule 3 would drop
    with pytest.raises(InvalidSubmission, match="start_frame > stop_frame"):
        metric.score(sol, submission([(999, "mouse1", "mouse2", "sniff", 5, 4)]))
    with pytest.raises(InvalidSubmission, match="start_frame > stop_frame"):
        metric.score(sol, submission([(V1, "mouse1", "mouse2", "chase", 5, 4)]))
    bad = solution([("A", V1, "mouse1", "mouse2", "sniff", 10, 0)], {V1: L1})
    with pytest.raises(InvalidSolution, match="start_frame > stop_frame"):
        metric.score(bad, submission([(V1, "mouse1", "mouse2", "sniff", 0, 4)]))


def test_action_only_in_predictions_adds_a_zero_to_the_lab_mean():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    perfect = [(V1, "mouse1", "mouse2", "sniff", 0, 10)]
    assert metric.score(sol, submission(perfect)).final == 1.0
    r = metric.score(sol, submission(perfect + [(V1, "mouse1", "self", "rear", 0, 10)]))
    assert counts(r, "A", "rear") == (0, 10, 0, 0.0)
    assert r.final == pytest.approx(0.5)
    assert int(r.per_lab.set_index("lab_id").loc["A", "n_actions"]) == 2


def test_labs_are_averaged_with_equal_weight():
    labeled = {V1: L1, V2: L1, V3: L1}
    sol = solution([
        ("A", V1, "mouse1", "mouse2", "sniff", 0, 1000),
        ("B", V2, "mouse1", "mouse2", "sniff", 0, 10),
        ("B", V2, "mouse1", "mouse2", "attack", 10, 20),
        ("B", V3, "mouse1", "self", "rear", 0, 4),
    ], labeled)
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 1000),     # A: 1.0
        (V2, "mouse1", "mouse2", "sniff", 0, 10),       # B: sniff 1, attack 0, rear 2*2/(4+2)
        (V3, "mouse1", "self", "rear", 0, 2),
    ])
    r = metric.score(sol, sub)
    per_lab = r.per_lab.set_index("lab_id")["score"]
    assert per_lab["A"] == 1.0
    assert per_lab["B"] == pytest.approx((1 + 0 + 4 / 6) / 3)
    assert r.final == pytest.approx((1 + (1 + 0 + 4 / 6) / 3) / 2)


def test_videos_not_in_the_solution_are_dropped():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    sub = submission([
        (V1, "mouse1", "mouse2", "sniff", 0, 10),
        (V2, "mouse1", "mouse2", "sniff", 0, 10),
        (V2, "mouse1", "mouse2", "attack", 0, 10),      # would clash if V2 were scored
    ])
    r = metric.score(sol, sub)
    assert r.final == 1.0
    assert counts(r, "A", "sniff")[:3] == (10, 0, 0)


def test_empty_submission_scores_every_label_as_missed():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    r = metric.score(sol, submission([]))
    assert r.final == 0.0
    assert counts(r, "A", "sniff")[:3] == (0, 0, 10)


def test_missing_columns_are_named():
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    with pytest.raises(InvalidSolution, match="behaviors_labeled"):
        metric.score(sol.drop(columns="behaviors_labeled"), submission([]))
    with pytest.raises(InvalidSubmission, match="action"):
        metric.score(sol, submission([]).drop(columns="action"))


def test_integer_ids_are_converted_to_mouse_names():
    sol = solution([("A", V1, 1, 2, "sniff", 0, 10), ("A", V1, 1, 1, "rear", 0, 5)], {V1: L1})
    sub = submission([(V1, "mouse1", "mouse2", "sniff", 0, 10), (V1, "mouse1", "self", "rear", 0, 5)])
    assert metric.score(sol, sub).final == 1.0


def test_find_pair_overlap():
    pair = np.array([0, 0, 1, 0])
    action = np.array([0, 1, 0, 0])
    start = np.array([0, 10, 5, 8])
    stop = np.array([10, 12, 20, 9])
    assert metric.find_pair_overlap(pair, action, start, stop) is None
    stop[3] = 11  # action 0 of pair 0 now reaches frame 10, claimed by action 1
    i, j, frame = metric.find_pair_overlap(pair, action, start, stop)
    assert frame == 10 and {action[i], action[j]} == {0, 1} and pair[i] == pair[j] == 0


# ----------------------------------------------------------------------------- randomized cross-check

ACTS = ["sniff", "attack", "mount", "rear"]


def _random_case(rng: np.random.Generator, clash_ok: bool):
    labs = [f"lab{i}" for i in range(rng.integers(1, 4))]
    n_videos = int(rng.integers(1, 5))
    videos = {}
    for v in range(n_videos):
        mice = [f"mouse{i}" for i in range(1, int(rng.integers(2, 4)) + 1)]
        triples = []
        for a in mice:
            for t in mice + ["self"]:
                if t == a:
                    continue
                for act in ACTS:
                    if (act == "rear") == (t == "self") and rng.random() < 0.6:
                        triples.append(f"{a},{t},{act}")
        if not triples:
            triples = ["mouse1,mouse2,sniff"]
        videos[1000 + v] = (labs[int(rng.integers(len(labs)))], mice, triples)

    def rand_interval():
        s = int(rng.integers(0, 60))
        return s, s + int(rng.integers(0, 15)) if rng.random() > 0.1 else s

    sol_rows = []
    for vid, (lab, _mice, triples) in videos.items():
        for _ in range(int(rng.integers(1, 8))):
            a, t, act = triples[int(rng.integers(len(triples)))].split(",")
            sol_rows.append((lab, vid, a, t, act, *rand_interval()))
    sub_rows = []
    for vid, (_lab, mice, triples) in videos.items():
        # per pair, a sequence of disjoint segments with one action each (+ duplicates of a segment)
        pairs = sorted({tuple(tr.split(",")[:2]) for tr in triples})
        for a, t in pairs:
            allowed = [tr.split(",")[2] for tr in triples if tr.startswith(f"{a},{t},")]
            pos = int(rng.integers(0, 10))
            while pos < 80:
                length = int(rng.integers(0, 12))
                act = allowed[int(rng.integers(len(allowed)))]
                sub_rows.append((vid, a, t, act, pos, pos + length))
                if rng.random() < 0.2:  # a repeated / overlapping row of the same action
                    sub_rows.append((vid, a, t, act, pos + int(length > 0), pos + length))
                pos += length + int(rng.integers(0, 6))
        # unlabelled triples anywhere (ignored; they may overlap anything)
        for _ in range(int(rng.integers(0, 4))):
            a = mice[int(rng.integers(len(mice)))]
            sub_rows.append((vid, a, "self", "dig", *rand_interval()))
    for _ in range(int(rng.integers(0, 3))):  # a video not in the solution
        sub_rows.append((999, "mouse1", "mouse2", ACTS[int(rng.integers(3))], *rand_interval()))
    if clash_ok and sub_rows:
        # random extra rows of labelled triples: may or may not create a clash
        for _ in range(int(rng.integers(1, 4))):
            vid = 1000 + int(rng.integers(n_videos))
            tr = videos[vid][2][int(rng.integers(len(videos[vid][2])))]
            a, t, act = tr.split(",")
            sub_rows.append((vid, a, t, act, *rand_interval()))
    order = rng.permutation(len(sub_rows))
    sub_rows = [sub_rows[i] for i in order]
    return solution(sol_rows, {v: tr for v, (_, _, tr) in videos.items()}), submission(sub_rows)


def test_randomized_against_set_based_reference():
    rng = np.random.default_rng(12345)
    n_raised = n_scored = 0
    for case in range(250):
        sol, sub = _random_case(rng, clash_ok=case % 3 == 0)
        try:
            expected = reference_score(sol, sub)
        except RefError:
            with pytest.raises(InvalidSubmission):
                metric.score(sol, sub)
            n_raised += 1
            continue
        got = metric.score(sol, sub)
        n_scored += 1
        final, lab_scores, tally = expected
        got_tally = {(r.lab_id, r.action): (r.tp, r.fp, r.fn) for r in got.per_action.itertuples()}
        assert got_tally == tally, f"case {case}"
        assert dict(zip(got.per_lab["lab_id"], got.per_lab["score"])) == pytest.approx(lab_scores, abs=1e-12)
        assert got.final == pytest.approx(final, abs=1e-12), f"case {case}"
    assert n_raised > 10 and n_scored > 150  # both paths exercised


# ----------------------------------------------------------------------------- files, CLI, real labels


def test_load_solution_csv_and_missing_column(tmp_path):
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 0, 10)], {V1: L1})
    sol.to_csv(tmp_path / "sol.csv", index=False)
    back = metric.load_solution(tmp_path / "sol.csv")
    assert list(back.columns) == list(metric.SOLUTION_COLUMNS)
    assert metric.score(back, submission([(V1, "mouse1", "mouse2", "sniff", 0, 10)])).final == 1.0
    sol.drop(columns="lab_id").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(MabeDataError) as err:
        metric.load_solution(tmp_path / "bad.csv")
    assert "bad.csv" in str(err.value) and "lab_id" in str(err.value)


def test_main_prints_tables_and_the_score_last(tmp_path, capsys):
    sol = solution([("A", V1, "mouse1", "mouse2", "sniff", 10, 20)], {V1: L1})
    sol.to_csv(tmp_path / "sol.csv", index=False)
    submission([(V1, "mouse1", "mouse2", "sniff", 15, 25)]).to_csv(tmp_path / "sub.csv", index=False)
    final = metric.main_from_args(argparse.Namespace(solution=tmp_path / "sol.csv", submission=tmp_path / "sub.csv"))
    out = capsys.readouterr().out.strip().splitlines()
    assert final == pytest.approx(0.5)
    assert out[-1] == "score: 0.500000"
    assert any("sniff" in line for line in out)


@pytest.fixture(scope="module")
def real_solution(real_data):
    with pytest.warns(UserWarning) as record:
        sol = metric.load_solution(real_data)
    messages = " | ".join(str(w.message) for w in record)
    assert "PleasantMeerkat/1375833299" in messages  # labelled, no annotation file
    assert "CRIM13/1733903958" in messages  # annotation file, no metadata row
    return sol


def _as_submission(sol: pd.DataFrame) -> pd.DataFrame:
    sub = sol[["video_id", "agent_id", "target_id", "action", "start_frame", "stop_frame"]].copy()
    sub.insert(0, "row_id", np.arange(len(sub)))
    return sub


def test_real_labels_score_exactly_one_against_themselves(real_solution):
    sol = real_solution
    assert len(sol) == 83620 - 29  # every interval but the 29 of the video without metadata
    assert (sol["start_frame"] == sol["stop_frame"]).sum() > 0  # empty intervals are in there
    assert sol["target_id"].eq("self").any()
    t0 = time.perf_counter()
    result = metric.score(sol, _as_submission(sol))
    elapsed = time.perf_counter() - t0
    print(f"\nscored {len(sol)} real intervals against themselves in {elapsed:.2f}s")
    # this also shows the real labels hold no two actions of one pair on one frame (else: raise)
    assert result.final == 1.0
    assert len(result.per_lab) == 19
    assert (result.per_action["fp"] == 0).all() and (result.per_action["fn"] == 0).all()


def test_real_lab_perturbed_matches_reference(real_solution):
    """Real intervals of two labs, shifted (one shift per pair keeps a pair's actions disjoint),
    shortened and partly dropped: the vectorised score equals the set-based reference."""
    rng = np.random.default_rng(7)
    sol = real_solution[real_solution["lab_id"].isin(["BoisterousParrot", "DeliriousFly"])].reset_index(drop=True)
    sub = _as_submission(sol)
    pair = sub.groupby(["video_id", "agent_id", "target_id"]).ngroup().to_numpy()
    shift = rng.integers(-20, 21, pair.max() + 1)[pair]
    start = np.maximum(sub["start_frame"].to_numpy() + shift, 0)
    stop = np.maximum(sub["stop_frame"].to_numpy() + shift, start)
    stop = start + ((stop - start) * rng.uniform(0.5, 1.0, len(sub))).astype(np.int64)
    sub["start_frame"], sub["stop_frame"] = start, stop
    sub = sub.sample(frac=0.8, random_state=1).reset_index(drop=True)
    sub["row_id"] = np.arange(len(sub))
    expected = reference_score(sol, sub)
    got = metric.score(sol, sub)
    assert got.final == pytest.approx(expected[0], abs=1e-12)
    assert {(r.lab_id, r.action): (r.tp, r.fp, r.fn) for r in got.per_action.itertuples()} == expected[2]
    assert 0 < got.final < 1

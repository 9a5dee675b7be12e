"""The competition metric: frame-level F1 per (lab, action), averaged per lab, then over labs.

It follows ../shared/docs/mabe-format.md ("The metric") and therefore the official scorer, quirks
included, but with vectorised interval arithmetic instead of Python sets of frames:

1. submission rows for videos not in the solution are dropped; labs come from the solution;
2. an interval covers ``start_frame .. stop_frame - 1``; ``start > stop`` anywhere (solution or
   submission, checked before any row is dropped) raises; ``start == stop`` is empty;
3. a predicted row whose ``"agent,target,action"`` is not in its video's ``behaviors_labeled`` is
   dropped and plays no part in rule 4 (the solution's own rows are never filtered);
4. repeated frames of one (video, agent, target, action) count once; two different kept actions of
   one (video, agent, target) on one frame raise :class:`InvalidSubmission`;
5. TP / FN / FP frames are pooled per (lab, action); F1 = 2TP / (2TP + FN + FP), 0 when all are 0;
6. a lab's score is the mean F1 over its scored actions, the final score the mean over labs.

Quirks reproduced on purpose (they follow from how the official scorer builds its frame sets):

- *Scored actions.* The official scorer looks every kept prediction key up in a defaultdict of
  label frames, which creates it; so the scored actions of a lab are the actions of its solution
  rows plus those of its kept submission rows. An action only predicted adds an F1 of 0. A row
  counts here even when its interval is empty (``start == stop``): the key is created all the same.
- *Which labs.* Labs are those of the solution rows. The solution is one row per labelled interval,
  so a lab (or a video) without any interval is absent: it is not scored, and predictions for its
  videos are dropped by rule 1. :func:`load_solution` keeps that behaviour (see there).
- *behaviors_labeled* of a video is read from its first solution row.

Deviations (documented): the official scorer refuses an empty submission; here an empty submission
scores every labelled frame as a false negative (a model that predicts nothing should score, not
crash a training run). Integer ``agent_id`` / ``target_id`` columns are accepted on both sides and
converted to ``mouseN`` (``self`` where target == agent); the official scorer would compare them as
the strings ``"1"``, which never match ``behaviors_labeled``.

How: every (video, agent, target, action) key gets an integer id; frames become global coordinates
``key * M + frame`` so that one sort handles all keys. Per key, intervals are merged into disjoint
runs (sort + running maximum of stops). Intersections between the label and prediction runs come
from a prefix sum of run lengths and ``np.searchsorted``. Overlaps between different actions of a
pair: after merging, the runs of one action never touch, so sorting the runs of a pair by start and
comparing each start with the running maximum of the earlier stops finds exactly the frames claimed
by two actions.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mabe.errors import MabeDataError, MabeError
from mabe.io import write_json
from mabe.schema import INTERVAL_COLUMNS, SOLUTION_COLUMNS, SUBMISSION_COLUMNS

__all__ = [
    "f1_from_counts",
    "InvalidSubmission",
    "InvalidSolution",
    "ScoreResult",
    "SOLUTION_COLUMNS",
    "SUBMISSION_COLUMNS",
    "score",
    "load_solution",
    "solution_from_annotations",
    "mouse_ids",
    "find_pair_overlap",
    "main_from_args",
]

_INTERVAL_COLUMNS = INTERVAL_COLUMNS


def f1_from_counts(tp: Any, fp: Any, fn: Any) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) elementwise (float64), 0 where all three are 0: the one F1 formula."""
    tp, fp, fn = np.asarray(tp), np.asarray(fp), np.asarray(fn)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(np.shape(denom), dtype=np.float64), where=denom > 0)


class InvalidSubmission(MabeError, ValueError):
    """The submission breaks a rule of the metric (or of the submission format)."""


class InvalidSolution(MabeError, ValueError):
    """The solution (ground truth) is unusable."""


@dataclass
class ScoreResult:
    """``final`` score; ``per_lab`` (lab_id, score, n_actions, label_frames) and ``per_action``
    (lab_id, action, tp, fp, fn, f1), both sorted by lab (and action)."""

    final: float
    per_lab: pd.DataFrame
    per_action: pd.DataFrame

    def __float__(self) -> float:
        return float(self.final)


# ----------------------------------------------------------------------------- column helpers


def mouse_ids(agent, target) -> tuple[np.ndarray, np.ndarray]:
    """Integer mouse ids -> the submission's strings: ``mouseN``, and ``self`` where target == agent."""
    agent = np.asarray(agent).astype(np.int64)
    target = np.asarray(target).astype(np.int64)
    a = np.char.add("mouse", agent.astype(str))
    t = np.where(target == agent, "self", np.char.add("mouse", target.astype(str)))
    return a.astype(object), t.astype(object)


def _ids_as_str(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    a, t = df["agent_id"], df["target_id"]
    if pd.api.types.is_integer_dtype(a) and pd.api.types.is_integer_dtype(t):
        return mouse_ids(a.to_numpy(), t.to_numpy())
    return a.astype(str).to_numpy(dtype=object), t.astype(str).to_numpy(dtype=object)


def _video_as_str(s: pd.Series) -> np.ndarray:
    out = s.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_float_dtype(s):
        # element by element: one NaN or fractional id must not stop 7.0 from matching video 7
        v = s.to_numpy()
        whole = np.isfinite(v) & (v == np.round(v))
        out[whole] = v[whole].astype(np.int64).astype(str)
    return out


def _frames(df: pd.DataFrame, col: str, what: str, err: type[MabeError]) -> np.ndarray:
    s = df[col]
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise err(f"{what}: column {col} must be integer frame numbers, got dtype {s.dtype}")
    v = s.to_numpy()
    if v.dtype.kind == "f":
        bad = ~np.isfinite(v) | (v != np.round(v))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise err(f"{what}: row {i} has a non-integer {col} ({v[i]!r})")
    return v.astype(np.int64)


def _check_order(start: np.ndarray, stop: np.ndarray, video: np.ndarray, what: str, err: type[MabeError]) -> None:
    bad = start > stop
    if bad.any():
        idx = np.flatnonzero(bad)
        i = int(idx[0])
        raise err(
            f"{what}: {len(idx)} row(s) have start_frame > stop_frame; first: row {i} of video {video[i]} "
            f"(start_frame={int(start[i])}, stop_frame={int(stop[i])})"
        )


def _parse_labeled(value, video: str) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(x) for x in value]
    if not isinstance(value, str):
        raise InvalidSolution(f"solution: video {video} has no behaviors_labeled (got {value!r})")
    try:
        out = json.loads(value)
    except json.JSONDecodeError as err:
        raise InvalidSolution(f"solution: video {video}: behaviors_labeled is not valid JSON ({err})") from None
    if not isinstance(out, list):
        raise InvalidSolution(f"solution: video {video}: behaviors_labeled must be a JSON list, got {value[:80]!r}")
    return [str(x) for x in out]


# ----------------------------------------------------------------------------- interval arithmetic


def _union(gstart: np.ndarray, gstop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, sorted runs covering the union of non-empty intervals (global coordinates).

    Runs that touch ([a, b) and [b, c)) are merged, so distinct runs are separated by >= 1 frame.
    """
    if len(gstart) == 0:
        return gstart.copy(), gstop.copy()
    order = np.lexsort((gstop, gstart))
    s, e = gstart[order], gstop[order]
    runmax = np.maximum.accumulate(e)
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > runmax[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(s) - 1)
    return s[first], runmax[last]


def _covered_before(run_start: np.ndarray, run_stop: np.ndarray, cum: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Frames of the disjoint sorted runs that lie before ``x`` (exclusive), for each x."""
    i = np.searchsorted(run_start, x, side="right") - 1
    ok = i >= 0
    ic = np.where(ok, i, 0)
    inside = np.clip(x - run_start[ic], 0, run_stop[ic] - run_start[ic])
    return np.where(ok, cum[ic] + inside, 0)


def _intersection(a_start, a_stop, b_start, b_stop) -> np.ndarray:
    """For each run of B, the number of frames it shares with the disjoint sorted runs A."""
    if len(a_start) == 0 or len(b_start) == 0:
        return np.zeros(len(b_start), dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(a_stop - a_start)])
    return _covered_before(a_start, a_stop, cum, b_stop) - _covered_before(a_start, a_stop, cum, b_start)


def find_pair_overlap(
    pair: np.ndarray, action: np.ndarray, start: np.ndarray, stop: np.ndarray
) -> tuple[int, int, int] | None:
    """First frame claimed by two different actions of one pair, or None.

    ``pair`` and ``action`` are integer codes (one pair = one (video, agent, target)); frames are
    ``start .. stop - 1``. Returns ``(i, j, frame)``: row indices of two overlapping rows with
    different actions and the first frame they share (the smallest over the first offending pair).
    Vectorised: merge per (pair, action), then compare sorted starts with the running max stop.
    """
    pair = np.asarray(pair, dtype=np.int64)
    action = np.asarray(action, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    stop = np.asarray(stop, dtype=np.int64)
    keep = start < stop
    if keep.sum() < 2:
        return None
    rows = np.flatnonzero(keep)
    pr, ac, s, e = pair[keep], action[keep], start[keep], stop[keep]
    lo = s.min()
    m = int(e.max() - lo) + 2
    a0 = int(ac.min())
    _, key = np.unique(pr * (int(ac.max()) - a0 + 1) + (ac - a0), return_inverse=True)
    key = key.ravel().astype(np.int64)
    key_pair = np.zeros(key.max() + 1, dtype=np.int64)
    key_pair[key] = pr
    rs, re = _union(key * m + (s - lo), key * m + (e - lo))
    rkey = rs // m
    rpair = key_pair[rkey]
    fs, fe = rs - rkey * m, re - rkey * m  # back to (shifted) frames
    # sort runs by (pair, start); re-encode pairs as dense codes for global coordinates
    _, pcode = np.unique(rpair, return_inverse=True)
    pcode = pcode.ravel().astype(np.int64)
    gs, ge = pcode * m + fs, pcode * m + fe
    order = np.lexsort((ge, gs))
    gs, ge = gs[order], ge[order]
    prev_max = np.maximum.accumulate(ge)[:-1]
    clash = gs[1:] < prev_max
    if not clash.any():
        return None
    j = int(np.flatnonzero(clash)[0]) + 1
    # the offending pair and frame; find two original rows (slow path, one pair only)
    the_pair = int(rpair[order[j]])
    frame = int(fs[order[j]] + lo)
    cand = np.flatnonzero((pr == the_pair) & (s <= frame) & (e > frame))
    first_action = ac[cand[0]]
    other = cand[ac[cand] != first_action]
    return int(rows[cand[0]]), int(rows[other[0]]), frame


# ----------------------------------------------------------------------------- scoring


def _warn_malformed_ids(agent: np.ndarray, target: np.ndarray) -> None:
    """Warn (with a count and examples) about submission ids that are neither ``mouseN`` nor, for the
    target, ``self``: they can never match ``behaviors_labeled``, so those rows score nothing."""
    a_ok = pd.Series(agent, dtype=object).str.fullmatch(r"mouse\d+").fillna(False).to_numpy(dtype=bool)
    t_ok = pd.Series(target, dtype=object).str.fullmatch(r"mouse\d+|self").fillna(False).to_numpy(dtype=bool)
    bad = ~(a_ok & t_ok)
    if bad.any():
        examples = list(dict.fromkeys(
            [repr(x) for x in agent[~a_ok]] + [repr(x) for x in target[~t_ok]]))[:5]
        warnings.warn(f"submission: {int(bad.sum())} submission row(s) have an agent_id / target_id that is "
                      f"neither mouseN nor (target) self, e.g. {', '.join(examples)}; they match no "
                      "behaviors_labeled entry and score nothing", stacklevel=3)


def _prepare(df: pd.DataFrame, columns: Iterable[str], what: str, err: type[MabeError]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise err(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise err(f"{what} is missing column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")


def score(solution: pd.DataFrame, submission: pd.DataFrame) -> ScoreResult:
    """The competition score of ``submission`` against ``solution`` (see the module docstring)."""
    _prepare(solution, SOLUTION_COLUMNS, "solution", InvalidSolution)
    _prepare(submission, _INTERVAL_COLUMNS, "submission", InvalidSubmission)
    if len(solution) == 0:
        raise InvalidSolution("solution has no rows (no labelled intervals)")

    # ---- solution
    s_video = _video_as_str(solution["video_id"])
    s_lab = solution["lab_id"].astype(str).to_numpy(dtype=object)
    s_agent, s_target = _ids_as_str(solution)
    s_action = solution["action"].astype(str).to_numpy(dtype=object)
    s_start = _frames(solution, "start_frame", "solution", InvalidSolution)
    s_stop = _frames(solution, "stop_frame", "solution", InvalidSolution)
    _check_order(s_start, s_stop, s_video, "solution", InvalidSolution)

    # video -> lab (unique) and video -> behaviors_labeled (first row of the video, as officially)
    vl = pd.DataFrame({"video": s_video, "lab": s_lab})
    n_labs = vl.groupby("video", sort=False)["lab"].nunique()
    if (n_labs > 1).any():
        v = n_labs.index[n_labs.to_numpy() > 1][0]
        raise InvalidSolution(f"solution: video {v} appears under several labs {sorted(set(vl.lab[vl.video == v]))}")
    first = pd.Series(np.arange(len(s_video))).groupby(s_video, sort=False).first()
    video_lab = dict(zip(first.index, s_lab[first.to_numpy()]))
    bl = solution["behaviors_labeled"]
    allowed = [
        f"{v},{triple}"
        for v, i in zip(first.index, first.to_numpy())
        for triple in _parse_labeled(bl.iloc[i], v)
    ]

    # ---- submission: rule 2 on every row, then rules 1 and 3
    p_start = _frames(submission, "start_frame", "submission", InvalidSubmission)
    p_stop = _frames(submission, "stop_frame", "submission", InvalidSubmission)
    p_video = _video_as_str(submission["video_id"])
    _check_order(p_start, p_stop, p_video, "submission", InvalidSubmission)
    if len(submission):
        p_agent, p_target = _ids_as_str(submission)
        _warn_malformed_ids(p_agent, p_target)
        p_action = submission["action"].astype(str).to_numpy(dtype=object)
        triple = pd.Series(p_video) + "," + pd.Series(p_agent) + "," + pd.Series(p_target) + "," + pd.Series(p_action)
        kept = triple.isin(pd.Index(allowed)).to_numpy()  # rule 3 also drops videos not in the solution
        p_video, p_agent, p_target, p_action = p_video[kept], p_agent[kept], p_target[kept], p_action[kept]
        p_start, p_stop = p_start[kept], p_stop[kept]
        p_rows = np.flatnonzero(kept)
    else:
        p_agent = p_target = p_action = np.array([], dtype=object)
        p_rows = np.array([], dtype=np.int64)
    p_lab = pd.Series(p_video, dtype=object).map(video_lab).to_numpy(dtype=object)

    # ---- keys: (video, agent, target, action) over both sides
    ns = len(s_video)
    pair_text = (
        np.concatenate([s_video, p_video]) + "\x1f" + np.concatenate([s_agent, p_agent]) + "\x1f"
        + np.concatenate([s_target, p_target])
    )
    action_all = np.concatenate([s_action, p_action])
    key = pd.factorize(pair_text + "\x1f" + action_all)[0].astype(np.int64)
    pair = pd.factorize(pair_text)[0].astype(np.int64)
    lab_all = np.concatenate([s_lab, p_lab])
    n_keys = int(key.max()) + 1
    key_first = np.full(n_keys, -1, dtype=np.int64)
    key_first[key[::-1]] = np.arange(len(key))[::-1]
    key_lab = lab_all[key_first]
    key_action = action_all[key_first]

    # ---- rule 4: different actions of one pair on one frame (kept predictions only)
    p_key, p_pair = key[ns:], pair[ns:]
    if len(p_key):
        clash = find_pair_overlap(p_pair, p_key, p_start, p_stop)
        if clash is not None:
            i, j, frame = clash
            raise InvalidSubmission(
                f"submission: video {p_video[i]}, agent {p_agent[i]}, target {p_target[i]}: two actions on "
                f"frame {frame} ({p_action[i]!r} in row {p_rows[i]} and {p_action[j]!r} in row {p_rows[j]}); "
                "only one action per (agent, target) pair and frame is allowed"
            )

    # ---- frame counts per key in global coordinates key * M + frame
    all_start = np.concatenate([s_start, p_start])
    all_stop = np.concatenate([s_stop, p_stop])
    lo = int(all_start.min())
    m = int(all_stop.max()) - lo + 2
    gs, ge = key * m + (all_start - lo), key * m + (all_stop - lo)
    ls, le = (gs[:ns], ge[:ns])
    ps, pe = (gs[ns:], ge[ns:])
    nz = ls < le
    lrs, lre = _union(ls[nz], le[nz])
    nz = ps < pe
    prs, pre = _union(ps[nz], pe[nz])
    label_frames = np.bincount(lrs // m, weights=lre - lrs, minlength=n_keys).astype(np.int64)
    pred_frames = np.bincount(prs // m, weights=pre - prs, minlength=n_keys).astype(np.int64)
    tp = np.bincount(prs // m, weights=_intersection(lrs, lre, prs, pre), minlength=n_keys).astype(np.int64)

    # ---- rules 5 and 6: pool per (lab, action), mean F1 per lab, mean over labs
    la, la_names = pd.factorize(key_lab + "\x1f" + key_action)
    n_la = len(la_names)

    def pool(x: np.ndarray) -> np.ndarray:
        return np.bincount(la, weights=x, minlength=n_la).astype(np.int64)

    tp_la, pred_la, label_la = pool(tp), pool(pred_frames), pool(label_frames)
    fp_la, fn_la = pred_la - tp_la, label_la - tp_la
    f1 = f1_from_counts(tp_la, fp_la, fn_la)
    split = [str(x).split("\x1f") for x in la_names]
    per_action = pd.DataFrame({
        "lab_id": [x[0] for x in split], "action": [x[1] for x in split],
        "tp": tp_la, "fp": fp_la, "fn": fn_la, "f1": f1, "label_frames": label_la,
    }).sort_values(["lab_id", "action"], kind="stable").reset_index(drop=True)
    lab_code, lab_names = pd.factorize(per_action["lab_id"], sort=True)
    n_actions = np.bincount(lab_code, minlength=len(lab_names))
    per_lab = pd.DataFrame({
        "lab_id": np.asarray(lab_names, dtype=object),
        "score": np.bincount(lab_code, weights=per_action["f1"].to_numpy(), minlength=len(lab_names)) / n_actions,
        "n_actions": n_actions,
        "label_frames": np.bincount(
            lab_code, weights=per_action["label_frames"].to_numpy(), minlength=len(lab_names)
        ).astype(np.int64),
    })
    final = float(per_lab["score"].mean())
    return ScoreResult(
        final=final,
        per_lab=per_lab,
        per_action=per_action[["lab_id", "action", "tp", "fp", "fn", "f1"]],
    )


# ----------------------------------------------------------------------------- loading


def solution_from_annotations(
    annotations: pd.DataFrame, metadata: pd.DataFrame
) -> pd.DataFrame:
    """Annotation rows (video_id, agent_id int, target_id int, action, start_frame, stop_frame) +
    metadata (video_id, lab_id, behaviors_labeled) -> the solution frame (ids ``mouseN`` / ``self``).

    Rows of videos absent from ``metadata`` are dropped with a warning.
    """
    meta = metadata[["video_id", "lab_id", "behaviors_labeled"]].drop_duplicates("video_id")
    ann = annotations
    known = ann["video_id"].isin(meta["video_id"])
    if not known.all():
        unknown = sorted(set(ann.loc[~known, "video_id"].tolist()))
        warnings.warn(
            f"{int((~known).sum())} annotation row(s) of {len(unknown)} video(s) without metadata dropped "
            f"(e.g. video {unknown[0]})",
            stacklevel=2,
        )
        ann = ann[known]
    agent, target = mouse_ids(ann["agent_id"].to_numpy(), ann["target_id"].to_numpy())
    idx = pd.Index(meta["video_id"]).get_indexer(ann["video_id"])
    labeled = pd.Categorical(meta["behaviors_labeled"].astype(str).to_numpy()[idx])
    return pd.DataFrame({
        "lab_id": meta["lab_id"].astype(str).to_numpy()[idx],
        "video_id": ann["video_id"].to_numpy().astype(np.int64),
        "agent_id": agent,
        "target_id": target,
        "action": ann["action"].astype(str).to_numpy(),
        "start_frame": ann["start_frame"].to_numpy().astype(np.int64),
        "stop_frame": ann["stop_frame"].to_numpy().astype(np.int64),
        "behaviors_labeled": labeled,
    })


def _read_annotation_file(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    cols = ["agent_id", "target_id", "action", "start_frame", "stop_frame"]
    try:
        table = pq.read_table(path, columns=cols)
    except Exception as err:  # pyarrow raises several types for unreadable / incomplete files
        raise MabeDataError(path, None, f"an annotation parquet with columns {cols}", f"unreadable ({err})") from None
    out = {}
    for c in cols:
        arr = table.column(c).to_numpy()
        if c != "action" and arr.dtype.kind not in "iu":
            raise MabeDataError(path, c, "integers", f"dtype {arr.dtype}")
        out[c] = arr.astype(str) if c == "action" else arr.astype(np.int64)
    return out


def _labeled_nonempty(value) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        return len(json.loads(value)) > 0
    except json.JSONDecodeError:
        return False


def load_solution(path: str | Path, split: str = "train", labs: Iterable[str] | None = None) -> pd.DataFrame:
    """The solution frame from a MABe data directory or from a CSV in the solution format.

    Directory: ``<split>.csv`` + ``<split>_annotation/<lab>/<video>.parquet``. Every video with a
    non-empty ``behaviors_labeled`` contributes its annotation rows (empty intervals included). A
    labelled video without an annotation file contributes nothing, exactly as in the official solution
    (one row per interval: such a video is absent, so predictions for it are dropped, not counted as
    false positives); annotation files of videos that have no labelled metadata row are skipped.
    Both cases are reported with ``warnings.warn`` and counts.

    CSV: must hold every column of :data:`SOLUTION_COLUMNS`; a missing one raises
    :class:`MabeDataError` naming the file and the column.

    ``labs``: keep only these labs (others are not even read).
    """
    path = Path(path)
    labs = None if labs is None else {str(x) for x in labs}
    if path.is_dir():
        return _load_solution_dir(path, split, labs)
    if not path.is_file():
        raise MabeDataError(path, None, "a data directory or a solution CSV", "no such file or directory")
    try:
        df = pd.read_csv(path, dtype={"agent_id": str, "target_id": str, "action": str, "lab_id": str})
    except (OSError, ValueError) as err:
        raise MabeDataError(path, None, "a readable CSV", str(err)) from None
    for col in SOLUTION_COLUMNS:
        if col not in df.columns:
            raise MabeDataError(path, col, f"a solution CSV with the columns {', '.join(SOLUTION_COLUMNS)}",
                                "the column is missing")
    if labs is not None:
        df = df[df["lab_id"].astype(str).isin(labs)].reset_index(drop=True)
    df["behaviors_labeled"] = pd.Categorical(df["behaviors_labeled"])
    return df[list(SOLUTION_COLUMNS)]


def _load_solution_dir(root: Path, split: str, labs: set[str] | None) -> pd.DataFrame:
    csv = root / f"{split}.csv"
    ann_root = root / f"{split}_annotation"
    if not csv.is_file():
        raise MabeDataError(root, None, f"a data directory holding {split}.csv", "no such file")
    meta = pd.read_csv(csv, usecols=lambda c: c in ("lab_id", "video_id", "behaviors_labeled"))
    for col in ("lab_id", "video_id", "behaviors_labeled"):
        if col not in meta.columns:
            raise MabeDataError(csv, col, "this column", "it is missing")
    if labs is not None:
        meta = meta[meta["lab_id"].astype(str).isin(labs)]
    labeled = meta[meta["behaviors_labeled"].map(_labeled_nonempty)]
    parts: list[pd.DataFrame] = []
    missing: list[str] = []
    seen: set[Path] = set()
    for lab, video in zip(labeled["lab_id"].astype(str), labeled["video_id"].astype(np.int64)):
        f = ann_root / lab / f"{video}.parquet"
        if not f.is_file():
            missing.append(f"{lab}/{video}")
            continue
        seen.add(f.resolve())
        cols = _read_annotation_file(f)
        part = pd.DataFrame(cols)
        part["video_id"] = np.int64(video)
        parts.append(part)
    if missing:
        warnings.warn(
            f"{len(missing)} labelled video(s) have no annotation file and contribute nothing to the solution "
            f"(e.g. {missing[0]})",
            stacklevel=3,
        )
    files = sorted(ann_root.glob("*/*.parquet")) if ann_root.is_dir() else []
    orphans = [p for p in files if p.resolve() not in seen and (labs is None or p.parent.name in labs)]
    if orphans:
        warnings.warn(
            f"{len(orphans)} annotation file(s) have no labelled row in {csv.name} and are skipped "
            f"(e.g. {orphans[0].parent.name}/{orphans[0].name})",
            stacklevel=3,
        )
    if not parts:
        raise MabeDataError(ann_root, None, "at least one annotation file of a labelled video", "none")
    ann = pd.concat(parts, ignore_index=True)
    return solution_from_annotations(ann, labeled)


# ----------------------------------------------------------------------------- command line


def read_submission(path: str | Path) -> pd.DataFrame:
    """A submission CSV with string ids (``mouseN`` / ``self``)."""
    path = Path(path)
    if not path.is_file():
        raise MabeDataError(path, None, "a submission CSV", "no such file")
    try:
        return pd.read_csv(path, dtype={"agent_id": str, "target_id": str, "action": str})
    except (OSError, ValueError) as err:
        raise MabeDataError(path, None, "a readable CSV", str(err)) from None


def print_result(result: ScoreResult) -> None:
    """Per-lab and per-action tables (rich), then ``score: X`` as the last line."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    t = Table(title="per action")
    for col in ("lab", "action", "tp", "fp", "fn", "f1"):
        t.add_column(col, justify="left" if col in ("lab", "action") else "right")
    for r in result.per_action.itertuples(index=False):
        t.add_row(r.lab_id, r.action, str(r.tp), str(r.fp), str(r.fn), f"{r.f1:.4f}")
    console.print(t)
    t = Table(title="per lab")
    for col in ("lab", "score", "actions", "labelled frames"):
        t.add_column(col, justify="left" if col == "lab" else "right")
    for r in result.per_lab.itertuples(index=False):
        t.add_row(r.lab_id, f"{r.score:.4f}", str(r.n_actions), str(r.label_frames))
    console.print(t)
    print(f"score: {result.final:.6f}", flush=True)


def main_from_args(args) -> float:
    """``mabe score SOLUTION SUBMISSION``."""
    t0 = time.perf_counter()
    solution = load_solution(args.solution)
    submission = read_submission(args.submission)
    result = score(solution, submission)
    print(f"{len(solution)} solution rows, {len(submission)} submission rows, "
          f"{len(result.per_lab)} labs, scored in {time.perf_counter() - t0:.2f}s")
    print_result(result)
    if getattr(args, "json", None) is not None:
        write_result_json(result, args.json)
        print(f"scores (full precision) -> {args.json}")
    return result.final


def result_dict(result: ScoreResult) -> dict:
    """ScoreResult -> plain dict with float64 scores at full precision (JSON round-trips them exactly)."""
    return {
        "score": float(result.final),
        "per_lab": [{"lab_id": str(r.lab_id), "score": float(r.score), "n_actions": int(r.n_actions),
                     "label_frames": int(r.label_frames)} for r in result.per_lab.itertuples(index=False)],
        "per_action": [{"lab_id": str(r.lab_id), "action": str(r.action), "tp": int(r.tp), "fp": int(r.fp),
                        "fn": int(r.fn), "f1": float(r.f1)} for r in result.per_action.itertuples(index=False)],
    }


def write_result_json(result: ScoreResult, path: str | Path) -> Path:
    """Write result_dict(result) atomically (temp file, then rename)."""
    return write_json(path, result_dict(result))

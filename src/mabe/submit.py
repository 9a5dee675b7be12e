"""Intervals -> a validated competition submission CSV.

Format: ``row_id,video_id,agent_id,target_id,action,start_frame,stop_frame``; ids ``mouseN``,
target ``self`` for a self behaviour, stop exclusive, rows sorted by (video_id, agent_id, target_id,
start_frame) (ids compared as the strings written), row ids 0..n-1.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mabe import postprocess, predictions
from mabe.config import load_config
from mabe.errors import MabeError
from mabe.io import atomic_path
from mabe.metric import InvalidSubmission, find_pair_overlap, mouse_ids
from mabe.schema import ACTIONS, INTERVAL_COLUMNS, SUBMISSION_COLUMNS

__all__ = ["to_submission", "validate_submission", "write_submission", "main_from_args"]

_AGENT = re.compile(r"^mouse[0-9]+$")
_TARGET = re.compile(r"^(mouse[0-9]+|self)$")


def to_submission(intervals: pd.DataFrame) -> pd.DataFrame:
    """``video_id, agent_id, target_id, action, start_frame, stop_frame`` -> the submission frame.

    Integer ids become ``mouseN`` (``self`` where target == agent); string ids are kept as given.
    """
    need = list(INTERVAL_COLUMNS)
    missing = [c for c in need if c not in intervals.columns]
    if missing:
        raise InvalidSubmission(f"intervals are missing column(s) {', '.join(missing)}")
    df = intervals
    if pd.api.types.is_integer_dtype(df["agent_id"]) and pd.api.types.is_integer_dtype(df["target_id"]):
        agent, target = mouse_ids(df["agent_id"].to_numpy(), df["target_id"].to_numpy())
    else:
        agent = df["agent_id"].astype(str).to_numpy(dtype=object)
        target = df["target_id"].astype(str).to_numpy(dtype=object)
    out = pd.DataFrame({
        "video_id": df["video_id"].to_numpy().astype(np.int64),
        "agent_id": agent,
        "target_id": target,
        "action": df["action"].astype(str).to_numpy(dtype=object),
        "start_frame": df["start_frame"].to_numpy().astype(np.int64),
        "stop_frame": df["stop_frame"].to_numpy().astype(np.int64),
    })
    out = out.sort_values(
        ["video_id", "agent_id", "target_id", "start_frame", "stop_frame", "action"], kind="stable"
    ).reset_index(drop=True)
    out.insert(0, "row_id", np.arange(len(out), dtype=np.int64))
    return out


def _row_text(sub: pd.DataFrame, i: int) -> str:
    r = sub.iloc[i]
    return f"row {i} (row_id {r['row_id']}, video {r['video_id']})"


def _allowed_triples(metadata) -> dict[str, set[str]]:
    """video id (as text) -> allowed ``"agent,target,action"`` strings, from a metadata frame or csv."""
    if isinstance(metadata, (str, Path)):
        metadata = pd.read_csv(metadata, usecols=lambda c: c in ("video_id", "behaviors_labeled"))
    if "video_id" not in metadata.columns:
        raise MabeError("metadata for submission validation needs a video_id column")
    out: dict[str, set[str]] = {}
    has_json = "behaviors_labeled" in metadata.columns
    has_parsed = "labeled" in metadata.columns
    for i, video in enumerate(metadata["video_id"].to_numpy()):
        triples: set[str] = set()
        raw = metadata["behaviors_labeled"].iloc[i] if has_json else None
        if isinstance(raw, str) and raw.strip():
            # the literal strings, as the scorer matches them (a mangled entry such as
            # "mouse1','mouse2','attack'" of two real labs allows nothing)
            triples.update(str(x) for x in json.loads(raw))
        elif has_parsed and isinstance(metadata["labeled"].iloc[i], (list, tuple)):
            for agent, target, action in metadata["labeled"].iloc[i]:
                tgt = "self" if int(target) == int(agent) else f"mouse{int(target)}"
                triples.add(f"mouse{int(agent)},{tgt},{action}")
        out[str(video)] = triples
    return out


def validate_submission(sub: pd.DataFrame, metadata=None) -> None:
    """Raise :class:`InvalidSubmission` (naming the row, video and field) unless ``sub`` is a valid
    submission: exact columns, integer frames and ids, known id formats and actions, start <= stop,
    one action per (video, agent, target) and frame, sorted, row ids 0..n-1; with ``metadata`` (a
    DataFrame or csv path with video_id and behaviors_labeled, or load_metadata's parsed ``labeled``
    where no behaviors_labeled text is there): known videos only and only triples listed in the
    video's behaviors_labeled, matched literally like the scorer does."""
    cols = list(sub.columns)
    if cols != list(SUBMISSION_COLUMNS):
        missing = [c for c in SUBMISSION_COLUMNS if c not in cols]
        extra = [c for c in cols if c not in SUBMISSION_COLUMNS]
        raise InvalidSubmission(
            f"submission columns must be exactly {','.join(SUBMISSION_COLUMNS)}; got {','.join(map(str, cols))}"
            + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else "")
        )
    n = len(sub)
    for col in ("row_id", "video_id", "start_frame", "stop_frame"):
        if not pd.api.types.is_integer_dtype(sub[col]):
            raise InvalidSubmission(f"submission field {col} must be integers, got dtype {sub[col].dtype}")
    if n == 0:
        return
    row_id = sub["row_id"].to_numpy()
    bad = np.flatnonzero(row_id != np.arange(n))
    if len(bad):
        raise InvalidSubmission(f"submission field row_id must be 0..{n - 1} in order; row {bad[0]} has {row_id[bad[0]]}")
    for col, pattern in (("agent_id", _AGENT), ("target_id", _TARGET)):
        values = sub[col].astype(str)
        ok = values.str.match(pattern).to_numpy(dtype=bool) & sub[col].notna().to_numpy()
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise InvalidSubmission(
                f"submission {_row_text(sub, i)}: field {col} must look like "
                f"{'mouseN' if col == 'agent_id' else 'mouseN or self'}, got {sub[col].iloc[i]!r}"
            )
    self_ok = (sub["agent_id"] != sub["target_id"]).to_numpy()
    if not self_ok.all():
        i = int(np.flatnonzero(~self_ok)[0])
        raise InvalidSubmission(f"submission {_row_text(sub, i)}: target_id equals agent_id; write 'self' instead")
    known_action = sub["action"].isin(ACTIONS).to_numpy()
    if not known_action.all():
        i = int(np.flatnonzero(~known_action)[0])
        raise InvalidSubmission(f"submission {_row_text(sub, i)}: field action {sub['action'].iloc[i]!r} is not one of the 37 actions")
    start = sub["start_frame"].to_numpy().astype(np.int64)
    stop = sub["stop_frame"].to_numpy().astype(np.int64)
    if (start < 0).any():
        i = int(np.flatnonzero(start < 0)[0])
        raise InvalidSubmission(f"submission {_row_text(sub, i)}: field start_frame is negative ({start[i]})")
    if (start > stop).any():
        i = int(np.flatnonzero(start > stop)[0])
        raise InvalidSubmission(
            f"submission {_row_text(sub, i)}: start_frame {start[i]} > stop_frame {stop[i]}"
        )
    # sorted by (video_id, agent_id, target_id, start_frame)
    video = sub["video_id"].to_numpy().astype(np.int64)
    agent = pd.factorize(sub["agent_id"].astype(str), sort=True)[0]
    target = pd.factorize(sub["target_id"].astype(str), sort=True)[0]
    cmp = np.zeros(n - 1, dtype=np.int64)
    for col in (start, target, agent, video):  # last assignment wins: the most significant column
        d = np.sign(np.diff(col.astype(np.int64)))
        cmp = np.where(d != 0, d, cmp)
    if (cmp < 0).any():
        i = int(np.flatnonzero(cmp < 0)[0]) + 1
        raise InvalidSubmission(
            f"submission {_row_text(sub, i)} is out of order: rows must be sorted by video_id, agent_id, "
            "target_id, start_frame"
        )
    # one action per (video, agent, target) and frame
    pair = sub.groupby(["video_id", "agent_id", "target_id"], sort=False).ngroup().to_numpy()
    action = pd.factorize(sub["action"])[0]
    clash = find_pair_overlap(pair, action, start, stop)
    if clash is not None:
        i, j, frame = clash
        raise InvalidSubmission(
            f"submission rows {i} and {j} (video {video[i]}, agent {sub['agent_id'].iloc[i]}, target "
            f"{sub['target_id'].iloc[i]}): actions {sub['action'].iloc[i]!r} and {sub['action'].iloc[j]!r} "
            f"both claim frame {frame}"
        )
    if metadata is not None:
        allowed = _allowed_triples(metadata)
        vtext = sub["video_id"].astype(str).to_numpy()
        known = np.array([v in allowed for v in vtext])
        if not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise InvalidSubmission(f"submission {_row_text(sub, i)}: video_id {vtext[i]} is not in the metadata")
        triple = (sub["agent_id"].astype(str) + "," + sub["target_id"].astype(str) + "," + sub["action"].astype(str)).to_numpy()
        listed = np.array([t in allowed[v] for v, t in zip(vtext, triple)])
        if not listed.all():
            i = int(np.flatnonzero(~listed)[0])
            raise InvalidSubmission(
                f"submission {_row_text(sub, i)}: {triple[i]!r} is not in the video's behaviors_labeled"
            )


def write_submission(sub: pd.DataFrame, path: str | Path) -> Path:
    """Write the CSV atomically (temp file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sub.to_csv(tmp, index=False)
    return path


def _thresholds_for(args, cfg) -> Mapping:
    fit = getattr(args, "fit", None)
    given = getattr(args, "thresholds", None)
    if fit is not None and given is not None:
        raise MabeError("give either --fit VAL_PREDICTIONS or --thresholds FILE, not both")
    if fit is not None:
        val = predictions.load(fit)
        if val.labels is None:
            raise MabeError(f"{fit}: --fit needs validation predictions with labels")
        thr = postprocess.fit_thresholds(val, cfg.postprocess)
        path = postprocess.save_thresholds(Path(args.out).parent / "thresholds.json", thr)
        never = sum(v is None for v in thr.values())
        print(f"fitted {len(thr)} (lab, action) thresholds ({never} never predict) -> {path}")
        return thr
    if given is not None:
        thr = postprocess.load_thresholds(given)
        print(f"thresholds: {len(thr)} (lab, action) entries from {given}")
        return thr
    print(f"thresholds: {cfg.postprocess.threshold} for every action (none fitted)")
    return {}


def warn_uncovered_thresholds(preds, thresholds: Mapping, source: object, default: float) -> None:
    """Warn when fitted / given thresholds leave (lab, action) pairs the predictions can output without
    a value: they fall back to ``default``, which is silent otherwise (thresholds of another run, model
    or data set match nothing)."""
    if not thresholds:
        return
    labs = np.asarray(preds.lab_id).astype(str)
    actions = np.asarray(preds.actions).astype(str)
    wanted = sorted({(lab, str(a)) for lab in set(labs.tolist())
                     for a in actions[np.asarray(preds.labeled)[labs == lab].any(axis=0)]})
    missing = [k for k in wanted if k not in thresholds]
    if missing:
        warnings.warn(f"{source}: no threshold for {len(missing)} of the {len(wanted)} (lab, action) pairs the "
                      f"predictions can output (e.g. {', '.join('/'.join(k) for k in missing[:3])}); they use "
                      f"postprocess.threshold {default:g}" + ("; thresholds of another run or data set?"
                                                              if len(missing) == len(wanted) else ""),
                      stacklevel=2)


def main_from_args(args) -> pd.DataFrame:
    """``mabe submit PREDICTIONS --out CSV [--fit VAL | --thresholds JSON]``."""
    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
    preds = predictions.load(args.predictions)
    thr = _thresholds_for(args, cfg)
    warn_uncovered_thresholds(preds, thr, getattr(args, "thresholds", None) or getattr(args, "fit", None),
                              cfg.postprocess.threshold)
    intervals = postprocess.predictions_to_intervals(preds, cfg.postprocess, thr)
    sub = to_submission(intervals)
    validate_submission(sub)
    path = write_submission(sub, args.out)
    frames = int((sub["stop_frame"] - sub["start_frame"]).sum()) if len(sub) else 0
    print(f"{len(sub)} intervals ({frames} frames) in {sub['video_id'].nunique()} of "
          f"{len(set(preds.video_id.tolist()))} videos -> {path}")
    if len(sub):
        counts = sub["action"].value_counts()
        print("per action: " + ", ".join(f"{a} {c}" for a, c in counts.items()))
    else:
        print("warning: no interval was predicted; the submission is empty")
    return sub

"""Per-frame probabilities -> behaviour intervals: smoothing, per-(lab, action) thresholds, one action
per frame and track, gap filling, minimum length; and the fitting of those thresholds.

Thresholds are a dict ``{(lab_id, action): float | None}``; ``None`` means "never predict this action
in this lab"; a missing key falls back to ``PostprocessConfig.threshold``. A frame is predicted as an
action when its (smoothed) probability is strictly greater than the threshold.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mabe.config import PostprocessConfig
from mabe.errors import MabeDataError
from mabe.io import write_json
from mabe.metric import f1_from_counts
from mabe.predictions import Predictions
from mabe.schema import INTERVAL_COLUMNS

__all__ = [
    "smooth",
    "decide",
    "frames_to_intervals",
    "track_thresholds",
    "frame_windows",
    "threshold_grid",
    "predictions_to_intervals",
    "fit_thresholds",
    "fit_thresholds_f1",
    "save_thresholds",
    "load_thresholds",
    "INTERVAL_COLUMNS",
]

Thresholds = dict[tuple[str, str], float | None]


def smooth(probs: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over frames (axis 0), via a cumulative sum; float32 (T, A) out.

    Frame t averages frames ``t - (window - 1) // 2 .. t + window // 2`` that exist (an even window
    leans one frame forward); at the ends the mean is over the frames available, so a constant
    signal stays constant. ``window <= 1`` returns a float32 copy.
    """
    p = np.asarray(probs, dtype=np.float32)
    squeeze = p.ndim == 1
    if squeeze:
        p = p[:, None]
    if window <= 1 or len(p) == 0:
        out = p.copy()
        return out[:, 0] if squeeze else out
    n = len(p)
    before, after = (window - 1) // 2, window // 2
    csum = np.zeros((n + 1, p.shape[1]), dtype=np.float64)
    np.cumsum(p, axis=0, dtype=np.float64, out=csum[1:])
    t = np.arange(n)
    lo = np.clip(t - before, 0, n)
    hi = np.clip(t + after + 1, 0, n)
    out = ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)
    return out[:, 0] if squeeze else out


def _threshold_array(thresholds, n_actions: int) -> np.ndarray:
    thr = np.array([np.inf if t is None else t for t in thresholds], dtype=np.float64)
    if thr.shape != (n_actions,):
        raise ValueError(f"need one threshold per action ({n_actions}), got {thr.shape[0]}")
    return np.where(np.isnan(thr), np.inf, thr)


def decide(probs: np.ndarray, thresholds) -> np.ndarray:
    """One action per frame: among actions whose probability is > their threshold, the most probable
    (the first column on ties); -1 where none is. A threshold of inf, NaN or None never predicts."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 2:
        raise ValueError(f"probs must be (T, A), got shape {p.shape}")
    thr = _threshold_array(thresholds, p.shape[1])
    over = p > thr
    if len(p) == 0:
        return np.zeros(0, dtype=np.int64)
    masked = np.where(over, p, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(over.any(axis=1), best, -1).astype(np.int64)


def frames_to_intervals(
    actions_per_frame: np.ndarray, min_length: int = 1, max_gap: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame action codes (-1 = none) -> ``(action, start, stop)`` arrays, stop exclusive.

    First, runs of one action separated by at most ``max_gap`` frames of nothing (-1) are merged (a
    gap next to another action, or at either end of the track, is never filled); then runs shorter
    than ``min_length`` frames are dropped. Fully vectorised over run boundaries.
    """
    a = np.asarray(actions_per_frame, dtype=np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if a.ndim != 1:
        raise ValueError(f"actions_per_frame must be 1-d, got shape {a.shape}")
    if len(a) == 0:
        return empty
    # runs of equal values, -1 included
    change = np.flatnonzero(np.diff(a)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(a)]])
    vals = a[starts]
    if max_gap > 0 and len(vals) >= 3:
        mid = np.arange(1, len(vals) - 1)
        fill = (
            (vals[mid] == -1)
            & (stops[mid] - starts[mid] <= max_gap)
            & (vals[mid - 1] == vals[mid + 1])
            & (vals[mid - 1] >= 0)
        )
        vals = vals.copy()
        vals[mid[fill]] = vals[mid[fill] - 1]
        # merge consecutive runs that now hold the same value
        new = np.concatenate([[True], vals[1:] != vals[:-1]])
        first = np.flatnonzero(new)
        last = np.append(first[1:] - 1, len(vals) - 1)
        starts, stops, vals = starts[first], stops[last], vals[first]
    keep = (vals >= 0) & (stops - starts >= max(int(min_length), 1))
    return vals[keep], starts[keep], stops[keep]


def frame_windows(cfg: PostprocessConfig, fps: float) -> tuple[int, int, int]:
    """(smoothing window, min length, max gap) in frames for a track at ``fps``: the ``*_seconds``
    options converted (round(s * fps); at least 1 frame for the window and the length) where set,
    else the frame counts."""
    def frames(seconds: float | None, n: int, floor: int) -> int:
        if seconds is None:
            return int(n)
        if not fps > 0:
            raise ValueError(f"a track needs fps > 0 to convert seconds to frames, got {fps}")
        return max(int(round(float(seconds) * float(fps))), floor)

    return (frames(cfg.smooth_seconds, cfg.smooth_window, 1), frames(cfg.min_seconds, cfg.min_length, 1),
            frames(cfg.gap_seconds, cfg.max_gap, 0))


def threshold_grid(cfg: PostprocessConfig) -> np.ndarray:
    """(grid_n,) float64: the thresholds :func:`fit_thresholds` tries, grid_low .. grid_high evenly."""
    if cfg.grid_n < 1 or not 0 <= cfg.grid_low <= cfg.grid_high < 1:
        raise ValueError(f"threshold grid needs grid_n >= 1 and 0 <= grid_low <= grid_high < 1, got "
                         f"{cfg.grid_n}, {cfg.grid_low}, {cfg.grid_high}")
    return np.linspace(cfg.grid_low, cfg.grid_high, int(cfg.grid_n))


def track_thresholds(
    lab: str, actions, labeled: np.ndarray, cfg: PostprocessConfig, thresholds: Mapping | None
) -> np.ndarray:
    """The (A,) threshold vector of one track: fitted (lab, action) values, ``cfg.threshold`` where
    none was fitted, inf for "never" and for actions that the track does not label."""
    thresholds = thresholds or {}
    out = np.full(len(actions), np.inf)
    for i, action in enumerate(actions):
        if not labeled[i]:
            continue
        t = thresholds.get((str(lab), str(action)), cfg.threshold)
        out[i] = np.inf if t is None else float(t)
    return out


def predictions_to_intervals(
    preds: Predictions, cfg: PostprocessConfig | None = None, thresholds: Mapping | None = None
) -> pd.DataFrame:
    """Every track: smooth -> per-(lab, action) thresholds -> one action per frame -> intervals.

    Only actions in the track's ``labeled`` mask can be predicted (others would be ignored by the
    metric). Returns ``video_id, agent_id, target_id (int, target == agent for self), action,
    start_frame, stop_frame`` (stop exclusive; frame = row within the track).
    """
    cfg = cfg or PostprocessConfig()
    actions = np.asarray(preds.actions).astype(str)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in INTERVAL_COLUMNS}
    for t in range(preds.n_tracks):
        if not preds.labeled[t].any():
            continue
        probs, _ = preds.track(t)
        thr = track_thresholds(preds.lab_id[t], actions, preds.labeled[t], cfg, thresholds)
        if not np.isfinite(thr).any():
            continue
        window, min_length, max_gap = frame_windows(cfg, float(preds.fps[t]))
        code = decide(smooth(probs, window), thr)
        act, start, stop = frames_to_intervals(code, min_length, max_gap)
        n = len(act)
        if n == 0:
            continue
        cols["video_id"].append(np.full(n, preds.video_id[t], dtype=np.int64))
        cols["agent_id"].append(np.full(n, preds.agent_id[t], dtype=np.int64))
        cols["target_id"].append(np.full(n, preds.target_id[t], dtype=np.int64))
        cols["action"].append(actions[act])
        cols["start_frame"].append(start)
        cols["stop_frame"].append(stop)
    if not cols["video_id"]:
        return pd.DataFrame({
            "video_id": np.zeros(0, np.int64), "agent_id": np.zeros(0, np.int64),
            "target_id": np.zeros(0, np.int64), "action": np.zeros(0, dtype=object),
            "start_frame": np.zeros(0, np.int64), "stop_frame": np.zeros(0, np.int64),
        })
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["action"] = out["action"].astype(object)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- threshold fitting


def _f1_from_bins(total: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """F1 per threshold k from bin counts: bin b holds frames with b grid values below p, so frame
    p > grid[k] exactly when its bin is > k. ``total`` / ``pos``: (..., G + 1) -> F1 (..., G)."""
    predicted = np.flip(np.cumsum(np.flip(total, -1), -1), -1)[..., 1:]
    tp = np.flip(np.cumsum(np.flip(pos, -1), -1), -1)[..., 1:]
    n_pos = pos.sum(-1, keepdims=True)
    fp = predicted - tp
    fn = n_pos - tp
    return f1_from_counts(tp, fp, fn)


def fit_thresholds(
    preds: Predictions, cfg: PostprocessConfig | None = None, grid: np.ndarray | None = None
) -> Thresholds:
    """Per (lab, action): the best threshold of ``grid`` or ``None`` (:func:`fit_thresholds_f1`'s first half)."""
    return fit_thresholds_f1(preds, cfg, grid)[0]


def fit_thresholds_f1(
    preds: Predictions, cfg: PostprocessConfig | None = None, grid: np.ndarray | None = None
) -> tuple[Thresholds, dict[tuple[str, str], float | None]]:
    """``(thresholds, f1)``: the fitted thresholds and, per (lab, action), the frame F1 they are expected to
    reach (``None`` where the action has no positive frame in the lab: the metric does not score it unless
    predicted). Per (lab, action): the threshold of ``grid`` (default :func:`threshold_grid`) that
    maximises that lab-action's frame F1, or ``None`` ("never predict") where predicting cannot help the
    lab's mean.

    The F1 maximised is the mean over ``cfg.threshold_bootstrap`` resamples of the lab's videos (V videos
    drawn V times with replacement, ``numpy.random.default_rng([cfg.threshold_seed, crc32(lab)])``,
    ``multinomial`` over the videos sorted by id), each scored on its pooled frames; ``0`` resamples = the
    lab's videos as they are. Why: out-of-fold thresholds are fitted on a handful of videos a lab, and the
    plain optimum often rides on one video's intervals; the resampled mean prefers a threshold that holds
    whichever videos come (on 40 evaluation videos a run, 10 of 10 gbdt and blend runs scored the same or
    higher, benchmarks/RESULTS.md). A lab with one video gets the plain fit.

    TP / FP / FN are pooled over the lab's tracks whose ``labeled`` mask allows the action (the
    metric ignores the others), frame-wise on the smoothed probabilities (:func:`frame_windows` at each track's fps).
    Approximation: each action is fitted on its own, as if frames were predicted by ``p > thr``
    independently; the argmax coupling between the actions of one track, ``min_length`` and
    ``max_gap`` are ignored.

    "Never" (rule 6 of the metric): an action allowed in a lab but without a positive frame there
    would be scored only because it was predicted, with an F1 of 0, lowering the lab's mean; so it
    gets ``None``. An action with positives is scored anyway, so its best threshold is kept, unless
    even that F1 is 0 (then ``None``: predicting gains nothing). Ties go to the lowest threshold.
    Memory: per-video histograms over the grid, never the lab's frames at once.
    """
    if preds.labels is None:
        raise MabeDataError("<predictions>", "labels", "predictions with ground-truth labels to fit thresholds",
                            "no labels")
    cfg = cfg or PostprocessConfig()
    grid = threshold_grid(cfg) if grid is None else np.sort(np.asarray(grid, dtype=np.float64).ravel())
    if len(grid) == 0:
        raise ValueError("fit_thresholds needs a non-empty grid")
    if cfg.threshold_bootstrap < 0:
        raise ValueError(f"postprocess.threshold_bootstrap must be >= 0, got {cfg.threshold_bootstrap}")
    nb = len(grid) + 1
    actions = np.asarray(preds.actions).astype(str)
    n_actions = len(actions)
    labs = np.asarray(preds.lab_id).astype(str)
    out: Thresholds = {}
    best_f1: dict[tuple[str, str], float | None] = {}
    for lab in sorted(set(labs.tolist())):
        tracks = np.flatnonzero(labs == lab)
        videos, video_of = np.unique(np.asarray(preds.video_id)[tracks], return_inverse=True)
        total = np.zeros((len(videos), n_actions, nb), dtype=np.int64)
        pos = np.zeros((len(videos), n_actions, nb), dtype=np.int64)
        allowed = np.zeros(n_actions, dtype=bool)
        for t, v in zip(tracks, video_of):
            cols = np.flatnonzero(preds.labeled[t])
            if len(cols) == 0 or preds.track_length(t) == 0:
                continue
            allowed[cols] = True
            probs, labels = preds.track(t)
            p = smooth(probs[:, cols], frame_windows(cfg, float(preds.fps[t]))[0])
            b = np.searchsorted(grid, p, side="left") + np.arange(len(cols)) * nb  # (T, C)
            total[v, cols] += np.bincount(b.ravel(), minlength=len(cols) * nb).reshape(len(cols), nb)
            y = labels[:, cols] > 0
            pos[v, cols] += np.bincount(b[y], minlength=len(cols) * nb).reshape(len(cols), nb)
        f1 = _f1_from_bins(total.sum(0), pos.sum(0))  # (A, G)
        if cfg.threshold_bootstrap > 0 and len(videos) > 1:
            rng = np.random.default_rng([int(cfg.threshold_seed), zlib.crc32(lab.encode())])
            draws = rng.multinomial(len(videos), np.full(len(videos), 1.0 / len(videos)),
                                    size=int(cfg.threshold_bootstrap)).astype(np.float64)  # (B, V)
            f1 = _f1_from_bins(np.einsum("bv,van->ban", draws, total),
                               np.einsum("bv,van->ban", draws, pos)).mean(0)
        any_pos = pos.sum((0, 2))
        for a in np.flatnonzero(allowed):
            key = (lab, str(actions[a]))
            if any_pos[a] == 0:
                out[key], best_f1[key] = None, None
                continue
            best = int(np.argmax(f1[a]))
            out[key] = float(grid[best]) if f1[a, best] > 0 else None
            best_f1[key] = float(f1[a, best])
    return out, best_f1


def save_thresholds(path: str | Path, thresholds: Mapping) -> Path:
    """JSON ``{lab: {action: threshold or null}}``, sorted."""
    nested: dict[str, dict[str, float | None]] = {}
    for (lab, action), thr in sorted(thresholds.items()):
        nested.setdefault(str(lab), {})[str(action)] = None if thr is None else float(thr)
    return write_json(path, nested, sort_keys=True)


def load_thresholds(path: str | Path) -> Thresholds:
    """Read :func:`save_thresholds` JSON; :class:`MabeDataError` names the file and the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise MabeDataError(path, None, "a thresholds JSON file", "no such file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MabeDataError(path, None, "valid JSON", str(err)) from None
    if not isinstance(raw, dict):
        raise MabeDataError(path, None, "a mapping {lab: {action: threshold or null}}", type(raw).__name__)
    out: Thresholds = {}
    for lab, per_action in raw.items():
        if not isinstance(per_action, dict):
            raise MabeDataError(path, lab, "a mapping {action: threshold or null}", type(per_action).__name__)
        for action, thr in per_action.items():
            if thr is not None and (
                isinstance(thr, bool) or not isinstance(thr, (int, float)) or math.isnan(thr)
            ):
                raise MabeDataError(path, f"{lab}.{action}", "a number or null", repr(thr))
            out[(lab, action)] = None if thr is None else float(thr)
    return out

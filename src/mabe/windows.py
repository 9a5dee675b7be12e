"""TrackSet (flat arrays + per-track offsets) -> batches of windows, in numpy or torch.

The tracks of the cache are ``postracks.PositionTracks`` (positions, features per batch); a TrackSet holds
a feature matrix in memory (benchmarks, tests, ``PositionTracks.to_trackset``). Both have the fields
below and a ``batch(arrays, windows, length, shift)`` method, which is all the batch sources and the
evaluator use.

A *track* is one sequence the model reads: a whole video (scene mode) or one ordered
(agent, target) pair of a video (pair mode). Every track's frames are rows of one flat array, so a
window ``(track, start)`` is a slice ``offsets[track] + start : ... + W`` and a batch is one fancy
index. ``gather`` is written once against the operations numpy and torch share, so the same code
builds batches for the DataLoader reference path (numpy, in worker processes) and for the fast path
(whole TrackSet resident on the training device, windows gathered by index, no host round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from mabe.errors import MabeError
from mabe.schema import ACTION_INDEX

__all__ = [
    "IGNORE_INDEX",
    "TrackSet",
    "split_videos",
    "assign_folds",
    "run_split",
    "scene_labels",
    "norm_stats",
    "normalize_",
    "window_index",
    "window_weights",
    "epoch_plan",
    "gather",
    "WindowDataset",
]

IGNORE_INDEX = -100  # scene targets on padded frames (F.cross_entropy's ignore_index)


# ----------------------------------------------------------------------------- TrackSet


@dataclass
class TrackSet:
    """Flat per-frame arrays of many tracks; track t is rows ``offsets[t]:offsets[t+1]``.

    ``names`` are the output columns: ``["none", *classes]`` (scene) or action names (pair).
    """

    mode: str  # "scene" | "pair"
    names: list[str]
    X: np.ndarray  # (N, F) float32, or float16 (``PositionTracks.to_trackset``; consumers cast per batch)
    Y: np.ndarray  # (N, C) uint8 multi-label (pair) or (N,) int64 class (scene)
    label_mask: np.ndarray  # (n_tracks, C) bool: the track's labelled outputs
    offsets: np.ndarray  # (n_tracks + 1,) int64
    lab_id: np.ndarray  # (n_tracks,) str
    video_id: np.ndarray  # (n_tracks,) int64
    agent_id: np.ndarray  # (n_tracks,) int8; -1 in scene mode
    target_id: np.ndarray  # (n_tracks,) int8; == agent for self; -1 in scene mode
    fps: np.ndarray  # (n_tracks,) float64
    norm: dict[str, np.ndarray] | None = field(default=None)  # stats applied by normalize_
    # Resampled caches (features.target_fps): per track None, or (frames (T_t,) original video_frame
    # of each row, n_video_frames, video_fps), so predictions can be mapped back to video frames.
    to_video: list[tuple[np.ndarray, int, float] | None] | None = field(default=None)
    labs: list[str] | None = field(default=None)  # model.lab_conditioning: the training labs (X holds their columns)
    stored_error: float = 0.0  # largest |X - its float32 features| (X rounded to float16 when computed; else 0)

    @property
    def n_tracks(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_outputs(self) -> int:
        return len(self.names)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_tracks(
        cls, mode: str, names: Sequence[str], xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
        label_mask: np.ndarray | None = None, *, lab_id: Sequence[str] | None = None,
        video_id: Sequence[int] | None = None, agent_id: Sequence[int] | None = None,
        target_id: Sequence[int] | None = None, fps: Sequence[float] | None = None,
    ) -> TrackSet:
        """Per-track arrays ``xs[t]`` (T_t, F) and ``ys[t]`` (T_t, C) | (T_t,) -> one TrackSet."""
        n = len(xs)
        if len(ys) != n or n == 0:
            raise ValueError(f"need as many label arrays as feature arrays (>0), got {n} and {len(ys)}")
        lengths = np.array([len(x) for x in xs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        y_dtype = np.int64 if mode == "scene" else np.uint8
        if label_mask is None:
            label_mask = np.ones((n, len(names)), dtype=bool)
        return cls(
            mode=mode, names=list(names),
            X=np.concatenate(xs).astype(np.float32, copy=False),
            Y=np.concatenate(ys).astype(y_dtype, copy=False),
            label_mask=np.asarray(label_mask, dtype=bool), offsets=offsets,
            lab_id=np.asarray(lab_id if lab_id is not None else ["lab"] * n, dtype=object),
            video_id=np.asarray(video_id if video_id is not None else np.arange(n), dtype=np.int64),
            agent_id=np.asarray(agent_id if agent_id is not None else [-1] * n, dtype=np.int8),
            target_id=np.asarray(target_id if target_id is not None else [-1] * n, dtype=np.int8),
            fps=np.asarray(fps if fps is not None else [30.0] * n, dtype=np.float64),
        )

    def tensors(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict:
        """The arrays ``gather`` needs, as torch tensors on ``device`` (X stored as ``dtype``; None: X's own).

        On CPU in X's own dtype the tensors share memory with the numpy arrays (no copy): a float16 X
        stays float16 (half the bytes), and a batch's x comes in it (the training step and
        ``evaluate.predict_tracks`` cast it to float32).
        """
        X = torch.from_numpy(self.X)
        return {
            "X": X.to(device=device, dtype=X.dtype if dtype is None else dtype),
            "Y": torch.from_numpy(self.Y).to(device),
            "offsets": torch.from_numpy(self.offsets).to(device),
            "label_mask": torch.from_numpy(self.label_mask).to(device),
        }

    def arrays(self) -> dict:
        """The same mapping as ``tensors`` but numpy (the DataLoader path)."""
        return {"X": self.X, "Y": self.Y, "offsets": self.offsets, "label_mask": self.label_mask}

    def batch(self, arrays: dict, windows: Any, length: int, shift: Any = None) -> dict[str, Any]:
        """``gather`` of (B, 2) windows over ``arrays`` (``tensors()`` or ``arrays()``)."""
        return gather(arrays, windows, length, shift, mode=self.mode)


# ----------------------------------------------------------------------------- split


def assign_folds(lab_id: np.ndarray, video_id: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n,) labs and videos (one row per video) -> (n,) fold in 0..k-1, stratified by lab.

    The one k-fold assignment (the gbdt family's folds and ``mabe cv``'s). Each lab's videos are
    shuffled and dealt round-robin, starting at a fold that rotates from lab to lab, so that small labs
    do not all land in fold 0 and every fold holds about 1/k of every lab.
    """
    lab_id = np.asarray(lab_id).astype(str)
    video_id = np.asarray(video_id)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    fold = np.full(len(lab_id), -1, dtype=np.int64)
    start = 0
    for lab in sorted(set(lab_id.tolist())):
        rows = np.flatnonzero(lab_id == lab)
        rows = rows[np.argsort(video_id[rows], kind="stable")]  # order-independent of the input rows
        rows = rows[rng.permutation(len(rows))]
        fold[rows] = (start + np.arange(len(rows))) % k
        start = (start + len(rows)) % k
    return fold


def run_split(index_df: pd.DataFrame, val_fraction: float, seed: int, folds: int = 0, fold: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """A run's videos -> (train video ids, val video ids): ``folds`` >= 2 validates on fold ``fold`` of
    :func:`assign_folds` (seeded by ``seed``) and trains on the others; else :func:`split_videos`."""
    if folds < 2:
        return split_videos(index_df, val_fraction, seed)
    if not 0 <= fold < folds:
        raise MabeError(f"windows.fold={fold} must be in 0..{folds - 1} (windows.folds={folds})")
    videos = index_df[["lab_id", "video_id"]].drop_duplicates()
    ids = videos["video_id"].to_numpy(dtype=np.int64)
    f = assign_folds(videos["lab_id"].to_numpy(), ids, folds, seed)
    return np.sort(ids[f != fold]), np.sort(ids[f == fold])


def split_videos(index_df: pd.DataFrame, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Videos -> (train video ids, val video ids), by video, stratified by lab, seeded.

    Every lab with >= 2 videos gives ``round(val_fraction * n)`` videos to validation, at least 1
    and at most n - 1 (none when ``val_fraction == 0``); a lab with one video stays in training.
    """
    videos = index_df[["lab_id", "video_id"]].drop_duplicates().sort_values(["lab_id", "video_id"])
    rng = np.random.default_rng(seed)
    train, val = [], []
    for _, group in videos.groupby("lab_id", sort=True):
        ids = group["video_id"].to_numpy(dtype=np.int64)
        n_val = 0
        if val_fraction > 0 and len(ids) >= 2:
            n_val = int(min(max(round(val_fraction * len(ids)), 1), len(ids) - 1))
        perm = rng.permutation(len(ids))
        val.append(ids[perm[:n_val]])
        train.append(ids[perm[n_val:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ----------------------------------------------------------------------------- labels


def scene_labels(labels: np.ndarray, classes: dict[str, list[str]]) -> np.ndarray:
    """(n_pairs, T, 37) uint8 pair labels -> (T,) int64 scene class; 0 = none, later classes win.

    A frame belongs to class k when any pair does any of the class's actions on it.
    """
    any_pair = labels.any(axis=0) if labels.shape[0] else np.zeros(labels.shape[1:], dtype=bool)  # (T, 37)
    y = np.zeros(any_pair.shape[0], dtype=np.int64)
    for k, actions in enumerate(classes.values(), start=1):
        cols = [ACTION_INDEX[a] for a in actions]
        y[any_pair[:, cols].any(axis=1)] = k
    return y


def nearest_rows(frames: np.ndarray, n_video_frames: int) -> np.ndarray:
    """Sorted row frames (T,) -> (n_video_frames,) index of the row nearest in time to each video frame."""
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) == 1:
        return np.zeros(n_video_frames, dtype=np.int64)
    v = np.arange(n_video_frames, dtype=np.int64)
    right = np.searchsorted(frames, v).clip(1, len(frames) - 1)
    left = right - 1
    return np.where(v - frames[left] <= frames[right] - v, left, right)


def rows_to_video_frames(ts: TrackSet, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row arrays (N, ...) of ``ts`` -> (per-video-frame arrays, offsets, fps) for the predictions file.

    A resampled track's rows are spread back over every frame of its video (nearest row in time);
    other tracks are unchanged (row == video_frame).
    """
    if ts.to_video is None:
        return rows, ts.offsets, ts.fps
    parts, lengths, fps = [], [], ts.fps.astype(np.float64).copy()
    for t, back in enumerate(ts.to_video):
        seg = rows[ts.offsets[t]:ts.offsets[t + 1]]
        if back is not None:
            frames, n_video, fps[t] = back
            seg = seg[nearest_rows(frames, n_video)]
        parts.append(seg)
        lengths.append(len(seg))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.concatenate(parts), offsets, fps


# ----------------------------------------------------------------------------- normalisation


def norm_stats(X: np.ndarray, chunk: int = 1 << 18) -> dict[str, np.ndarray]:
    """(N, F) -> per-feature NaN-ignoring mean and std, float32 (std 1 where constant or all NaN)."""
    F = X.shape[1]
    s = np.zeros(F)
    ss = np.zeros(F)
    n = np.zeros(F)
    for i in range(0, len(X), chunk):
        x = np.asarray(X[i : i + chunk], dtype=np.float64)
        ok = np.isfinite(x)
        x = np.where(ok, x, 0.0)
        s += x.sum(0)
        ss += (x * x).sum(0)
        n += ok.sum(0)
    mean = np.divide(s, n, out=np.zeros(F), where=n > 0)
    var = np.divide(ss, n, out=np.zeros(F), where=n > 0) - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def normalize_(ts: TrackSet, stats: dict[str, np.ndarray], chunk: int = 1 << 18) -> TrackSet:
    """Standardise ``ts.X`` in place with ``stats``; NaN/inf -> 0 afterwards. Returns ``ts``."""
    mean = np.asarray(stats["mean"], dtype=np.float32)
    std = np.asarray(stats["std"], dtype=np.float32)
    if mean.shape != (ts.n_features,):
        raise MabeError(f"normalisation stats have {mean.shape[0]} features, the tracks {ts.n_features}")
    for i in range(0, len(ts.X), chunk):
        x = ts.X[i : i + chunk]
        x -= mean
        x /= std
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    ts.norm = {"mean": mean, "std": std}
    return ts


# ----------------------------------------------------------------------------- windows


def window_index(lengths: np.ndarray, length: int, stride: int, cover_end: bool = True) -> np.ndarray:
    """Track lengths -> (M, 2) int64 windows ``(track, start)``.

    Starts run 0, stride, 2*stride, ... up to ``L - length``; ``cover_end`` adds a last window ending
    on the track's last frame. A track shorter than ``length`` has one window (start 0, padded).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    last = np.maximum(lengths - length, 0)  # (n_tracks,) last full-window start
    n_win = last // stride + 1
    if cover_end:
        n_win += (last % stride != 0).astype(np.int64)
    track = np.repeat(np.arange(len(lengths)), n_win)  # (M,)
    first = np.repeat(np.cumsum(n_win) - n_win, n_win)
    start = np.minimum((np.arange(len(track)) - first) * stride, last[track])
    return np.stack([track, start], axis=1).astype(np.int64)


def window_weights(ts: TrackSet, windows: np.ndarray, length: int, power: float) -> np.ndarray | None:
    """Sampling probabilities that over-draw windows holding rare outputs; None when ``power == 0``.

    Output c's frequency f_c is the share of windows holding a (labelled) positive frame of c; a
    window's weight is ``max(1, max_c (1 / f_c) ** power)`` over the outputs it holds (scene: the
    classes other than none), so windows with only common or no behaviour keep weight 1.
    """
    if power <= 0:
        return None
    C = ts.n_outputs
    present = np.zeros((len(windows), C), dtype=bool)
    by_track = np.argsort(windows[:, 0], kind="stable")
    tracks, first = np.unique(windows[by_track, 0], return_index=True)
    bounds = np.append(first, len(windows))
    for i, t in enumerate(tracks):
        lo, hi = ts.offsets[t], ts.offsets[t + 1]
        if ts.mode == "scene":
            pos = np.eye(C, dtype=np.int32)[ts.Y[lo:hi]]  # (L, C) one-hot
            pos[:, 0] = 0
        else:
            pos = ts.Y[lo:hi].astype(np.int32) * ts.label_mask[t]  # (L, C)
        cs = np.concatenate([np.zeros((1, C), np.int32), np.cumsum(pos, axis=0)])  # (L + 1, C)
        sel = by_track[bounds[i] : bounds[i + 1]]  # this track's windows
        s = windows[sel, 1]
        e = np.minimum(s + length, hi - lo)
        present[sel] = (cs[e] - cs[s]) > 0
    freq = present.mean(axis=0)  # (C,)
    rarity = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12), 1.0) ** power
    w = np.maximum(1.0, (present * rarity).max(axis=1))
    return w / w.sum()


def epoch_plan(
    n_windows: int, n_draw: int, epoch: int, seed: int, weights: np.ndarray | None = None, jitter: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The windows an epoch visits and their start shifts: a pure function of (seed, epoch).

    Uniform: successive permutations of all windows, cut at ``n_draw``; with ``weights``: draws
    with replacement. Returns ``order`` (n_draw,) int64 window ids and ``shift`` (n_draw,) int64 in
    [-jitter, jitter]. Resume is exact because nothing here depends on earlier epochs.
    """
    rng = np.random.default_rng([seed, epoch])
    if weights is not None:
        order = rng.choice(n_windows, size=n_draw, replace=True, p=weights)
    else:
        reps = -(-n_draw // n_windows)
        order = np.concatenate([rng.permutation(n_windows) for _ in range(reps)])[:n_draw]
    shift = rng.integers(-jitter, jitter + 1, size=n_draw) if jitter > 0 else np.zeros(n_draw, np.int64)
    return order.astype(np.int64), shift.astype(np.int64)


def _arange(xp: Any, n: int, like: Any) -> Any:
    return torch.arange(n, device=like.device) if xp is torch else np.arange(n)


def gather(
    arrays: dict, windows: Any, length: int, shift: Any = None, *, mode: str = "pair"
) -> dict[str, Any]:
    """Build a batch from windows; the same code for numpy arrays and torch tensors (CPU or CUDA).

    ``arrays``: X (N, F), Y (N, C) | (N,), offsets (n_tracks + 1,), label_mask (n_tracks, C), all
    numpy or all torch. ``windows`` (B, 2) ``(track, start)``; ``shift`` (B,) moves each start,
    clamped so the window stays inside its track (temporal jitter). Frames past a track's end are
    padding: x = 0, ``valid`` False. Returns x (B, W, F), y (B, W, C) uint8 (pair) or (B, W) int64
    with IGNORE_INDEX on padding (scene), valid (B, W) bool, and mask (B, W, C) bool (pair: the
    track's labelled outputs on valid frames).
    """
    xp = torch if isinstance(arrays["X"], torch.Tensor) else np
    offsets = arrays["offsets"]
    track, start = windows[:, 0], windows[:, 1]  # (B,), (B,)
    first = offsets[track]  # (B,) first row of the track
    n = offsets[track + 1] - first  # (B,) track length
    if shift is not None:
        last = xp.where(n > length, n - length, 0)  # (B,) last start keeping the window inside
        start = xp.minimum(xp.where(start + shift > 0, start + shift, 0), last)
    t = start[:, None] + _arange(xp, length, start)[None, :]  # (B, W) frame within the track
    valid = t < n[:, None]  # (B, W)
    rows = first[:, None] + xp.minimum(t, n[:, None] - 1)  # (B, W) clamped to the track
    x = xp.where(valid[..., None], arrays["X"][rows], 0)  # (B, W, F)
    y = arrays["Y"][rows]  # (B, W, C) | (B, W)
    out = {"x": x, "valid": valid}
    if mode == "scene":
        out["y"] = xp.where(valid, y, IGNORE_INDEX)  # (B, W)
    else:
        out["y"] = xp.where(valid[..., None], y, 0)  # (B, W, C)
        out["mask"] = arrays["label_mask"][track][:, None, :] & valid[..., None]  # (B, W, C)
    return out


class WindowDataset(torch.utils.data.Dataset):
    """One window per item (or, with ``batch_size``, one batch of windows per item: for
    ``DataLoader(batch_size=None)``) for the reference ``DataLoader(num_workers=...)`` path.

    ``set_plan(windows[order], shift)`` before each epoch (workers are created per epoch, so they
    see it); item i is then the plan's i-th window (batch), and consecutive items make the same
    batches as the in-process path. Tracks with a feature matrix gather in numpy; PositionTracks
    compute each batch's features on the CPU in the worker.
    """

    def __init__(self, ts: Any, length: int, batch_size: int | None = None):
        self.ts = ts
        self.arrays = ts.arrays() if isinstance(ts, TrackSet) else ts.tensors("cpu")
        self.mode = ts.mode
        self.length = length
        self.batch_size = batch_size
        self.windows = np.zeros((0, 2), np.int64)
        self.shift = np.zeros(0, np.int64)

    def set_plan(self, windows: np.ndarray, shift: np.ndarray | None = None) -> None:
        self.windows = np.asarray(windows, dtype=np.int64)
        self.shift = np.zeros(len(windows), np.int64) if shift is None else np.asarray(shift, np.int64)

    def __len__(self) -> int:
        if self.batch_size is None:
            return len(self.windows)
        return -(-len(self.windows) // self.batch_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        one = self.batch_size is None
        sl = slice(i, i + 1) if one else slice(i * self.batch_size, (i + 1) * self.batch_size)
        w, s = self.windows[sl], self.shift[sl]
        if not isinstance(self.ts, TrackSet):
            w, s = torch.from_numpy(w), torch.from_numpy(s)
        b = self.ts.batch(self.arrays, w, self.length, s)
        b = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}
        return {k: v[0] for k, v in b.items()} if one else b

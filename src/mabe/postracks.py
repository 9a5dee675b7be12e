"""The position cache -> tracks whose features are computed per batch (issue 13): what training and
evaluation read.

``PositionTracks`` has ``windows.TrackSet``'s fields and methods but, instead of a (rows, F) feature
matrix, every video's int16 positions once (``poscache.stack_codes``, at most 288 B a frame for 4 mice x
18 slots, shared by all of a video's pair tracks). ``batch`` returns the same dict as ``windows.gather``
(x, y, valid, mask) with x computed by ``features_torch.window_features`` on the store's device and
standardised with the tracks' ``norm``. Tracks, their order, labels, masks and resampled rows are those
of the whole-video numpy features (``prepare.video_features``); tests/unit/test_postracks.py checks
that the features agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mabe import data, poscache, prepare, windows
from mabe import features as F
from mabe import features_torch as FT
from mabe.config import FeatureConfig, TaskConfig
from mabe.data import ACTION_INDEX, ACTIONS
from mabe.errors import MabeError
from mabe.windows import IGNORE_INDEX, scene_labels

_FP16_MAX = 65504.0  # float16's largest finite value

__all__ = ["PositionTracks", "load_position_tracks", "resolve_actions", "batch", "norm_stats"]


@dataclass
class PositionTracks:
    """Tracks over a shared position store; track t is rows ``offsets[t]:offsets[t+1]`` (after resampling)."""

    mode: str  # "scene" | "pair"
    names: list[str]
    store: np.ndarray  # int16 (N, n_mice, S, 2): every video's positions, poscache codes
    video_offsets: np.ndarray  # (V + 1,) int64: video v is store rows video_offsets[v]:video_offsets[v+1]
    quantum: np.ndarray  # (V,) float64 cm per code
    video_fps: np.ndarray  # (V,) float64 each video's own frame rate
    ratio: np.ndarray | None  # (V,) source frames per row (fps / target_fps); None: no resampling
    track_video: np.ndarray  # (n_tracks,) int64
    agent: np.ndarray  # (n_tracks,) int64 0-based mouse slot (scene: 0)
    target: np.ndarray  # (n_tracks,) int64
    offsets: np.ndarray  # (n_tracks + 1,) int64 rows
    Y: np.ndarray  # (N_rows, C) uint8 (pair) or (N_rows,) int64 (scene)
    label_mask: np.ndarray  # (n_tracks, C) bool
    lab_id: np.ndarray
    video_id: np.ndarray
    agent_id: np.ndarray  # (n_tracks,) int8 1-based; -1 in scene mode
    target_id: np.ndarray
    fps: np.ndarray  # (n_tracks,) float64 fps of the rows
    fcfg: FeatureConfig = field(default_factory=FeatureConfig)  # how the features are computed
    slots: list[str] = field(default_factory=lambda: list(data.DEFAULT_SLOTS))  # the store's keypoint slots
    norm: dict[str, np.ndarray] | None = field(default=None)  # mean / std (F,) applied by batch
    to_video: list[tuple[np.ndarray, int, float] | None] | None = field(default=None)
    # model.lab_conditioning: the training labs; batch appends one-hot lab + log2(video fps / 30) columns
    labs: list[str] | None = field(default=None)

    @property
    def n_tracks(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_condition(self) -> int:
        """Columns ``batch`` appends after the features: one per training lab + the fps (0 without ``labs``)."""
        return 0 if self.labs is None else len(self.labs) + 1

    @property
    def unseen_labs(self) -> list[str]:
        """The tracks' labs that are not among ``labs`` (their lab columns are all zero)."""
        return [] if self.labs is None else sorted(set(self.lab_id.tolist()) - set(self.labs))

    def condition(self) -> np.ndarray | None:
        """(n_tracks, n_condition) float32: each track's one-hot lab (zeros for an unseen lab) and
        log2(video fps / 30); None without ``labs``."""
        if self.labs is None:
            return None
        col = {lab: i for i, lab in enumerate(self.labs)}
        out = np.zeros((self.n_tracks, self.n_condition), np.float32)
        idx = np.array([col.get(lab, -1) for lab in self.lab_id], np.int64)
        seen = idx >= 0
        out[np.flatnonzero(seen), idx[seen]] = 1.0
        out[:, -1] = np.log2(self.video_fps[self.track_video] / 30.0)
        return out

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_features(self) -> int:
        return self.n_base_features + self.n_condition

    @property
    def n_base_features(self) -> int:
        """The position features (what ``norm`` standardises), without the conditioning columns."""
        S = len(self.slots)
        return F.n_pair_features(S) if self.mode == "pair" else self.fcfg.n_mice * S * 4

    @property
    def n_outputs(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes of what a resident store holds: the positions, the labels and the rest; ``features_fp32``:
        what the float32 feature matrix of the same rows would take."""
        side = sum(getattr(self, k).nbytes for k in ("video_offsets", "quantum", "video_fps", "track_video", "agent",
                                                     "target", "offsets", "label_mask"))
        out = {"store": self.store.nbytes, "Y": self.Y.nbytes, "other": side}
        out["total"] = sum(out.values())
        out["features_fp32"] = self.n_rows * self.n_features * 4
        return out

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def max_ratio(self) -> float:
        return 1.0 if self.ratio is None else float(self.ratio.max())

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor | None]:
        """Everything ``batch`` reads, as tensors on ``device`` (the resident store: positions, not features)."""
        t = {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))).to(device) for k in (
            "store", "video_offsets", "quantum", "video_fps", "track_video", "agent", "target", "offsets", "Y",
            "label_mask")}
        t["ratio"] = None if self.ratio is None else torch.from_numpy(self.ratio).to(device)
        cond = self.condition()
        t["condition"] = None if cond is None else torch.from_numpy(cond).to(device)
        t["norm"] = None if self.norm is None else {k: torch.from_numpy(np.asarray(v, np.float32)).to(device)
                                                    for k, v in self.norm.items()}
        return t

    def batch(self, arrays: dict, windows: torch.Tensor, length: int, shift: torch.Tensor | None = None,
              augment: Any = None) -> dict[str, torch.Tensor]:
        """``windows.gather`` of (B, 2) windows over ``arrays`` (``tensors()``): features computed, standardised;
        ``augment``: a ``training.augment.PositionAugment`` applied to the positions first (training)."""
        return batch(arrays, windows, length, self.fcfg, self.slots, mode=self.mode, max_ratio=self.max_ratio,
                     shift=shift, norm=arrays.get("norm"), augment=augment)

    def to_trackset(self, chunk: int = 1024, windows_per_batch: int = 16, dtype: Any = np.float32,
                    out: np.ndarray | None = None) -> windows.TrackSet:
        """The same tracks with every row's features computed once (standardised with ``norm`` when set, NaN -> 0):
        a ``windows.TrackSet`` in host memory, n_rows x n_features in ``dtype`` (the CPU path when it fits).

        ``dtype`` float16 halves the bytes: each chunk is computed in float32 and rounded once (relative error
        <= 2**-11 on standardised features); values beyond float16's range saturate at +-65504 instead of
        becoming inf (at most n_rows / 65504**2 training rows can lie that many standard deviations from
        the mean). The TrackSet's ``stored_error`` is the largest |stored - float32| of the matrix. ``out``: an
        (n_rows, n_features) array of ``dtype`` to fill (a slice of a larger matrix: no second copy)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"in-memory features are float32 or float16, not {dtype}")
        arrays = self.tensors()
        X = np.empty((self.n_rows, self.n_features), dtype) if out is None else out
        if X.shape != (self.n_rows, self.n_features) or X.dtype != dtype:
            raise ValueError(f"out is {X.dtype} {X.shape}, the features {dtype} {(self.n_rows, self.n_features)}")
        half = dtype == np.float16
        err = torch.zeros((), dtype=torch.float32)
        wins = windows.window_index(self.lengths, chunk, chunk)  # the last one ends on the last row
        for i in range(0, len(wins), windows_per_batch):
            w = torch.from_numpy(wins[i : i + windows_per_batch])
            b = self.batch(arrays, w, chunk)
            x, valid = b["x"][b["valid"]], b["valid"].numpy()
            if half:  # saturate, round, and measure the rounding of exactly what is stored
                h = x.clamp(-_FP16_MAX, _FP16_MAX).half()
                err = torch.maximum(err, (h.float() - x).abs().max())
                x = h
            rows = self.offsets[wins[i : i + windows_per_batch, 0]][:, None] + wins[i : i + windows_per_batch, 1][:, None]
            rows = rows + np.arange(chunk)[None, :]
            X[rows[valid]] = x.numpy()
        return windows.TrackSet(self.mode, list(self.names), X, self.Y, self.label_mask, self.offsets, self.lab_id,
                                self.video_id, self.agent_id, self.target_id, self.fps, norm=self.norm,
                                to_video=self.to_video, labs=self.labs, stored_error=float(err))


def _check_actions(actions: Iterable[str], where: str) -> list[str]:
    actions = list(actions)
    bad = [a for a in actions if a not in ACTION_INDEX]
    if bad:
        raise MabeError(f"{where}: unknown action(s) {bad}; valid actions: {', '.join(ACTIONS)}")
    return actions


def _rows(index_df: pd.DataFrame, videos: Iterable[int]) -> pd.DataFrame:
    wanted = {int(v) for v in videos}
    return index_df[index_df["video_id"].isin(wanted)]


def resolve_actions(cache_dir: str | Path, task: TaskConfig, videos: Iterable[int],
                    index_df: pd.DataFrame | None = None) -> list[str]:
    """Pair-mode output actions: ``task.actions``, or every action labelled in ``videos`` (ACTIONS order)."""
    if task.actions:
        return _check_actions(task.actions, "task.actions")
    cache_dir = Path(cache_dir)
    index_df = prepare.open_cache(cache_dir)[1] if index_df is None else index_df
    seen = np.zeros(len(ACTIONS), dtype=bool)
    rows = _rows(index_df, videos)[["lab_id", "video_id"]].drop_duplicates()
    for lab, vid in rows.itertuples(index=False):
        v = prepare.read_video(cache_dir, lab, int(vid))
        if v.meta["has_labels"] or v.meta["split"] == "test":
            seen |= v.labeled_mask().any(axis=0)
    actions = [a for a, s in zip(ACTIONS, seen) if s]
    if not actions:
        raise MabeError(f"{cache_dir}: no labelled behaviour in the {len(rows)} training videos")
    return actions


def load_position_tracks(
    cache_dir: str | Path, task: TaskConfig, videos: Iterable[int], actions: Sequence[str] | None = None, *,
    drop_unlabeled: bool = True, index_df: pd.DataFrame | None = None, fcfg: FeatureConfig | None = None,
) -> PositionTracks:
    """Cached videos -> PositionTracks of the task's tracks (not normalised: set ``norm``).

    scene: one track per video, Y = ``windows.scene_labels``. pair: one track per ordered pair listed in
    the index, Y = its labels of ``actions`` (default ``resolve_actions``), label_mask = its listed
    triples. ``drop_unlabeled`` drops tracks with nothing labelled (training, validation); keep them to
    predict every track (test). ``fcfg``: how features are computed (default: the cache's).
    """
    cache_dir = Path(cache_dir)
    cache_fcfg, index = prepare.open_cache(cache_dir)
    index_df = index if index_df is None else index_df
    fcfg = cache_fcfg if fcfg is None else fcfg
    slots = list(fcfg.slots) if fcfg.slots is not None else list(data.DEFAULT_SLOTS)
    wanted = {int(v) for v in videos}
    rows = _rows(index_df, wanted)
    if task.mode == "scene":
        names = ["none", *task.classes]
        for acts in task.classes.values():
            _check_actions(acts, "task.classes")
    else:
        if actions is None:
            actions = resolve_actions(cache_dir, task, wanted, index_df)
        names = _check_actions(actions, "actions")
    cols = np.array([ACTION_INDEX[a] for a in names]) if task.mode == "pair" else None
    used, ys, masks, rows_meta, track_rows, to_video = [], [], [], [], [], []
    target_fps = fcfg.target_fps
    for (lab, vid), group in rows.groupby(["lab_id", "video_id"], sort=True):
        v = prepare.read_video(cache_dir, lab, int(vid))
        fps, T = float(v.meta["fps"]), v.n_frames
        resampled = target_fps is not None and abs(float(target_fps) - fps) > 1e-9
        frames = F.nearest_frames(T, fps, float(target_fps)) if resampled else None
        n_rows = len(frames) if resampled else T
        pairs = v.pairs
        labels = v.frame_labels(pairs, ACTIONS, frames)  # (n_pairs, rows, 37)
        labeled = v.labeled_mask(pairs)
        if v.meta["split"] != "test" and not v.meta["has_labels"]:
            labeled[:] = False  # listed triples without an annotation file say nothing
        back = (frames, T, fps) if resampled else None
        row_fps = float(group["fps"].iloc[0])  # the index's (target_fps when resampled, else the video's)
        k = len(used)
        tracks: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        if task.mode == "scene":
            if not (drop_unlabeled and not labeled.any()):
                tracks.append((0, 0, scene_labels(labels, task.classes), np.full(len(names), labeled.any())))
        else:
            for p in sorted(group["pair_index"].astype(int).unique().tolist()):
                a, t = pairs[p]
                mask = labeled[p, cols]
                if drop_unlabeled and not mask.any():
                    continue
                tracks.append((a - 1, t - 1, labels[p][:, cols], mask))
        if not tracks:
            continue
        used.append((v, fps, resampled))
        for a, t, y, mask in tracks:
            ys.append(y)
            masks.append(mask)
            track_rows.append(n_rows)
            to_video.append(back)
            rows_meta.append((k, a, t, str(lab), int(vid),
                              a + 1 if task.mode == "pair" else -1, t + 1 if task.mode == "pair" else -1, row_fps))
    if not used:
        raise MabeError(f"{cache_dir}: no {task.mode} tracks with labels among {len(wanted)} videos")
    store, video_offsets, quantum = poscache.stack_codes([u[0] for u in used], slots, fcfg.n_mice)
    video_fps = np.array([u[1] for u in used], dtype=np.float64)
    ratio = video_fps / float(target_fps) if any(u[2] for u in used) else None
    k, a, t, lab, vid, aid, tid, row_fps = zip(*rows_meta)
    return PositionTracks(
        mode=task.mode, names=names, store=store, video_offsets=video_offsets, quantum=quantum, video_fps=video_fps,
        ratio=ratio, track_video=np.array(k, np.int64), agent=np.array(a, np.int64), target=np.array(t, np.int64),
        offsets=np.concatenate([[0], np.cumsum(track_rows)]).astype(np.int64),
        Y=np.concatenate(ys).astype(np.int64 if task.mode == "scene" else np.uint8, copy=False),  # no third copy
        label_mask=np.stack(masks).astype(bool), lab_id=np.array(lab, dtype=object), video_id=np.array(vid, np.int64),
        agent_id=np.array(aid, np.int8), target_id=np.array(tid, np.int8), fps=np.array(row_fps, np.float64),
        fcfg=fcfg, slots=slots, to_video=to_video if any(b is not None for b in to_video) else None,
    )


def _features(arrays: dict, track: torch.Tensor, start: torch.Tensor, length: int, fcfg: FeatureConfig,
              slots: Sequence[str], mode: str, max_ratio: float, dtype: torch.dtype, draw: Any = None):
    video = arrays["track_video"][track]
    extra = {} if draw is None else {"positions": draw.positions, "speed": draw.speed, "max_speed": draw.max_speed}
    return FT.window_features(
        arrays["store"], arrays["video_offsets"], video, start, length, arrays["video_fps"], fcfg, slots, mode=mode,
        agent=arrays["agent"][track], target=arrays["target"][track], ratio=arrays["ratio"], max_ratio=max_ratio,
        dtype=dtype, quantum=arrays["quantum"], **extra)


def batch(
    arrays: dict, windows: torch.Tensor, length: int, fcfg: FeatureConfig, slots: Sequence[str], *, mode: str,
    max_ratio: float = 1.0, shift: torch.Tensor | None = None, norm: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32, augment: Any = None,
) -> dict[str, torch.Tensor]:
    """``windows.gather`` over PositionTracks.tensors(): windows (B, 2) (track, start), optional start shift
    (clamped inside the track) -> x (B, W, F) standardised with ``norm`` (mean/std (F,); NaN -> 0) and 0 on
    padding, y, valid (B, W) and, in pair mode, mask (B, W, C). ``arrays["condition"]`` (n_tracks, K), when
    set (``PositionTracks.labs``): appended to x's features on every valid frame.

    ``augment`` (``training.augment.PositionAugment``, training only): its draws change the positions before
    the features; under a time stretch the labels follow (each output row takes the nearest row's label)."""
    offsets = arrays["offsets"]
    track, start = windows[:, 0], windows[:, 1]
    first = offsets[track]
    n = offsets[track + 1] - first
    if shift is not None:
        last = torch.where(n > length, n - length, 0)
        start = torch.minimum(torch.where(start + shift > 0, start + shift, 0), last)
    draw = None if augment is None else augment.draw(len(track), arrays["store"].device)
    x, valid = _features(arrays, track, start, length, fcfg, slots, mode, max_ratio, dtype, draw)
    if norm is not None:
        x = (x - norm["mean"].to(x)) / norm["std"].to(x)
    cond = arrays.get("condition")
    if cond is not None:  # the track's lab and fps, the same on every frame (not standardised)
        x = torch.cat([x, cond[track].to(x.dtype)[:, None, :].expand(-1, length, -1)], dim=2)
    x = torch.where(valid[..., None], torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), 0)
    speed = None if draw is None else draw.speed
    t = FT.row_positions(start, length, speed)
    if speed is not None:
        t = torch.floor(t + 0.5).long()  # the nearest row's label (exactly row i at speed 1)
    rows = first[:, None] + torch.minimum(t, n[:, None] - 1)
    y = arrays["Y"][rows]
    out = {"x": x, "valid": valid}
    if mode == "scene":
        out["y"] = torch.where(valid, y, IGNORE_INDEX)
    else:
        out["y"] = torch.where(valid[..., None], y, 0)
        out["mask"] = arrays["label_mask"][track][:, None, :] & valid[..., None]
    return out


def norm_stats(arrays: dict, fcfg: FeatureConfig, slots: Sequence[str], *, mode: str, max_ratio: float = 1.0,
               chunk: int = 1024, windows_per_batch: int = 16) -> dict[str, np.ndarray]:
    """Per-feature NaN-ignoring mean and std over every row of every track (``windows.norm_stats`` of the
    features the float32 cache would hold), float32, std 1 where constant or all NaN; one pass in chunks."""
    lengths = (arrays["offsets"][1:] - arrays["offsets"][:-1]).cpu().numpy()
    wins = np.array([(t, s) for t, n in enumerate(lengths) for s in range(0, int(n), chunk)], dtype=np.int64)
    dev = arrays["store"].device
    s = ss = cnt = None
    for i in range(0, len(wins), windows_per_batch):
        w = torch.from_numpy(wins[i : i + windows_per_batch]).to(dev)
        x, valid = _features(arrays, w[:, 0], w[:, 1], chunk, fcfg, slots, mode, max_ratio, torch.float64)
        ok = valid[..., None] & torch.isfinite(x)
        x = torch.where(ok, x, 0.0)
        part = (x.sum((0, 1)), (x * x).sum((0, 1)), ok.sum((0, 1)).double())
        s, ss, cnt = part if s is None else (s + part[0], ss + part[1], cnt + part[2])
    s, ss, cnt = (v.cpu().numpy() for v in (s, ss, cnt))
    mean = np.divide(s, cnt, out=np.zeros_like(s), where=cnt > 0)
    var = np.divide(ss, cnt, out=np.zeros_like(s), where=cnt > 0) - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


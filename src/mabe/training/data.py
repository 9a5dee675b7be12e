"""The training data: the position cache (prepared if missing) -> train / validation PositionTracks,
with normalisation statistics of the training tracks' features (applied per batch)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mabe import prepare
from mabe.config import Config
from mabe.errors import MabeError
from mabe.postracks import PositionTracks, load_position_tracks, norm_stats, resolve_actions
from mabe.training.augment import positions_on
from mabe.windows import TrackSet, run_split

__all__ = ["load_tracksets", "track_stats", "features_in_memory", "memory_dtype", "in_memory"]


def track_stats(ts: PositionTracks) -> dict:
    """Per-feature mean / std (F,) float32 of every row of ``ts`` (features computed in chunks, one pass)."""
    return norm_stats(ts.tensors(), ts.fcfg, ts.slots, mode=ts.mode, max_ratio=ts.max_ratio)


def memory_dtype(cfg: Config, device: Any, n_cells: int | None = None) -> np.dtype:
    """The dtype of ``n_cells`` feature values computed once into host memory. ``train.storage_dtype``
    auto on the CPU: float32 when they fit ``train.features_memory_gb`` in float32, else float16 (half the
    bytes, cast to float32 per batch), so precision is given up only where memory needs it; float16 when
    asked for; else float32 (a GPU store casts them itself, to ``storage_dtype``). None: float16 on the CPU."""
    name = cfg.train.storage_dtype
    on_cpu = device is None or torch.device(device).type == "cpu"
    if name == "float16":
        return np.dtype(np.float16)
    if name == "auto" and on_cpu:
        # float16 costs the network accuracy within noise (hard seeds 0-2: +0.008 / -0.026 / -0.036 against
        # float32, benchmarks/RESULTS.md), so the sets that fit keep float32 and their results
        fits = n_cells is not None and n_cells * 4 <= cfg.train.features_memory_gb * 2**30
        return np.dtype(np.float32 if fits else np.float16)
    return np.dtype(np.float32)


def features_in_memory(cfg: Config, n_bytes: int, device: Any, augmented: bool | None = None) -> bool:
    """Whether to compute the tracks' features once into host memory (``train.features_in_memory``):
    ``n_bytes`` their size in ``memory_dtype``, ``device`` where the step runs (None: the CPU); ``augmented``:
    whether the tracks get the geometric augmentation (default: when the config turns it on; validation never)."""
    mode = cfg.train.features_in_memory
    if mode != "auto":
        return mode == "always"
    if positions_on(cfg.augment) if augmented is None else augmented:  # positions change every batch
        return False
    on_cpu = device is None or torch.device(device).type == "cpu"
    return on_cpu and n_bytes <= cfg.train.features_memory_gb * 2**30


def in_memory(ts: PositionTracks, load: Callable[[list[int]], PositionTracks], dtype: Any,
              group_rows: int = 1 << 18) -> TrackSet:
    """``ts.to_trackset(dtype=dtype)`` without ``ts``'s positions beside the features: the whole store is
    dropped first, then the features are computed for runs of consecutive videos of about ``group_rows``
    rows, each run's positions read again from the (memory-mapped) cache by ``load(video ids)`` (which
    must give ``ts``'s tracks of those videos, in order). Peak: features + labels + one run's positions,
    where ``to_trackset`` holds every position too (288 B a video frame beside ~380 B of float16 features
    on the real preset). Modifies ``ts`` (its store is emptied)."""
    ts.store = ts.store[:0]  # the only reference to the set's positions (the caller's tracks are replaced)
    gc.collect()
    lengths = ts.lengths
    # the tracks' videos in track order (tracks are grouped by video) and each video's rows
    first = np.flatnonzero(np.r_[True, ts.video_id[1:] != ts.video_id[:-1]])
    vids = ts.video_id[first]
    rows = np.add.reduceat(lengths, first)
    X = np.empty((ts.n_rows, ts.n_features), np.dtype(dtype))
    err, lo, i = 0.0, 0, 0
    while i < len(vids):
        j = i + 1
        while j < len(vids) and rows[i:j + 1].sum() <= group_rows:
            j += 1
        part = load(vids[i:j].tolist())
        hi = lo + part.n_rows
        if hi > ts.n_rows or not np.array_equal(part.lengths, lengths[first[i] : first[j] if j < len(vids) else None]):
            raise MabeError(f"videos {vids[i:j].tolist()}: their tracks changed in the cache while training read it")
        err = max(err, part.to_trackset(dtype=dtype, out=X[lo:hi]).stored_error)  # written in place
        lo, i = hi, j
        del part
    return TrackSet(ts.mode, list(ts.names), X, ts.Y, ts.label_mask, ts.offsets, ts.lab_id, ts.video_id, ts.agent_id,
                    ts.target_id, ts.fps, norm=ts.norm, to_video=ts.to_video, labs=ts.labs, stored_error=err)


def load_tracksets(cfg: Config, stats: dict | None = None, say: Callable[[str], Any] = print, device: Any = None,
                   labs: list[str] | None = None) -> tuple[PositionTracks | TrackSet, PositionTracks | TrackSet, dict]:
    """Cache (prepared if missing) -> split by video -> train and val tracks, normalised with ``stats``.

    PositionTracks (features per batch, where the step runs) or, when ``features_in_memory`` says so
    for ``device``, TrackSets holding the same features computed once. ``stats``: normalisation to
    apply (a resumed run's); None computes it on the training tracks only. ``say``: where the
    one-line summaries go (the run log). ``model.lab_conditioning``: both get ``labs`` (a resumed run's), by
    default the training tracks' labs, sorted.
    """
    cache_dir = prepare.ensure_cache(cfg, Path(cfg.data), ["train"])
    _, index = prepare.open_cache(cache_dir)
    index = index[(index["split"] == "train") & index["has_labels"].astype(bool)]
    if index.empty:
        raise MabeError(f"{cache_dir}: no labelled training videos (from {cfg.data})")
    w = cfg.windows
    train_videos, val_videos = run_split(index, w.val_fraction, w.split_seed, w.folds, w.fold)
    if len(val_videos) == 0:
        raise MabeError(f"{cfg.data}: no validation videos (windows.val_fraction={cfg.windows.val_fraction}, "
                        f"{len(train_videos)} labelled videos); validation drives the schedule and checkpoints")
    actions = resolve_actions(cache_dir, cfg.task, train_videos, index) if cfg.task.mode == "pair" else None
    train_ts = load_position_tracks(cache_dir, cfg.task, train_videos, actions, index_df=index)
    stats = stats if stats is not None else track_stats(train_ts)
    train_ts.norm = stats
    if cfg.model.lab_conditioning:
        labs = sorted(set(train_ts.lab_id.tolist())) if labs is None else list(labs)
        train_ts.labs = labs

    def load(videos: Any) -> PositionTracks:
        ts = load_position_tracks(cache_dir, cfg.task, videos, actions, index_df=index)
        ts.norm, ts.labs = stats, (labs if cfg.model.lab_conditioning else None)
        return ts

    val_ts = load(val_videos)
    if cfg.model.lab_conditioning:
        say(f"data: lab conditioning: {len(labs)} lab column(s) ({', '.join(labs)}) + log2(video fps / 30)"
            + (f"; labs not trained on (all-zero lab columns): {', '.join(val_ts.unseen_labs)}"
               if val_ts.unseen_labs else ""))
    say(f"data: {cache_dir} | train {len(train_videos)} videos, {train_ts.n_tracks} tracks, "
        f"{train_ts.n_rows:,} frames | val {len(val_videos)} videos, {val_ts.n_tracks} tracks, "
        f"{val_ts.n_rows:,} frames | {train_ts.n_features} features -> {train_ts.n_outputs} outputs "
        f"({cfg.task.mode})")
    dtype = memory_dtype(cfg, device, (train_ts.n_rows + val_ts.n_rows) * train_ts.n_features)
    n_val = val_ts.n_rows * train_ts.n_features * dtype.itemsize
    n_bytes = train_ts.n_rows * train_ts.n_features * dtype.itemsize + n_val
    if features_in_memory(cfg, n_bytes, device):
        del val_ts  # read again below: never both sets' positions beside the features
        train_ts = in_memory(train_ts, load, dtype)
        val_ts = in_memory(load(val_videos), load, dtype)
        err = max(train_ts.stored_error, val_ts.stored_error)
        say(f"data: features computed once into host memory ({n_bytes / 2**20:,.1f} MiB {dtype.name}"
            + (f", max rounding {err:.1e}" if dtype != np.float32 else "")
            + f"; train.features_in_memory={cfg.train.features_in_memory}, limit "
            f"{cfg.train.features_memory_gb:g} GB)")
    else:
        why = (" (the geometric augmentation changes the positions every batch)"
               if cfg.train.features_in_memory == "auto" and positions_on(cfg.augment) else "")
        where = "training" if positions_on(cfg.augment) else "training and validation"
        if positions_on(cfg.augment) and features_in_memory(cfg, n_val, device, augmented=False):
            val_ts = in_memory(val_ts, load, dtype)  # validation is never augmented: its features once
            say(f"data: validation features computed once into host memory ({n_val / 2**20:,.1f} MiB {dtype.name})")
        else:
            where = "training and validation"
        say(f"data: {where} features computed per batch from the int16 positions "
            f"(train.features_in_memory={cfg.train.features_in_memory}){why}")
    return train_ts, val_ts, stats

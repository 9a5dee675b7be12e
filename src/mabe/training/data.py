"""The training data: the position cache (prepared if missing) -> train / validation PositionTracks,
with normalisation statistics of the training tracks' features (applied per batch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mabe import prepare
from mabe.config import Config
from mabe.errors import MabeError
from mabe.postracks import PositionTracks, load_position_tracks, norm_stats, resolve_actions
from mabe.training.augment import positions_on
from mabe.windows import TrackSet, run_split

__all__ = ["load_tracksets", "track_stats", "features_in_memory"]


def track_stats(ts: PositionTracks) -> dict:
    """Per-feature mean / std (F,) float32 of every row of ``ts`` (features computed in chunks, one pass)."""
    return norm_stats(ts.tensors(), ts.fcfg, ts.slots, mode=ts.mode, max_ratio=ts.max_ratio)


def features_in_memory(cfg: Config, n_bytes: int, device: Any, augmented: bool | None = None) -> bool:
    """Whether to compute the tracks' features once into host memory (``train.features_in_memory``):
    ``n_bytes`` their float32 size, ``device`` where the step runs (None: the CPU); ``augmented``: whether
    the tracks get the geometric augmentation (default: when the config turns it on; validation never)."""
    mode = cfg.train.features_in_memory
    if mode != "auto":
        return mode == "always"
    if positions_on(cfg.augment) if augmented is None else augmented:  # positions change every batch
        return False
    on_cpu = device is None or torch.device(device).type == "cpu"
    return on_cpu and n_bytes <= cfg.train.features_memory_gb * 2**30


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
    val_ts = load_position_tracks(cache_dir, cfg.task, val_videos, actions, index_df=index)
    stats = stats if stats is not None else track_stats(train_ts)
    train_ts.norm = val_ts.norm = stats
    if cfg.model.lab_conditioning:
        labs = sorted(set(train_ts.lab_id.tolist())) if labs is None else list(labs)
        train_ts.labs = val_ts.labs = labs
        say(f"data: lab conditioning: {len(labs)} lab column(s) ({', '.join(labs)}) + log2(video fps / 30)"
            + (f"; labs not trained on (all-zero lab columns): {', '.join(val_ts.unseen_labs)}"
               if val_ts.unseen_labs else ""))
    say(f"data: {cache_dir} | train {len(train_videos)} videos, {train_ts.n_tracks} tracks, "
        f"{train_ts.n_rows:,} frames | val {len(val_videos)} videos, {val_ts.n_tracks} tracks, "
        f"{val_ts.n_rows:,} frames | {train_ts.n_features} features -> {train_ts.n_outputs} outputs "
        f"({cfg.task.mode})")
    n_val = val_ts.n_rows * train_ts.n_features * 4
    n_bytes = train_ts.n_rows * train_ts.n_features * 4 + n_val
    if features_in_memory(cfg, n_bytes, device):
        train_ts, val_ts = train_ts.to_trackset(), val_ts.to_trackset()
        say(f"data: features computed once into host memory ({n_bytes / 2**20:,.1f} MiB float32; "
            f"train.features_in_memory={cfg.train.features_in_memory}, limit {cfg.train.features_memory_gb:g} GB)")
    else:
        why = (" (the geometric augmentation changes the positions every batch)"
               if cfg.train.features_in_memory == "auto" and positions_on(cfg.augment) else "")
        where = "training" if positions_on(cfg.augment) else "training and validation"
        if positions_on(cfg.augment) and features_in_memory(cfg, n_val, device, augmented=False):
            val_ts = val_ts.to_trackset()  # validation is never augmented: its features once, as without
            say(f"data: validation features computed once into host memory ({n_val / 2**20:,.1f} MiB float32)")
        else:
            where = "training and validation"
        say(f"data: {where} features computed per batch from the int16 positions "
            f"(train.features_in_memory={cfg.train.features_in_memory}){why}")
    return train_ts, val_ts, stats

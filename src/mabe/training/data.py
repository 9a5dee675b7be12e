"""The training data: the position cache (prepared if missing) -> train / validation PositionTracks,
with normalisation statistics of the training tracks' features (applied per batch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mabe import prepare
from mabe.config import Config
from mabe.errors import MabeError
from mabe.postracks import PositionTracks, load_position_tracks, norm_stats, resolve_actions
from mabe.windows import split_videos

__all__ = ["load_tracksets", "track_stats"]


def track_stats(ts: PositionTracks) -> dict:
    """Per-feature mean / std (F,) float32 of every row of ``ts`` (features computed in chunks, one pass)."""
    return norm_stats(ts.tensors(), ts.fcfg, ts.slots, mode=ts.mode, max_ratio=ts.max_ratio)


def load_tracksets(cfg: Config, stats: dict | None = None, say: Callable[[str], Any] = print
                   ) -> tuple[PositionTracks, PositionTracks, dict]:
    """Cache (prepared if missing) -> split by video -> train and val PositionTracks, ``norm`` set.

    ``stats``: normalisation to apply (a resumed run's); None computes it on the training tracks only.
    ``say``: where the one-line summary goes (the run log).
    """
    cache_dir = prepare.ensure_cache(cfg, Path(cfg.data), ["train"])
    _, index = prepare.open_cache(cache_dir)
    index = index[(index["split"] == "train") & index["has_labels"].astype(bool)]
    if index.empty:
        raise MabeError(f"{cache_dir}: no labelled training videos (from {cfg.data})")
    train_videos, val_videos = split_videos(index, cfg.windows.val_fraction, cfg.windows.split_seed)
    if len(val_videos) == 0:
        raise MabeError(f"{cfg.data}: no validation videos (windows.val_fraction={cfg.windows.val_fraction}, "
                        f"{len(train_videos)} labelled videos); validation drives the schedule and checkpoints")
    actions = resolve_actions(cache_dir, cfg.task, train_videos, index) if cfg.task.mode == "pair" else None
    train_ts = load_position_tracks(cache_dir, cfg.task, train_videos, actions, index_df=index)
    val_ts = load_position_tracks(cache_dir, cfg.task, val_videos, actions, index_df=index)
    stats = stats if stats is not None else track_stats(train_ts)
    train_ts.norm = val_ts.norm = stats
    say(f"data: {cache_dir} | train {len(train_videos)} videos, {train_ts.n_tracks} tracks, "
        f"{train_ts.n_rows:,} frames | val {len(val_videos)} videos, {val_ts.n_tracks} tracks, "
        f"{val_ts.n_rows:,} frames | {train_ts.n_features} features -> {train_ts.n_outputs} outputs "
        f"({cfg.task.mode}; computed per batch from positions)")
    return train_ts, val_ts, stats

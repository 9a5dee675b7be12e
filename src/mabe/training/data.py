"""The training data: the feature cache (prepared if missing) -> train / validation TrackSets, normalised."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mabe import prepare
from mabe.config import Config
from mabe.errors import MabeError
from mabe.windows import TrackSet, load_trackset, norm_stats, normalize_, resolve_actions, split_videos

__all__ = ["load_tracksets"]


def load_tracksets(cfg: Config, stats: dict | None = None, say: Callable[[str], Any] = print
                   ) -> tuple[TrackSet, TrackSet, dict]:
    """Cache (prepared if missing) -> split by video -> normalised train and val TrackSets.

    ``stats``: normalisation to apply (a resumed run's); None computes it on the training tracks.
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
    train_ts = load_trackset(cache_dir, cfg.task, train_videos, actions, index_df=index)
    val_ts = load_trackset(cache_dir, cfg.task, val_videos, actions, index_df=index)
    stats = stats if stats is not None else norm_stats(train_ts.X)
    normalize_(train_ts, stats)
    normalize_(val_ts, stats)
    say(f"data: {cache_dir} | train {len(train_videos)} videos, {train_ts.n_tracks} tracks, "
              f"{len(train_ts.X):,} frames | val {len(val_videos)} videos, {val_ts.n_tracks} tracks, "
              f"{len(val_ts.X):,} frames | {train_ts.n_features} features -> {train_ts.n_outputs} outputs "
              f"({cfg.task.mode})")
    return train_ts, val_ts, stats

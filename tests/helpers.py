"""Helpers the test modules share (importable as ``helpers``: pytest puts ``tests/`` on the path).

- ``make_fake_cache``: a position cache in the design.md layout without data files (the ``fake_cache``
  fixture in conftest.py wraps it);
- ``tiny_run``: the one small run configuration the whole-run tests start from (each test states only
  what differs);
- ``metric_rows``: metrics.csv rows without the timing columns, for comparing runs;
- ``make_predictions``: a predictions file's arrays from a few hand-made tracks (blend / stack tests).
"""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mabe import cli, poscache, prepare
from mabe import features as F
from mabe.config import FeatureConfig
from mabe.schema import ACTION_INDEX, DEFAULT_SLOTS

# the tiny run every whole-run test starts from: a 2-layer, 8-channel model on 16-frame windows
TINY_RUN = {
    "windows": {"sequence_length": 16, "frame_gap": 4, "val_fraction": 0.34},
    "model": {"conv_channels": [8, 8], "lstm_hidden": 8, "lstm_layers": 1},
    "augment": {"noise_std": 0.01, "temporal_jitter": 2, "mixup_alpha": 0.2},
    "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 1.0, "save_freq": 1,
              "tensorboard": False, "report": False, "plateau_patience": 0, "min_lr": 1e-4},
}


def tiny_run(tmp_path: Path, **sections: dict) -> dict:
    """``TINY_RUN`` with data / cache / runs under ``tmp_path`` and each of ``sections`` merged into its
    section (``train={"epochs": 2}``, ``task={"mode": "scene"}``, ...): a raw config for ``load_config``."""
    raw = {"data": str(tmp_path / "data"), "cache": str(tmp_path / "cache"), "runs": str(tmp_path / "runs"),
           **copy.deepcopy(TINY_RUN)}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **(values or {})}
    return raw


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.csv rows without the timing columns (epoch_time_s, windows_per_s)."""
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        del r["epoch_time_s"], r["windows_per_s"]
    return rows


def _intervals(on: np.ndarray) -> list[tuple[int, int]]:
    """(T,) bool -> [(start, stop), ...] of its runs of True (stop exclusive)."""
    d = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def make_fake_cache(
    cache_root: Path, fcfg: FeatureConfig | None = None, labs: tuple[int, ...] = (3, 3), frames: tuple[int, int] = (150, 260),
    seed: int = 0,
) -> Path:
    """Write a position cache in the design.md layout without data files (videos of 2 mice, 4 ordered pairs).

    Two mice walk (smooth random walks of their centre and heading, 18 body parts at fixed offsets);
    learnable labels: a pair "sniffs" while the two mice are closer than their median distance, a mouse
    "rears" (self) while it moves faster than its median speed; "attack" is labelled on the social
    pairs but never happens. Frame 3 misses mouse 1's third part.
    """
    fcfg = fcfg or FeatureConfig()
    cache_dir = prepare.cache_dir_for(cache_root, fcfg)
    slots = list(fcfg.slots) if fcfg.slots is not None else list(DEFAULT_SLOTS)
    rng = np.random.default_rng(seed)
    rows = []
    pairs = [(1, 1), (1, 2), (2, 1), (2, 2)]
    kernel = np.ones(15) / 15
    offsets = rng.normal(0, 1.5, (len(slots), 2))  # cm, body frame
    offsets[:, 0] += np.linspace(3, -3, len(slots))  # nose first, tail last
    ppc, centre = 10.0, (320.0, 240.0)
    for li, n_videos in enumerate(labs):
        lab = f"Lab{li}"
        for v in range(n_videos):
            vid = 1000 * (li + 1) + v
            T = int(rng.integers(*frames))
            steps = np.stack([np.convolve(x, kernel, "same") for x in rng.normal(0, 2.0, (6, T + 14))])[:, 7:-7]
            pos = np.cumsum(steps[:4].reshape(2, 2, T), axis=2).transpose(2, 0, 1)  # (T, 2 mice, 2) cm
            pos = 8 * np.tanh(pos / 8) + np.array([[-4, 0], [4, 0]])  # stay in the arena
            heading = np.cumsum(steps[4:] * 0.2, axis=1).T  # (T, 2) rad
            rot = np.stack([np.cos(heading), -np.sin(heading), np.sin(heading), np.cos(heading)], -1).reshape(T, 2, 2, 2)
            body = pos[:, :, None, :] + np.einsum("tmij,sj->tmsi", rot, offsets)  # (T, 2, S, 2) cm
            xy = np.full((T, 4, len(slots), 2), np.nan, np.float32)
            xy[:, :2] = body * ppc + np.array(centre)
            xy[3, 0, 2] = np.nan
            dist = np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1)
            speed = np.linalg.norm(np.gradient(pos, axis=0), axis=2)  # (T, 2)
            iv, labeled = [], []
            for a, t in pairs:
                if a == t:
                    on = speed[:, a - 1] > np.median(speed[:, a - 1])
                    iv += [(a, t, ACTION_INDEX["rear"], s, e) for s, e in _intervals(on)]
                    labeled.append((a, t, ACTION_INDEX["rear"]))
                else:
                    iv += [(a, t, ACTION_INDEX["sniff"], s, e) for s, e in _intervals(dist < np.median(dist))]
                    labeled += [(a, t, ACTION_INDEX["sniff"]), (a, t, ACTION_INDEX["attack"])]
            resampled = fcfg.target_fps is not None and fcfg.target_fps != 30.0
            n_rows = len(F.nearest_frames(T, 30.0, fcfg.target_fps)) if resampled else T
            folder = prepare.video_dir(cache_dir, lab, vid)
            poscache.write_video(
                folder, xy_px=xy, mice=np.array([True, True, False, False]), slots=slots, fps=30.0, pix_per_cm=ppc,
                centre_px=centre if fcfg.arena_centre else (0.0, 0.0), lab=lab, video=vid, split="train",
                intervals=np.array(iv, np.int32).reshape(-1, 5), labeled=labeled, has_labels=True,
                extra={"pairs": [list(p) for p in pairs], "n_rows": n_rows,
                       "row_fps": float(fcfg.target_fps) if resampled else 30.0, "resampled": resampled})
            for i, (a, t) in enumerate(pairs):
                rows.append((lab, vid, "train", n_rows, 30.0, a, t, i, str(folder.relative_to(cache_dir)), 30.0, True))
    index = pd.DataFrame(rows, columns=["lab_id", "video_id", "split", "n_frames", "fps", "agent_id", "target_id",
                                        "pair_index", "path", "video_fps", "has_labels"])
    index = index.astype({"agent_id": np.int8, "target_id": np.int8, "pair_index": np.int32, "video_id": np.int64})
    index.to_parquet(cache_dir / "index.parquet", index=False)
    (cache_dir / "config.json").write_text(json.dumps(fcfg.__dict__))
    return cache_dir


def run_cli(argv: list[str], capsys) -> tuple[int, str, str, list[str]]:
    """``mabe ARGV`` in this process: (exit code, stdout, stderr, the warnings it raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err, [str(w.message) for w in caught]


def error_line(rc: int, err: str, command: str) -> str:
    """The one ``mabe COMMAND: error: ...`` line of a failed command (exit 2, no traceback)."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"mabe {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def make_predictions(tracks, actions, with_labels=True):
    """tracks: list of (lab, video, agent, target, probs (T, A), labels (T, A), labeled (A,)) -> Predictions
    at 30 fps (probabilities float16, as a predictions file stores them)."""
    from mabe.predictions import Predictions

    return Predictions(
        probs=np.concatenate([t[4] for t in tracks]).astype(np.float16),
        offsets=np.concatenate([[0], np.cumsum([len(t[4]) for t in tracks])]).astype(np.int64),
        video_id=np.array([t[1] for t in tracks], dtype=np.int64), lab_id=np.array([t[0] for t in tracks]),
        agent_id=np.array([t[2] for t in tracks], dtype=np.int8), target_id=np.array([t[3] for t in tracks], dtype=np.int8),
        actions=np.array(actions), labeled=np.array([t[6] for t in tracks], dtype=bool),
        fps=np.full(len(tracks), 30.0),
        labels=np.concatenate([t[5] for t in tracks]).astype(np.uint8) if with_labels else None,
    )

"""Helpers the test modules share (importable as ``helpers``: pytest puts ``tests/`` on the path).

- ``make_fake_cache``: a feature cache in the design.md layout without data files (the ``fake_cache``
  fixture in conftest.py wraps it);
- ``tiny_run``: the one small run configuration the whole-run tests start from (each test states only
  what differs);
- ``metric_rows``: metrics.csv rows without the timing columns, for comparing runs.
"""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mabe import cli, prepare
from mabe.config import FeatureConfig
from mabe.schema import ACTION_INDEX, ACTIONS

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


def make_fake_cache(
    cache_root: Path, fcfg: FeatureConfig | None = None, labs: tuple[int, ...] = (3, 3), frames: tuple[int, int] = (150, 260),
    n_pair: int = 6, n_scene: int = 10, seed: int = 0,
) -> Path:
    """Write a cache in the design.md layout without data files (videos of 2 mice, 4 ordered pairs).

    Learnable labels: a pair "sniffs" where its smoothed feature 0 is high, a mouse "rears" (self)
    where its feature 1 is high; "attack" is labelled on the social pairs but never happens.
    """
    fcfg = fcfg or FeatureConfig()
    cache_dir = prepare.cache_dir_for(cache_root, fcfg)
    rng = np.random.default_rng(seed)
    rows = []
    pairs = [(1, 1), (1, 2), (2, 1), (2, 2)]
    kernel = np.ones(9) / 9
    for li, n_videos in enumerate(labs):
        lab = f"Lab{li}"
        for v in range(n_videos):
            vid = 1000 * (li + 1) + v
            T = int(rng.integers(*frames))
            raw = rng.normal(size=(4, T + 8, n_pair))
            pair = np.stack([np.stack([np.convolve(raw[p, :, f], kernel, "valid") for f in range(n_pair)], 1)
                             for p in range(4)]).astype(np.float32) * 3  # (4, T, P)
            pair[0, 3, 2] = np.nan
            labels = np.zeros((4, T, len(ACTIONS)), np.uint8)
            labeled = np.zeros((4, len(ACTIONS)), bool)
            for p, (a, t) in enumerate(pairs):
                if a == t:
                    labels[p, :, ACTION_INDEX["rear"]] = pair[p, :, 1] > 1.0
                    labeled[p, ACTION_INDEX["rear"]] = True
                else:
                    labels[p, :, ACTION_INDEX["sniff"]] = pair[p, :, 0] > 1.0
                    labeled[p, [ACTION_INDEX["sniff"], ACTION_INDEX["attack"]]] = True
            scene = rng.normal(size=(T, n_scene)).astype(np.float32)
            folder = prepare.video_dir(cache_dir, lab, vid)
            folder.mkdir(parents=True)
            for name, arr in (("scene", scene), ("pair", pair), ("labels", labels), ("labeled", labeled)):
                np.save(folder / f"{name}.npy", arr)
            meta = {"lab": lab, "video": vid, "split": "train", "fps": 30.0, "video_fps": 30.0, "n_frames": T,
                    "n_video_frames": T, "pairs": [list(p) for p in pairs], "has_labels": True}
            (folder / "meta.json").write_text(json.dumps(meta))
            for i, (a, t) in enumerate(pairs):
                rows.append((lab, vid, "train", T, 30.0, a, t, i, str(folder.relative_to(cache_dir)), 30.0, True))
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

"""``mabe ethogram``: predictions of a lab's own videos -> behaviour intervals (CSV, frames and seconds)
and one ethogram PNG per video.

The intervals are the same post-processing as ``mabe submit`` (smoothing, thresholds, minimum length,
gap filling), so the CSV and a submission agree; the PNGs are report.py's ethograms drawn from those
intervals (and the labels, where the predictions carry them). Videos imported with ``mabe import`` get
their names and their animals' names back from the data folder's ``import_sources.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mabe import paths, postprocess, predictions
from mabe.config import load_config
from mabe.errors import MabeError
from mabe.importer import SOURCES_FILE
from mabe.io import atomic_path
from mabe.predictions import Predictions
from mabe.report import NotAvailable, ethogram_png

INTERVALS_FILE = "intervals.csv"
ETHOGRAM_COLUMNS: tuple[str, ...] = (
    "lab_id", "video_id", "video_name", "agent_id", "target_id", "agent", "target", "behaviour",
    "start_frame", "stop_frame", "start_s", "stop_s", "duration_s",
)  # stop exclusive; seconds = frame / fps


def _animal_names(data_dir: Path | None) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], list[str]]]:
    """(lab, video) -> video name, and -> animal names, from import_sources.csv ({} without one)."""
    path = None if data_dir is None else Path(data_dir) / SOURCES_FILE
    if path is None or not path.is_file():
        return {}, {}
    df = pd.read_csv(path)
    keys = list(zip(df["lab_id"].astype(str), df["video_id"].astype(np.int64)))
    return (dict(zip(keys, df["video_name"].astype(str))),
            {k: json.loads(v) for k, v in zip(keys, df["individuals"])})


def intervals_table(preds, intervals: pd.DataFrame, data_dir: Path | None = None) -> pd.DataFrame:
    """postprocess intervals (video_id, agent_id, target_id, action, start/stop_frame) -> ETHOGRAM_COLUMNS."""
    lab_of = {int(v): str(lab) for v, lab in zip(preds.video_id, preds.lab_id)}
    fps_of = {int(v): float(f) for v, f in zip(preds.video_id, preds.fps)}
    names, animals = _animal_names(data_dir)
    df = intervals.copy()
    vid = df["video_id"].astype(np.int64)
    df["lab_id"] = vid.map(lab_of)
    df["video_name"] = [names.get((lab, v), str(v)) for lab, v in zip(df["lab_id"], vid)]

    def who(lab: str, v: int, m: int) -> str:
        found = animals.get((lab, v))
        return found[m - 1] if found and 0 < m <= len(found) else f"mouse{m}"

    df["agent"] = [who(lab, v, a) for lab, v, a in zip(df["lab_id"], vid, df["agent_id"])]
    df["target"] = ["self" if a == t else who(lab, v, t)
                    for lab, v, a, t in zip(df["lab_id"], vid, df["agent_id"], df["target_id"])]
    df["behaviour"] = df["action"]
    fps = vid.map(fps_of).to_numpy(np.float64)
    df["start_s"] = df["start_frame"].to_numpy(np.float64) / fps
    df["stop_s"] = df["stop_frame"].to_numpy(np.float64) / fps
    df["duration_s"] = df["stop_s"] - df["start_s"]
    return df[list(ETHOGRAM_COLUMNS)].sort_values(["lab_id", "video_id", "start_frame", "agent_id", "target_id"],
                                                  kind="stable").reset_index(drop=True)


def decisions(preds, intervals: pd.DataFrame):
    """Predictions whose probs are the intervals as 0/1 per frame (labels kept): what the PNGs draw."""
    probs = np.zeros(preds.probs.shape, dtype=np.float16)
    col = {str(a): i for i, a in enumerate(preds.actions)}
    track = {(int(v), int(a), int(t)): i for i, (v, a, t) in enumerate(zip(preds.video_id, preds.agent_id,
                                                                            preds.target_id))}
    for r in intervals.itertuples(index=False):  # one slice per interval, not per frame
        t = track[(int(r.video_id), int(r.agent_id), int(r.target_id))]
        o = int(preds.offsets[t])
        probs[o + int(r.start_frame): o + int(r.stop_frame), col[str(r.action)]] = 1
    return Predictions(probs, preds.offsets, preds.video_id, preds.lab_id, preds.agent_id, preds.target_id,
                       preds.actions, preds.labeled, preds.fps, preds.labels)


def write_ethograms(preds_path: str | Path, out: str | Path, data_dir: str | Path | None = None,
                    cfg=None, thresholds=None, png: bool = True) -> tuple[Path, list[Path]]:
    """Predictions file -> ``out/intervals.csv`` (all videos), ``out/intervals_<lab>_<video_id>.csv`` and
    ``out/ethogram_<lab>_<video_id>.png`` per video; returns (intervals.csv, PNG paths). Ids, not names, in
    file names: lab ids are checked folder names, video names come from users' files."""
    from tqdm.auto import tqdm

    preds = predictions.load(preds_path)
    if not preds.labeled.any():
        raise MabeError(f"{preds_path}: no track has a labelled behaviour to predict (behaviors_labeled is "
                        "empty); import test videos with `mabe import --split test` (all 37 by default)")
    intervals = postprocess.predictions_to_intervals(preds, cfg, thresholds or {})
    table = intervals_table(preds, intervals, Path(data_dir) if data_dir else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / INTERVALS_FILE
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    for (lab, video), part in table.groupby(["lab_id", "video_id"], sort=True):  # one file per video too
        part.to_csv(_video_file(out, "intervals", lab, video, "csv"), index=False, lineterminator="\n")
    pngs: list[Path] = []
    if png:
        drawn = decisions(preds, intervals)
        videos = list(dict.fromkeys(zip((str(x) for x in preds.lab_id), (int(v) for v in preds.video_id))))
        for lab, video in tqdm(videos, desc="ethograms", unit="video", disable=len(videos) < 4):
            try:
                pngs.append(ethogram_png(drawn, video, _video_file(out, "ethogram", lab, video, "png"),
                                         predicted="predicted (post-processed intervals, as in intervals.csv)"))
            except NotAvailable as why:
                print(f"ethogram: {why}")
    return csv, pngs


def main_from_args(args) -> Path:
    """``mabe ethogram PREDICTIONS --out DIR [--data DATA] [--thresholds JSON] [-c CONFIG]``."""
    cfg = load_config(args.config, args.overrides)
    thr = postprocess.load_thresholds(args.thresholds) if args.thresholds else {}
    csv, pngs = write_ethograms(args.predictions, args.out, args.data, cfg.postprocess, thr, png=not args.no_png)
    table = pd.read_csv(csv)
    print(f"{len(table)} intervals in {table['video_id'].nunique()} video(s) -> {csv}"
          + (f"; {len(pngs)} ethogram PNG(s) in {args.out}" if pngs else ""))
    return csv


def _video_file(out: Path, kind: str, lab: object, video: object, ext: str) -> Path:
    """``out/<kind>_<lab>_<video>.<ext>``; lab and video come from the predictions file: checked first."""
    name = f"{kind}_{paths.safe_name(lab, 'predictions', 'lab_id')}_{paths.safe_name(int(video), 'predictions', 'video_id')}"
    return paths.within(out, out / f"{name}.{ext}")

"""MABe data directory + FeatureConfig -> the on-disk position cache (layout: docs/design.md, "Cache").

``CACHE/<feature_hash>/`` holds ``config.json`` (the FeatureConfig), ``index.parquet`` (one row per
track, i.e. per ordered pair of present mice) and one folder per video ``videos/<lab>/<video_id>/`` in
the compact layout of ``mabe.poscache`` (issue 13): ``xy.npy`` int16 arena-centred positions of the
present mice and tracked slots, ``intervals.npy`` int32 label intervals, ``labeled.npy`` int16
(agent, target, action) triples and ``meta.json`` (layout, files {name.npy: bytes}, source
fingerprint, pairs, n_rows / row_fps after ``features.target_fps``; written last). The features are
not stored: training and evaluation compute them per batch (``mabe.postracks``), ``load_video``
computes a whole video's with numpy (gbdt, benchmarks).

A video is written to a hidden temporary folder (under a per-video lock, ``videos/<lab>/.<video>.lock``)
and renamed into place. A folder is complete when :func:`check_video` finds nothing wrong: meta.json
parses and is of this layout, every array is there with the size meta.json recorded and its ``.npy``
header promises, and the shapes agree with meta.json. A second run skips complete videos (resume after
a kill) and rebuilds damaged ones (a truncated copy, a full disk) and those of another layout (the old
float32 feature cache); readers raise a MabeError naming the video.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mabe import data, paths, poscache
from mabe import features as F
from mabe.config import FeatureConfig, config_to_dict, feature_hash
from mabe.data import MabeDataWarning
from mabe.errors import MabeDataError, MabeError
from mabe.io import atomic_path, json_ready, write_json

__all__ = [
    "prepare_dataset",
    "ensure_prepared",
    "check_video",
    "prepare_video",
    "cache_dir_for",
    "open_cache",
    "load_video",
    "read_video",
    "video_features",
    "video_dir",
    "INDEX_COLUMNS",
]

INDEX_COLUMNS: tuple[str, ...] = (
    "lab_id", "video_id", "split", "n_frames", "fps", "agent_id", "target_id", "pair_index", "path",
    "video_fps", "has_labels",
)
_TMP_PREFIX = ".tmp-"
CACHE_LAYOUT = poscache.LAYOUT_VERSION  # 1 and 2 were the float32 feature cache: rebuilt
_ARRAYS = ("xy", "intervals", "labeled")
OLD_LAYOUT = "written by cache layout"  # how check_video's reason for a folder of another layout begins
SOURCE_FILE = "source.json"  # which data folder and csvs (sha256 per split) the cache was last prepared from


# ----------------------------------------------------------------------------- paths


def cache_dir_for(cache_root: str | Path, fcfg: FeatureConfig) -> Path:
    """The cache folder of one feature configuration: ``cache_root/<feature_hash(fcfg)>``."""
    return Path(cache_root) / feature_hash(fcfg)


def video_dir(cache_dir: str | Path, lab: str, video_id: Any) -> Path:
    """``cache_dir/videos/<lab>/<video_id>``; lab and video must be plain names (paths.safe_name)."""
    where = Path(cache_dir) / "index.parquet"  # the names come from the metadata, through the index
    lab = paths.safe_name(str(lab), where, "lab_id")
    vid = paths.safe_name(_plain(video_id) if isinstance(video_id, np.generic) else video_id, where, "video_id")
    return Path(cache_dir) / "videos" / lab / vid


def video_lock_path(cache_dir: str | Path, lab: str, video_id: Any) -> Path:
    """The lock file a process holds while it writes one cached video: ``videos/<lab>/.<video>.lock``."""
    folder = video_dir(cache_dir, lab, video_id)
    return folder.parent / f".{folder.name}.lock"


def video_source(task: dict) -> str:
    """A fingerprint of what one cached video is computed from: its metadata row's values (split, fps,
    scale, frame size, behaviors_labeled) and the sizes of its tracking and annotation files. Sizes,
    not contents or mtimes: a stat per video, and a copied or moved data folder keeps them."""
    import hashlib

    keys = ("lab_id", "video_id", "split", "fps", "pix_per_cm", "width", "height", "labeled", "has_annotation")
    parts = {k: task.get(k) for k in keys}
    parts["files"] = [_file_size(task.get("tracking_path")), _file_size(task.get("annotation_path"))
                      if task.get("has_annotation") else None]
    return hashlib.sha256(json.dumps(json_ready(parts), sort_keys=True).encode()).hexdigest()[:16]


def _stale(folder: Path, task: dict) -> str | None:
    """Why a complete cached video no longer matches its task (edited metadata, replaced files), or None.
    Folders from before fingerprints (no ``source`` in meta.json) are taken as they are."""
    try:
        recorded = json.loads((folder / "meta.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None  # check_video reports it
    if recorded is None or recorded == video_source(task):
        return None
    return "its metadata row or files changed since it was prepared"


def _csv_digests(root: Path, splits: Iterable[str]) -> dict[str, str | None]:
    import hashlib

    out: dict[str, str | None] = {}
    for split in splits:
        try:
            out[split] = hashlib.sha256((root / f"{split}.csv").read_bytes()).hexdigest()
        except OSError:
            out[split] = None
    return out


def _read_source(cache_dir: Path) -> dict:
    try:
        src = json.loads((cache_dir / SOURCE_FILE).read_text())
        return src if isinstance(src, dict) else {}
    except (OSError, ValueError):
        return {}


def ensure_prepared(
    data_root: str | Path, fcfg: FeatureConfig, cache_root: str | Path, splits: list[str]
) -> Path:
    """The cache folder of ``fcfg`` for ``data_root``: as it is when it was prepared from these csvs for
    ``splits``, else (missing split, other data folder, edited csv) ``prepare_dataset`` brings it up to
    date first (only videos whose metadata or files differ are recomputed)."""
    cache_dir = cache_dir_for(cache_root, fcfg)
    if (cache_dir / "index.parquet").is_file():
        _, index = open_cache(cache_dir)
        recorded = _read_source(cache_dir).get("csv")
        current = _csv_digests(Path(data_root), splits)
        # no record (an older cache) or no csv here (a cache copied without its data): use it as it is
        same = recorded is None or all(current[s] is None or recorded.get(s) == current[s] for s in splits)
        old = _old_layout(cache_dir, index)
        if old:
            print(f"prepare: {cache_dir} holds {old}; rebuilding it (the features are now computed per batch)")
        elif same and all((index["split"] == s).any() for s in splits):
            return cache_dir
    return prepare_dataset(data_root, fcfg, cache_root=cache_root, splits=splits)


def _old_layout(cache_dir: Path, index: pd.DataFrame) -> str | None:
    """What an indexed cache of another layout holds (one phrase naming a folder), judged by its first
    video; None when it is of this layout (or has no video)."""
    if not len(index):
        return None
    folder = cache_dir / str(index["path"].iloc[0])
    reason = check_video(folder)
    return f"videos {reason} (e.g. {folder})" if reason and reason.startswith(OLD_LAYOUT) else None


def _npy_bytes(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, the size in bytes the file must have) from a ``.npy`` header; ValueError when unreadable."""
    with open(path, "rb") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)  # np.save writes version 1.0 (2.0 only for headers over 64 KiB)
        shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        if dtype.hasobject:
            raise ValueError("object arrays are not a cache format")
        return tuple(shape), f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check_video(folder: str | Path) -> str | None:
    """None when ``folder`` holds a complete cached video of this layout, else what is wrong with it (one phrase).

    Cheap (a stat and a header read per array): the layout, sizes against meta.json's record and against
    what each ``.npy`` header promises, shapes against meta.json. Catches truncated, emptied or missing
    files, a broken meta.json and folders of the old float32 feature cache; not bit flips inside an array.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return "no meta.json (never finished)"
    try:
        meta = json.loads(meta_path.read_text())
        layout = meta.get("layout", 1)
        if layout == CACHE_LAYOUT:
            n_frames, n_mice, n_slots = int(meta["n_frames"]), len(meta["mice"]), len(meta["slots"])
            recorded = dict(meta["files"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:
        return f"meta.json unreadable ({type(err).__name__}: {str(err)[:80]})"
    if layout != CACHE_LAYOUT:
        what = " (the float32 feature cache)" if layout in (1, 2) else ""
        return f"{OLD_LAYOUT} {layout}{what}, not the position cache (layout {CACHE_LAYOUT})"
    for name in _ARRAYS:
        path = folder / f"{name}.npy"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name}.npy is missing"
        if size != recorded.get(f"{name}.npy"):
            return f"{name}.npy is {size:,} bytes, meta.json recorded {recorded.get(f'{name}.npy')}"
        try:
            shape, expected = _npy_bytes(path)
        except (OSError, ValueError, EOFError) as err:
            return f"{name}.npy unreadable ({str(err)[:80]})"
        if size != expected:
            return f"{name}.npy is {size:,} bytes, its header promises {expected:,}"
        want = {"xy": (n_frames, n_mice, n_slots, 2), "intervals": (None, 5), "labeled": (None, 3)}[name]
        if len(shape) != len(want) or any(w is not None and w != d for w, d in zip(want, shape)):
            implied = tuple("*" if w is None else w for w in want)
            return f"{name}.npy has shape {shape}, meta.json implies {implied}"
    return None


def _damaged(folder: Path, reason: str) -> MabeError:
    return MabeError(f"cached video {folder.parent.name}/{folder.name} is damaged: {reason} ({folder}); "
                     f"`mabe prepare` with the same data, --cache and features rebuilds it, or delete {folder}")


def _slots(fcfg: FeatureConfig) -> list[str]:
    return list(fcfg.slots) if fcfg.slots is not None else list(data.DEFAULT_SLOTS)


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj)  # numpy values become Python numbers (io.json_ready)


# ----------------------------------------------------------------------------- one video


def _check_file(path: Any, what: str, task: dict | None = None) -> Path:
    row = f" (listed by the {task['split']}.csv row of video_id {task['video_id']})" if task else ""
    if path is None or (isinstance(path, float) and np.isnan(path)):
        raise MabeDataError("<metadata>", what, f"a {what} path{row}", "none")
    p = Path(path)
    if not p.is_file():
        raise MabeDataError(p, None, f"an existing {what} file{row}", "no such file")
    return p


def _labels_for(task: dict, pairs: list[tuple[int, int]], n_frames: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Label intervals (n, 5) int32 (agent, target, action, start, stop; clipped to the video, only present
    pairs), the labelled triples (k, 3) of present pairs and has_labels; warns about what is dropped."""
    none = np.zeros((0, 5), np.int32)
    where = f"{task['lab_id']}/{task['video_id']}"
    has_labels = task["split"] != "test" and bool(task.get("has_annotation"))
    if task["split"] != "test" and not has_labels:
        if task["labeled"]:
            warnings.warn(
                f"{where}: behaviors_labeled lists {len(task['labeled'])} triples but there is no "
                "annotation file; its labelled mask is left empty (nothing is known)",
                stacklevel=2,
            )
        return none, np.zeros((0, 3), np.int16), False

    present = set(pairs)
    missing: dict[tuple[int, int], int] = {}
    triples = set()
    for agent, target, action in task["labeled"]:
        key = (int(agent), int(target))
        if key not in present:
            missing[key] = missing.get(key, 0) + 1
            continue
        if action not in data.ACTION_INDEX:
            raise MabeDataError("<metadata>", "behaviors_labeled", f"one of the {len(data.ACTIONS)} actions", action)
        triples.add((*key, data.ACTION_INDEX[action]))
    if missing:
        warnings.warn(
            f"{where}: behaviors_labeled names mice absent from the tracking: "
            + ", ".join(f"({a},{t}) x{n}" for (a, t), n in sorted(missing.items())),
            stacklevel=2,
        )
    labeled = np.array(sorted(triples), dtype=np.int16).reshape(-1, 3)
    if not has_labels:
        return none, labeled, False

    path = _check_file(task["annotation_path"], "annotation", task)
    ann = data.read_annotation(path)
    iv = poscache.intervals_from_annotation(ann, sorted({a for a, _ in pairs}), where)
    if len(iv):
        past = int(np.count_nonzero(iv[:, 4] > n_frames))
        if past:
            warnings.warn(f"{path}: {past} interval(s) run past the video's {n_frames} frames, clipped",
                          MabeDataWarning, stacklevel=2)
        iv[:, 3:] = iv[:, 3:].clip(0, n_frames)
        iv = iv[iv[:, 3] < iv[:, 4]]
        # a labelled frame outside behaviors_labeled is a metadata quirk, not a label to drop: keep it
    return np.ascontiguousarray(iv, dtype=np.int32), labeled, True


FAR_OUTSIDE_FRAMES = 2.0  # a point more than this many frame sizes outside the video is corrupt
FAR_OUTSIDE_MAX_SHARE = 0.5  # ... and when at least this share of a video's points is, the video is


def _drop_far_points(xy: np.ndarray, task: dict) -> None:
    """Points far outside the video frame -> NaN (missing), in place, with a warning that counts them.

    "Far": more than FAR_OUTSIDE_FRAMES frame widths (heights) left/right of (above/below) the
    ``video_width_pix`` x ``video_height_pix`` frame. Real tracking strays a little outside the frame
    (keypoints of a mouse at the wall, extrapolated by the tracker); this catches only corrupt values
    (1e6 px, a unit mix-up), which would otherwise dominate the normalisation statistics. When at
    least FAR_OUTSIDE_MAX_SHARE of the video's points are that far out, the frame size or the tracking
    is wrong for the whole video: MabeDataError naming both.
    """
    W, H = float(task.get("width", np.nan)), float(task.get("height", np.nan))
    if not (np.isfinite(W) and np.isfinite(H) and W > 0 and H > 0):
        return
    x, y = xy[..., 0], xy[..., 1]
    k = FAR_OUTSIDE_FRAMES
    if xy.size:  # the common case in two flat reductions (NaN skipped): x and y within the tighter bounds
        flat = xy.reshape(-1)
        if np.fmin.reduce(flat) >= -k * min(W, H) and np.fmax.reduce(flat) <= (1 + k) * min(W, H):
            return
    with np.errstate(invalid="ignore"):
        far = (x < -k * W) | (x > (1 + k) * W) | (y < -k * H) | (y > (1 + k) * H)  # NaN compares False
    n_far = int(np.count_nonzero(far))
    if not n_far:
        return
    n_pts = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    path = task.get("tracking_path")
    if n_far >= FAR_OUTSIDE_MAX_SHARE * n_pts:
        raise MabeDataError(path, "x, y", f"points within about the {W:g} x {H:g} px video frame "
                            "(video_width_pix x video_height_pix of its metadata row)",
                            f"{n_far} of {n_pts} points more than {k:g} frame sizes outside it "
                            f"(x {np.nanmin(x):.4g}..{np.nanmax(x):.4g}, y {np.nanmin(y):.4g}..{np.nanmax(y):.4g})")
    xy[far] = np.nan
    warnings.warn(f"{path}: {n_far} point(s) far outside the {W:g} x {H:g} px video frame (more than {k:g} "
                  f"frame sizes away) set to missing (NaN), of {n_pts}", MabeDataWarning, stacklevel=3)


def _compute_video(task: dict, fcfg: FeatureConfig) -> tuple[dict[str, Any], dict]:
    """Read one video and encode what the cache stores (``poscache.write_video``'s arguments, extra meta);
    pure apart from reading its files."""
    slots = _slots(fcfg)
    trk = data.read_tracking(_check_file(task["tracking_path"], "tracking", task), slots, data.MAX_MICE)
    xy = np.asarray(trk.xy)
    T = xy.shape[0]
    fps = float(task["fps"])
    ppc = float(task["pix_per_cm"])
    if not np.isfinite(fps) or fps <= 0:
        raise MabeDataError("<metadata>", "frames_per_second", "a positive number", task["fps"])
    if not np.isfinite(ppc) or ppc <= 0:
        raise MabeDataError("<metadata>", "pix_per_cm_approx", "a positive number", task["pix_per_cm"])
    _drop_far_points(xy, task)
    if not np.isfinite(xy).any():
        warnings.warn(f"{task['tracking_path']}: no tracked point (every x/y is missing); its features are all "
                      "NaN, i.e. 0 after normalisation", data.MabeDataWarning, stacklevel=2)
    centre = (0.0, 0.0)  # the stored positions are what the features start from: centred only when asked
    if fcfg.arena_centre:
        centre = (float(task["width"]) / 2.0, float(task["height"]) / 2.0)
        if not np.all(np.isfinite(centre)):
            raise MabeDataError("<metadata>", "video_width_pix/video_height_pix", "numbers", centre)

    mice = np.asarray(trk.mice, dtype=bool)
    ids = [m + 1 for m in np.flatnonzero(mice).tolist()]  # mouse ids as in the annotation files
    pairs = [(a, t) for a in ids for t in ids]
    intervals, labeled, has_labels = _labels_for(task, pairs, T)
    resampled = fcfg.target_fps is not None and abs(float(fcfg.target_fps) - fps) > 1e-9
    n_rows = len(F.nearest_frames(T, fps, float(fcfg.target_fps))) if resampled else T
    args = {"xy_px": xy, "mice": mice, "slots": slots, "fps": fps, "pix_per_cm": ppc, "centre_px": centre,
            "lab": str(task["lab_id"]), "video": task["video_id"], "split": task["split"], "intervals": intervals,
            "labeled": labeled, "has_labels": has_labels}
    extra = {"pairs": [[a, t] for a, t in pairs], "n_rows": int(n_rows),
             "row_fps": float(fcfg.target_fps) if resampled else fps, "resampled": bool(resampled),
             "source": video_source(task)}
    return args, extra


def prepare_video(task: dict, fcfg: FeatureConfig, out: str | Path) -> dict:
    """Compute and write one video's cache folder; returns a result dict (``status`` ok or bad).

    ``task`` keys: lab_id, video_id, split, fps, pix_per_cm, width, height, labeled,
    tracking_path, annotation_path, has_annotation. Bad input data (MabeDataError, an unreadable
    file) is reported in the result instead of raised; warnings are collected in ``warnings``.
    """
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "lab_id": task["lab_id"], "video_id": task["video_id"], "split": task["split"],
        "file": str(task.get("tracking_path")), "warnings": [], "status": "ok",
    }
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        held = paths.lock(out.parent / f".{out.name}.lock", f"cached video {task['lab_id']}/{task['video_id']}")
    except MabeError as err:  # another process writes this video (paths.LockedError) or no lock possible
        result.update(status="busy", reason=str(err), seconds=time.perf_counter() - t0)
        return result
    with held, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if check_video(out) is None and _stale(out, task) is None:  # finished by another process meanwhile
                meta = json.loads((out / "meta.json").read_text())
            else:
                args, extra = _compute_video(task, fcfg)
                try:
                    meta = poscache.write_video(out, **args, extra=extra)
                except OSError as err:  # full disk, read-only cache: not the input's fault, never skipped
                    raise _WriteError(f"cannot write cached video {task['lab_id']}/{task['video_id']} to "
                                      f"{out}: {err.strerror or err} (errno {err.errno}); free space or fix "
                                      "the cache folder and run `mabe prepare` again (complete videos are "
                                      "kept)") from None
            result.update(n_frames=meta["n_rows"], n_video_frames=meta["n_frames"])
        except _WriteError as err:
            result.update(status="write_failed", reason=str(err))
        except MabeDataError as err:
            result.update(status="bad", file=err.file, field=err.field, expected=err.expected,
                          got=None if err.got is None else str(err.got), reason=str(err))
        except (OSError, _arrow_error()) as err:
            result.update(status="bad", field=None, expected="a readable file",
                          got=f"{type(err).__name__}: {err}", reason=f"{result['file']}: {type(err).__name__}: {err}")
    result["warnings"] = [(str(w.message), w.category) for w in caught]
    result["seconds"] = time.perf_counter() - t0
    return result


class _WriteError(Exception):
    """Writing the cache failed (OSError from the file system, not from reading the input)."""


def _arrow_error() -> type[BaseException]:
    try:
        import pyarrow as pa

        return pa.lib.ArrowException
    except Exception:  # pragma: no cover - pyarrow is a dependency
        return MabeDataError


def _worker(args: tuple[dict, dict, str]) -> dict:
    task, fdict, out = args
    return prepare_video(task, FeatureConfig(**fdict), out)


# ----------------------------------------------------------------------------- the dataset


def _splits_present(root: Path, splits: Iterable[str] | None) -> list[str]:
    if splits:
        return list(dict.fromkeys(splits))
    found = [s for s in ("train", "test") if (root / f"{s}.csv").is_file()]
    if not found:
        raise MabeDataError(root, None, "train.csv and/or test.csv", "neither")
    if "train" not in found:
        warnings.warn(f"{root / 'train.csv'}: no such file; preparing {', '.join(found)} only (mabe train and "
                      "evaluate need train.csv)", MabeDataWarning, stacklevel=3)
    return found


def _tasks(root: Path, splits: list[str], bad_rows: list[dict] | None = None) -> list[dict]:
    """One task per metadata row of ``splits``; ``bad_rows`` collects rows with a bad value instead of
    raising (see data.load_metadata). Raises when no split has a single row (an empty dataset)."""
    tasks = []
    for split in splits:
        meta = data.load_metadata(root, split, check_files=False, bad_rows=bad_rows)
        for bad in bad_rows or []:
            bad.setdefault("split", split)
        skipped = {f"{b['lab_id']}/{b['video_id']}.parquet" for b in bad_rows or [] if b["split"] == split}
        if not len(meta) and not skipped and len(splits) > 1:  # one split asked for: the error below says it
            warnings.warn(f"{root / f'{split}.csv'}: no video rows (only a header); nothing of {split} is prepared"
                          + (" and mabe train will refuse this folder" if split == "train" else ""),
                          data.MabeDataWarning, stacklevel=3)
        _warn_orphans(root, split, meta, skipped)
        for row in meta.to_dict("records"):
            labeled = [(int(a), int(t), str(act)) for a, t, act in (row.get("labeled") or [])]
            tasks.append({
                "lab_id": str(row["lab_id"]), "video_id": _plain(row["video_id"]), "split": split,
                "fps": float(row["frames_per_second"]), "pix_per_cm": float(row["pix_per_cm_approx"]),
                "width": float(row["video_width_pix"]), "height": float(row["video_height_pix"]),
                "labeled": labeled, "tracking_path": _path_or_none(row.get("tracking_path")),
                "annotation_path": _path_or_none(row.get("annotation_path")),
                "has_annotation": bool(row.get("has_annotation", False)) and split != "test",
            })
    split_of: dict[Any, str] = {}
    for task in tasks:  # one cache folder and one index key per video: ids must not repeat across splits
        first = split_of.setdefault(task["video_id"], task["split"])
        if first != task["split"]:
            raise MabeDataError(f"{root / f'{first}.csv'} and {root / (task['split'] + '.csv')}", "video_id",
                                "video ids unique across the splits", f"{task['video_id']} in both")
    if not tasks and not bad_rows:
        csvs = ", ".join(str(root / f"{s}.csv") for s in splits)
        raise MabeDataError(csvs, None, "at least one video row", "no video rows (an empty dataset)")
    return tasks


def _warn_orphans(root: Path, split: str, meta: pd.DataFrame, skipped: set[str] = frozenset()) -> None:
    """Warn about parquet files of ``split`` that no metadata row lists (they are ignored); ``skipped``:
    '<lab>/<video>.parquet' of rows dropped as bad, which do list theirs."""
    listed = (set(data._relative_paths(meta)) if len(meta) else set()) | set(skipped)
    subs = [f"{split}_tracking"] + (["train_annotation"] if split == "train" else [])
    for sub in subs:
        folder = root / sub
        if not folder.is_dir():
            continue
        orphans = sorted(data._files_under(folder) - listed)
        if orphans:
            warnings.warn(f"{folder}: {len(orphans)} parquet file(s) with no row in {split}.csv, ignored: "
                          f"{data._some(orphans)}", data.MabeDataWarning, stacklevel=3)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _path_or_none(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return str(v)


def _file_size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _build_index(cache_dir: Path, listed: dict[str, set[tuple[str, str]]] | None = None) -> pd.DataFrame:
    """One row per track of every complete video folder in the cache; for the splits in ``listed``
    only the (lab, video) listed there (the rows of the csv just prepared: not a removed row, nor a
    video of another data folder prepared into the same cache)."""
    rows = []
    for meta_path in sorted((cache_dir / "videos").glob("*/*/meta.json")):
        if meta_path.parent.name.startswith(_TMP_PREFIX):
            continue
        reason = check_video(meta_path.parent)
        if reason is not None:  # left damaged by a failed rebuild (--skip-bad): not indexed
            warnings.warn(f"{_damaged(meta_path.parent, reason)}; left out of the index", stacklevel=2)
            continue
        meta = json.loads(meta_path.read_text())
        key = (str(meta["lab"]), str(meta["video"]))
        if listed is not None and meta["split"] in listed and key not in listed[meta["split"]]:
            continue
        rel = meta_path.parent.relative_to(cache_dir).as_posix()
        for i, (agent, target) in enumerate(meta["pairs"]):
            rows.append((meta["lab"], meta["video"], meta["split"], meta["n_rows"], meta["row_fps"],
                         agent, target, i, rel, meta["fps"], meta["has_labels"]))
    df = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    df = df.astype({
        "lab_id": str, "split": str, "n_frames": np.int64, "fps": np.float64, "agent_id": np.int8,
        "target_id": np.int8, "pair_index": np.int32, "path": str, "video_fps": np.float64, "has_labels": bool,
    })
    if len(df) and all(isinstance(v, (int, np.integer)) for v in df["video_id"]):
        df["video_id"] = df["video_id"].astype(np.int64)
    return df.sort_values(["lab_id", "video_id", "pair_index"], kind="stable").reset_index(drop=True)


def prepare_dataset(
    data_root: str | Path,
    fcfg: FeatureConfig,
    cache_root: str | Path = "cache",
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> Path:
    """Compute every video's features into ``cache_root/<feature_hash(fcfg)>/``; returns that folder.

    Complete videos already there are skipped. ``workers`` processes (default: all cores; 1 = in
    this process). Without ``skip_bad`` the first bad video stops the run with its MabeDataError;
    with it, bad videos are skipped, listed at the end and written to ``skipped.json``.
    """
    root = Path(data_root)
    split_list = _splits_present(root, splits)
    cache_dir = cache_dir_for(cache_root, fcfg)
    paths.make_dir(cache_dir / "videos", "the cache folder (--cache or the config's cache)")
    _write_json(cache_dir / "config.json", config_to_dict(fcfg))

    bad_rows: list[dict] | None = [] if skip_bad else None
    tasks = _tasks(root, split_list, bad_rows)
    todo, done, damaged, stale, old = [], 0, [], [], []
    source = _read_source(cache_dir)
    here = str(root.resolve())
    if source.get("data") not in (None, here):
        print(f"prepare: {cache_dir} was last prepared from {source['data']}; now from {here}: videos whose "
              f"metadata or files differ are recomputed and the index lists only {root}'s videos")
    for task in tasks:
        out = paths.within(cache_dir, video_dir(cache_dir, task["lab_id"], task["video_id"]))  # no symlinked exit
        reason = check_video(out)
        why_stale = _stale(out, task) if reason is None else None
        if reason is None and why_stale is None:
            done += 1
        else:
            todo.append((task, out))
            if why_stale:
                stale.append(f"{task['lab_id']}/{task['video_id']}")
            elif reason.startswith(OLD_LAYOUT):
                old.append(reason)
            elif out.exists():
                damaged.append(f"{task['lab_id']}/{task['video_id']}: {reason}")
    todo.sort(key=lambda item: -_file_size(item[0]["tracking_path"]))  # big videos first: balanced pool
    print(f"prepare: {len(tasks)} videos ({', '.join(split_list)}) -> {cache_dir}; "
          f"{done} already prepared, {len(todo)} to do")
    if stale:
        print(f"prepare: recomputing {len(stale)} video(s) whose metadata row or files changed: "
              + ", ".join(stale[:10]) + (f" (+{len(stale) - 10} more)" if len(stale) > 10 else ""))
    if old:
        print(f"prepare: rebuilding {len(old)} cached video(s) in {cache_dir / 'videos'} {old[0]}")
    if damaged:
        print(f"prepare: rebuilding {len(damaged)} damaged cached video(s): " + "; ".join(damaged[:10])
              + (f" (+{len(damaged) - 10} more)" if len(damaged) > 10 else ""))

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    fdict = asdict(fcfg)
    skipped: list[dict] = [  # rows whose metadata was already bad (--skip-bad)
        {"lab_id": b["lab_id"], "video_id": b["video_id"], "split": b.get("split"), "file": b["error"].file,
         "reason": str(b["error"])} for b in bad_rows or []]
    for s in skipped:
        print(f"prepare: skipped {s['lab_id']}/{s['video_id']}: {s['reason']}")
    frames = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="video", desc="prepare", disable=not progress or not todo,
               file=sys.stderr, dynamic_ncols=True)

    def handle(res: dict) -> None:
        nonlocal frames
        where = f"{res['lab_id']}/{res['video_id']}"
        quiet = contextlib.nullcontext() if not res["warnings"] else tqdm.external_write_mode(file=sys.stderr)
        with quiet:  # a warning on its own line, not glued to the bar
            for msg, category in res["warnings"]:
                warnings.warn(msg if where in msg or str(res.get("file")) in msg else f"{where}: {msg}", category,
                              stacklevel=3)
        bar.update(1)
        if res["status"] == "ok":
            frames += res["n_video_frames"]
            return
        if res["status"] in ("busy", "write_failed"):  # not a bad video: never skipped
            raise MabeError(res["reason"])
        if not skip_bad:
            raise MabeDataError(res["file"], res.get("field"), res["expected"], res.get("got"))
        skipped.append({k: res.get(k) for k in ("lab_id", "video_id", "split", "file", "reason")})
        bar.write(f"prepare: skipped {where}: {res['reason']}")

    try:
        if n_workers == 1:
            for task, out in todo:
                handle(prepare_video(task, fcfg, out))
        else:
            # forkserver (else spawn): never fork a parent whose pyarrow / BLAS threads may hold locks
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                pending = {pool.submit(_worker, (task, fdict, str(out))) for task, out in todo}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            handle(fut.result())
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        bar.close()

    elapsed = time.perf_counter() - t0
    # the index lists the videos of this data folder's csvs: of the splits just prepared, their rows;
    # of the others, what is there only while their csv is still the one it was prepared from
    prev = source.get("csv", {}) if source.get("data") == here else {}
    now = _csv_digests(root, ("train", "test"))
    keep_other = {s for s in ("train", "test") if s not in split_list and (not source or prev.get(s) == now[s])}
    rows_now = {(t["split"], str(t["lab_id"]), str(t["video_id"])) for t in tasks}
    listed = {s: {(lab, vid) for sp, lab, vid in rows_now if sp == s}
              for s in ("train", "test") if s not in keep_other}
    index = _build_index(cache_dir, listed)
    with atomic_path(cache_dir / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)
    _write_json(cache_dir / "skipped.json", skipped)
    _write_json(cache_dir / SOURCE_FILE, {"data": here, "csv": {
        s: now[s] for s in ("train", "test") if s in split_list or (s in keep_other and s in prev)}})
    if todo:
        rate = frames / elapsed if elapsed > 0 else float("inf")
        print(f"prepare: {len(todo) - len(skipped) + len(bad_rows or [])} videos, {frames:,} frames in {elapsed:.1f} s "
              f"({rate:,.0f} frames/s, {n_workers} worker{'s' if n_workers > 1 else ''})")
    if skipped:
        print(f"prepare: skipped {len(skipped)} bad video(s) (listed in {cache_dir / 'skipped.json'}):")
        for s in skipped:
            print(f"  {s['lab_id']}/{s['video_id']}: {s['reason']}")
    print(f"prepare: index {cache_dir / 'index.parquet'}: {index['video_id'].nunique() if len(index) else 0} "
          f"videos, {len(index)} tracks")
    return cache_dir


# ----------------------------------------------------------------------------- reading


def open_cache(cache_dir: str | Path) -> tuple[FeatureConfig, pd.DataFrame]:
    """A prepared cache folder -> (its FeatureConfig, its index DataFrame: one row per track)."""
    cache_dir = Path(cache_dir)
    cfg_path, index_path = cache_dir / "config.json", cache_dir / "index.parquet"
    if not cfg_path.is_file() or not index_path.is_file():
        raise MabeError(f"{cache_dir}: not a prepared feature cache (no config.json / index.parquet); "
                        "run `mabe prepare` first")
    try:
        fcfg = FeatureConfig(**json.loads(cfg_path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise MabeError(f"{cfg_path}: damaged cache configuration ({type(err).__name__}: {str(err)[:80]}); "
                        f"delete {cache_dir} and run `mabe prepare` again") from None
    try:
        index = pd.read_parquet(index_path)
    except (OSError, ValueError, _arrow_error()) as err:
        raise MabeError(f"{index_path}: damaged cache index ({type(err).__name__}: {str(err)[:80]}); "
                        "`mabe prepare` with the same data, --cache and features rebuilds it") from None
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise MabeError(f"{index_path}: damaged cache index (no column(s) {missing}); `mabe prepare` rebuilds it")
    return fcfg, index


def read_video(cache_dir: str | Path, lab: str, video_id: Any) -> poscache.PosVideo:
    """One cached video (memory-mapped positions, label intervals, meta); a MabeError naming it when it is
    missing or damaged, StaleCacheError when it is of another layout."""
    folder = video_dir(cache_dir, lab, video_id)
    if not folder.is_dir():
        raise MabeError(f"{folder}: no cached video there (listed in {Path(cache_dir) / 'index.parquet'}); "
                        "run `mabe prepare` with the same data, --cache and features")
    reason = check_video(folder)
    if reason is not None and reason.startswith(OLD_LAYOUT):
        raise poscache.StaleCacheError(f"{folder}: {reason}; `mabe prepare` with the same data, --cache and "
                                       "features rebuilds it")
    if reason is not None:
        raise _damaged(folder, reason)
    return poscache.read_video(folder)


def video_features(v: poscache.PosVideo, fcfg: FeatureConfig) -> dict[str, Any]:
    """A cached video -> its whole-video features with numpy (the reference the per-batch torch features
    equal): scene (rows, n_mice*S*4), pair (n_pairs, rows, P) when ``fcfg.pair_features``, labels uint8
    (n_pairs, rows, 37), labeled bool (n_pairs, 37), frames (rows,) video frame of each row, and meta
    (n_frames = rows, n_video_frames, fps of the rows, video_fps, pairs, resampled, ...)."""
    slots = _slots(fcfg)
    meta = v.meta
    fps, T = float(meta["fps"]), v.n_frames
    cm = F.clean_positions(v.positions(slots, data.MAX_MICE), 1.0, None, fcfg.max_gap)
    pairs = v.pairs
    out: dict[str, Any] = {"scene": F.scene_from_cm(F.pad_mice(cm, fcfg.n_mice), fps, fcfg.smooth_window)}
    if fcfg.pair_features:
        out["pair"] = F.all_pair_features(cm, fps, [(a - 1, t - 1) for a, t in pairs], slots, fcfg.smooth_window)
    del cm
    frames = np.arange(T, dtype=np.int64)
    if meta["resampled"]:
        out_fps = float(meta["row_fps"])
        frames = F.nearest_frames(T, fps, out_fps)
        out["scene"] = F.resample(out["scene"], fps, out_fps).astype(np.float32, copy=False)
        if "pair" in out:
            moved = F.resample(np.moveaxis(out["pair"], 1, 0), fps, out_fps)
            out["pair"] = np.ascontiguousarray(np.moveaxis(moved, 0, 1), dtype=np.float32)
    out["labels"] = v.frame_labels(pairs, data.ACTIONS, frames if meta["resampled"] else None)
    out["labeled"] = v.labeled_mask(pairs)
    out["frames"] = frames
    out["meta"] = {**meta, "fps": float(meta["row_fps"]), "video_fps": fps, "n_frames": int(meta["n_rows"]),
                   "n_video_frames": T}
    return out


def load_video(cache_dir: str | Path, lab: str, video_id: Any, fcfg: FeatureConfig | None = None) -> dict[str, Any]:
    """One cached video -> ``video_features`` of it, for the cache's FeatureConfig unless ``fcfg`` is given."""
    if fcfg is None:
        path = Path(cache_dir) / "config.json"
        try:
            fcfg = FeatureConfig(**json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
            raise MabeError(f"{path}: damaged cache configuration ({type(err).__name__}: {str(err)[:80]}); "
                            f"delete {cache_dir} and run `mabe prepare` again") from None
    return video_features(read_video(cache_dir, lab, video_id), fcfg)


def ensure_cache(cfg: Any, data_root: Path, splits: list[str]) -> Path:
    """The cache folder of ``cfg.features`` for ``data_root``, preparing ``splits`` where missing."""
    return ensure_prepared(data_root, cfg.features, cfg.cache, splits)
